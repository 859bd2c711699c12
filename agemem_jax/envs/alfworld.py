"""ALFWorld: household tasks in text, played through TextWorld over the ALFRED PDDL domain.

Games come from one of two sources, played the same way (TextWorld's gym API, ALFWorld's
demangler turning PDDL ids into names such as "apple 1", the game's admissible commands):

- ``"official"``: the ALFWorld release's game files, found where a user's machine keeps them
  (``$ALFWORLD_DATA/json_2.1.1/<split>/<task>/<trial>/game.tw-pddl``, the layout
  ``alfworld-download`` writes; ``json_2.1.2/`` is accepted too). The default split is ``valid_unseen`` (134 games), the one
  AgentBoard evaluates on.
- ``"generated"``: games of our own, sampled offline by the generator below for all six task
  types over the domain (``alfred.pddl``) and grammar (``alfred.twl2``) that the ``alfworld``
  package ships. Rooms come from our templates in ``alfworld_data/scenes.json``; which
  receptacle may hold which object and which objects can be cleaned, heated or cooled is read
  from the installed package (ALFRED's own tables), and task sentences use the package's goal
  templates, so a generated game reads like an official one.

Every game carries its expert walkthrough, made once: a generated game's is written from the
sampled scene when the game is made; an official file stores the one ALFWorld's planner found
(TextWorld's planner is asked once if a file has none). The oracle replays it. Asking TextWorld
for ``policy_commands`` would replan at every step (seconds to tens of seconds each), so
nothing here does.

The metric is success rate (the goal holds), as the spec scores ALFWorld; `progress` is the same
0/1 value.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, overload

import numpy as np

from agemem_jax.envs.base import DEFAULT_MAX_STEPS, InvalidAction, TextEnv

if TYPE_CHECKING:  # optional dependencies, imported lazily at run time
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
# Official split folders, and ALFWorld's own names for the two evaluation splits.
SPLITS = {
    "train": "train",
    "valid_seen": "valid_seen",
    "valid_unseen": "valid_unseen",
    "eval_in_distribution": "valid_seen",
    "eval_out_of_distribution": "valid_unseen",
}
RELEASE_FOLDERS = ("json_2.1.1", "json_2.1.2")
GENERATOR_VERSION = 1  # part of every generated file's name: bump when sampling changes
SCENES_PATH = Path(__file__).resolve().parent / "alfworld_data" / "scenes.json"
LAMP = "DeskLamp"
START = "loc_bar_0"  # the agent starts in the middle of the room, at no receptacle

_INSTALL_HINT = (
    "ALFWorld needs the envs extra: pip install 'agemem_jax[envs]' (alfworld, textworld)"
)


class AlfWorldError(RuntimeError):
    """A game could not be found, generated or loaded."""


# --------------------------------------------------------------------------------------------
# What the installed packages provide


@functools.cache
def alfred() -> SimpleNamespace:
    """The ALFRED domain, grammar and object tables shipped by the ``alfworld`` package."""
    try:
        import alfworld.gen.constants as C
        import alfworld.gen.goal_library as G
        from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH
    except ImportError as e:
        raise AlfWorldError(_INSTALL_HINT) from e
    actions = C.VAL_ACTION_OBJECTS
    return SimpleNamespace(
        domain=Path(ALFRED_PDDL_PATH).read_text(),
        grammar=Path(ALFRED_TWL2_PATH).read_text(),
        contain={r: frozenset(objs) for r, objs in C.VAL_RECEPTACLE_OBJECTS.items()},
        cleanable=frozenset(actions["Cleanable"]),
        heatable=frozenset(actions["Heatable"]),
        coolable=frozenset(actions["Coolable"]),
        sliceable=frozenset(actions["Sliceable"]),
        openable=frozenset(C.OPENABLE_CLASS_LIST),
        templates={t: tuple(G.gdict[t]["templates"]) for t in TASK_TYPES},
    )


@functools.cache
def scenes() -> dict[str, Any]:
    return json.loads(SCENES_PATH.read_text())


# --------------------------------------------------------------------------------------------
# The generator: a room, objects in receptacles, one task


@dataclasses.dataclass(frozen=True)
class GameSpec:
    """One sampled game: enough to write its PDDL problem and task sentence."""

    task_type: str
    room: str
    receptacles: tuple[tuple[str, str], ...]  # (PDDL id, ALFRED type)
    objects: tuple[tuple[str, str, str], ...]  # (PDDL id, type, id of the receptacle it is in)
    target: str  # object type the task is about
    parent: str | None  # receptacle type it must end in (None for look_at_obj_in_light)
    toggle: str | None  # the lamp (look_at_obj_in_light only)
    description: str  # "put a clean apple in fridge"


def _pddl_id(kind: str, k: int) -> str:
    # ALFRED ids read "Type|x|y|z"; the demangler keeps what precedes the first "|" as the name
    # and appends "basin" for basins, whose ALFRED ids start with the sink's or bathtub's type.
    if kind.endswith("Basin"):
        return f"{kind[: -len('Basin')]}_bar_{k:02d}_bar_{kind}"
    return f"{kind}_bar_{k:02d}"


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _capable(task_type: str, kind: str) -> bool:
    a = alfred()
    return {
        "pick_clean_then_place_in_recep": kind in a.cleanable,
        "pick_heat_then_place_in_recep": kind in a.heatable,
        "pick_cool_then_place_in_recep": kind in a.coolable,
    }.get(task_type, True)


def sample_spec(task_type: str, rng: np.random.Generator, max_tries: int = 100) -> GameSpec:
    """Sample a room and a solvable, not yet solved task of `task_type`."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown ALFWorld task type {task_type!r}; expected one of {TASK_TYPES}")
    for _ in range(max_tries):
        spec = _sample_once(task_type, rng)
        if spec is not None:
            return spec
    raise AlfWorldError(f"no {task_type} task in {max_tries} sampled rooms")


def _sample_once(task_type: str, rng: np.random.Generator) -> GameSpec | None:
    """One room and task, or None when the room happens to offer no such task."""
    a, sc = alfred(), scenes()
    room = _pick(rng, sc["task_rooms"][task_type])
    tpl = sc["rooms"][room]
    kinds = [
        k for k, (lo, hi) in tpl["receptacles"].items() for _ in range(rng.integers(lo, hi + 1))
    ]
    count: dict[str, int] = {}
    receptacles = []
    for kind in kinds:
        count[kind] = count.get(kind, 0) + 1
        receptacles.append((_pddl_id(kind, count[kind]), kind))
    present = {kind for _, kind in receptacles}
    hosts = {
        o: [rid for rid, r in receptacles if o in a.contain.get(r, ())] for o in tpl["objects"]
    }

    # The task: an object type the task can act on, and (unless looking at it) a receptacle type
    # in the room that may hold it, with somewhere else for it to start.
    excluded = set(sc.get("task_excluded_targets", {}).get(task_type, ()))
    looking = task_type == "look_at_obj_in_light"
    lamp_hosts = [rid for rid, r in receptacles if r in tpl["lamp_hosts"]]
    options = []
    for obj in tpl["objects"]:
        if not hosts[obj] or not _capable(task_type, obj):
            continue
        if looking:
            options += [(obj, None)] if lamp_hosts else []
            continue
        for parent in sorted(present - excluded):
            if obj in a.contain.get(parent, ()):
                elsewhere = [rid for rid, r in receptacles if rid in hosts[obj] and r != parent]
                options += [(obj, parent)] if elsewhere else []
    if not options:
        return None
    target, parent = _pick(rng, options)

    objects: list[tuple[str, str, str]] = []
    if lamp_hosts:  # rooms that have a lamp have it whatever the task
        objects.append((_pddl_id(LAMP, 1), LAMP, _pick(rng, lamp_hosts)))
    max_n = sc["max_instances"]
    for obj in tpl["objects"]:
        if obj == target:
            n = int(rng.integers(2 if task_type == "pick_two_obj_and_place" else 1, max_n + 1))
            # The goal must not hold at the start: targets start outside the parent's type.
            where = [rid for rid in hosts[obj] if dict(receptacles)[rid] != parent]
        elif rng.random() < sc["object_presence"]:
            n, where = int(rng.integers(1, max_n + 1)), hosts[obj]
        else:
            continue
        objects += [(_pddl_id(obj, k + 1), obj, _pick(rng, where)) for k in range(n) if where]
    toggle = LAMP if looking else None
    template = _pick(rng, a.templates[task_type])
    description = template.format(
        obj=target.lower(), recep=(parent or "").lower(), toggle=(toggle or "").lower()
    )
    return GameSpec(
        task_type=task_type,
        room=room,
        receptacles=tuple(receptacles),
        objects=tuple(objects),
        target=target,
        parent=parent,
        toggle=toggle,
        description=description,
    )


def _goal(spec: GameSpec) -> str:
    """The task's goal over the domain's predicates (the same conditions ALFWorld checks)."""
    obj, parent = f"{spec.target}Type", f"{spec.parent}Type"
    if spec.task_type == "look_at_obj_in_light":
        return (
            "(and\n"
            "  (exists (?ot - object ?r - receptacle ?a - agent ?l - location)\n"
            f"    (and (objectType ?ot {spec.toggle}Type) (toggleable ?ot) (isToggled ?ot)\n"
            "         (receptacleAtLocation ?r ?l) (atLocation ?a ?l) (inReceptacle ?ot ?r)))\n"
            f"  (exists (?o - object ?a - agent) (and (objectType ?o {obj}) (holds ?a ?o))))"
        )
    if spec.task_type == "pick_two_obj_and_place":
        return (
            "(exists (?r - receptacle ?o1 - object ?o2 - object)\n"
            f"  (and (receptacleType ?r {parent}) (not (= ?o1 ?o2))\n"
            f"       (objectType ?o1 {obj}) (inReceptacle ?o1 ?r)\n"
            f"       (objectType ?o2 {obj}) (inReceptacle ?o2 ?r)))"
        )
    state = {
        "pick_clean_then_place_in_recep": "(cleanable ?o) (isClean ?o) ",
        "pick_heat_then_place_in_recep": "(heatable ?o) (isHot ?o) ",
        "pick_cool_then_place_in_recep": "(coolable ?o) (isCool ?o) ",
    }.get(spec.task_type, "")
    return (
        "(exists (?r - receptacle ?o - object)\n"
        f"  (and (objectType ?o {obj}) (receptacleType ?r {parent}) {state}(inReceptacle ?o ?r)))"
    )


def problem_pddl(spec: GameSpec, name: str = "agemem") -> str:
    """The PDDL problem of a sampled game, in the layout of ALFWorld's ``initial_state.pddl``."""
    a = alfred()
    loc = {rid: f"loc_bar_{i + 1}" for i, (rid, _) in enumerate(spec.receptacles)}
    otypes = sorted({kind for _, kind, _ in spec.objects})
    rtypes = sorted({kind for _, kind in spec.receptacles})
    decl = ["agent1 - agent"]
    decl += [f"{oid} - object" for oid, _, _ in spec.objects]
    decl += [f"{rid} - receptacle" for rid, _ in spec.receptacles]
    decl += [f"{START} - location"] + [f"{lo} - location" for lo in loc.values()]
    decl += [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in rtypes]
    init = [f"(atLocation agent1 {START})"]
    for rid, kind in spec.receptacles:
        init += [f"(receptacleType {rid} {kind}Type)", f"(receptacleAtLocation {rid} {loc[rid]})"]
        init += [f"(openable {rid})"] if kind in a.openable else []
    for oid, kind, rid in spec.objects:
        init += [
            f"(objectType {oid} {kind}Type)",
            f"(inReceptacle {oid} {rid})",
            f"(objectAtLocation {oid} {loc[rid]})",
        ]
        if kind == LAMP:
            init.append(f"(toggleable {oid})")
            continue
        init.append(f"(pickupable {oid})")
        for pred, kinds in [
            ("cleanable", a.cleanable),
            ("heatable", a.heatable),
            ("coolable", a.coolable),
            ("sliceable", a.sliceable),
        ]:
            init += [f"({pred} {oid})"] if kind in kinds else []
    init += [
        f"(canContain {r}Type {o}Type)" for r in rtypes for o in otypes if o in a.contain.get(r, ())
    ]
    lines = "\n".join
    return (
        f"(define (problem {name})\n(:domain alfred)\n(:objects\n{lines(decl)}\n)\n"
        f"(:init\n{lines(init)}\n)\n(:goal\n{_goal(spec)}\n)\n)\n"
    )


def game_data(spec: GameSpec, walkthrough: list[str] | None = None, **meta) -> dict[str, Any]:
    """A ``game.tw-pddl`` record: domain, grammar with the task sentence, problem, walkthrough."""
    a = alfred()
    return {
        "pddl_domain": a.domain,
        "grammar": a.grammar.replace("UNKNOWN GOAL", spec.description),
        "pddl_problem": problem_pddl(spec),
        "solvable": walkthrough is not None,
        "walkthrough": walkthrough,
        "agemem": {"task_type": spec.task_type, "room": spec.room, **meta},
    }


# --------------------------------------------------------------------------------------------
# The expert: a walkthrough written from the sampled scene, once per game


def display_names(spec: GameSpec) -> dict[str, str]:
    """PDDL id -> the name the game shows ("apple 2"), numbered by ALFWorld's own demangler."""
    from alfworld.agents.utils.misc import Demangler

    ids = [oid for oid, _, _ in spec.objects] + [rid for rid, _ in spec.receptacles]
    # The engine sees ids as the planner's translator writes them: lower case.
    infos = {i.lower(): SimpleNamespace(id=i.lower()) for i in ids}
    demangler = Demangler(game_infos=infos)
    return {i: demangler.demangle_alfred_name(i.lower()) for i in ids}


def expert_plan(spec: GameSpec) -> list[str]:
    """A direct walkthrough: fetch each needed object, treat it, put it in place.

    It knows where everything is (it reads the scene, not the text), which is what makes it
    the oracle. Tests replay such plans on the engine, where they must win.
    """
    name = display_names(spec)
    kind = dict(spec.receptacles)
    at, opened, plan = None, set(), []

    def go(rid: str) -> None:
        nonlocal at
        if at != rid:
            plan.append(f"go to {name[rid]}")
            at = rid
        if kind[rid] in alfred().openable and rid not in opened:
            plan.append(f"open {name[rid]}")
            opened.add(rid)

    targets = [(oid, rid) for oid, k, rid in spec.objects if k == spec.target]
    if spec.task_type == "look_at_obj_in_light":
        oid, rid = targets[0]
        lamp, lamp_host = next((o, r) for o, k, r in spec.objects if k == spec.toggle)
        go(rid)
        plan.append(f"take {name[oid]} from {name[rid]}")
        go(lamp_host)
        return [*plan, f"use {name[lamp]}"]
    device = {
        "pick_clean_then_place_in_recep": ("clean", "SinkBasin"),
        "pick_heat_then_place_in_recep": ("heat", "Microwave"),
        "pick_cool_then_place_in_recep": ("cool", "Fridge"),
    }.get(spec.task_type)
    dest = next(rid for rid, k in spec.receptacles if k == spec.parent)
    for oid, rid in targets[: 2 if spec.task_type == "pick_two_obj_and_place" else 1]:
        go(rid)
        plan.append(f"take {name[oid]} from {name[rid]}")
        if device:
            verb, device_kind = device
            tool = next(r for r, k in spec.receptacles if k == device_kind)
            if at != tool:
                plan.append(f"go to {name[tool]}")
                at = tool
            plan.append(f"{verb} {name[oid]} with {name[tool]}")
        go(dest)
        plan.append(f"move {name[oid]} to {name[dest]}")
    return plan


class _Planner:
    """TextWorld's own planner, for official games whose file holds no walkthrough.

    One PDDL environment serves every call: each loads its own copy of Fast Downward's 33 MB
    library and never unloads it. Planning takes seconds to minutes per game.
    """

    _lock = threading.Lock()
    _env = None

    @classmethod
    def plan(cls, data: Mapping[str, Any]) -> list[str]:
        with cls._lock:
            if cls._env is None:
                cls._env = _tw_env(gym=False, walkthrough=True)
            cls._env.load(dict(data, walkthrough=None))
            return list(cls._env.reset()["extra.walkthrough"] or [])


@overload
def _tw_env(gym: Literal[False], walkthrough: bool = False) -> AlfredDemangler: ...
@overload
def _tw_env(
    gym: Literal[True], walkthrough: bool = False
) -> tuple[textworld.EnvInfos, list[AlfredDemangler]]: ...
def _tw_env(
    gym: bool, walkthrough: bool = False
) -> AlfredDemangler | tuple[textworld.EnvInfos, list[AlfredDemangler]]:
    """A TextWorld PDDL environment with ALFWorld's demangler (no name shuffling)."""
    try:
        import textworld
        import textworld.gym
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs import PddlEnv
    except ImportError as e:
        raise AlfWorldError(_INSTALL_HINT) from e
    extras = ["walkthrough"] if walkthrough else []
    infos = textworld.EnvInfos(admissible_commands=True, won=True, extras=extras)
    if not gym:
        return AlfredDemangler(PddlEnv(infos), shuffle=False)
    return infos, [AlfredDemangler(shuffle=False)]


# --------------------------------------------------------------------------------------------
# Game files: generated (cached on disk) and official


def default_game_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "agemem_jax" / "alfworld"


def generate_game(seed: int, index: int, task_type: str | None = None) -> dict[str, Any]:
    """Game `index` of seed `seed`, with its expert walkthrough. Task types cycle by index."""
    task_type = task_type or TASK_TYPES[index % len(TASK_TYPES)]
    rng = np.random.default_rng([seed, index, TASK_TYPES.index(task_type)])
    spec = sample_spec(task_type, rng)
    return game_data(spec, expert_plan(spec), seed=seed, index=index)


def generated_game_file(
    seed: int, index: int, task_type: str | None = None, game_dir: str | os.PathLike | None = None
) -> Path:
    """Path of generated game `index`, made (and planned) on first use, then read from disk."""
    task_type = task_type or TASK_TYPES[index % len(TASK_TYPES)]
    folder = Path(game_dir) if game_dir else default_game_dir()
    path = folder / f"gen{GENERATOR_VERSION}-{task_type}-s{seed}-{index:05d}.tw-pddl"
    if not path.exists():
        data = generate_game(seed, index, task_type)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)  # atomic: concurrent runs may race on the same game
    return path


def official_root(data_path: str | os.PathLike | None = None) -> Path:
    """Where ALFWorld's data lives: the argument, else $ALFWORLD_DATA, else alfworld's default."""
    root = data_path or os.environ.get("ALFWORLD_DATA") or Path.home() / ".cache" / "alfworld"
    return Path(os.path.expandvars(os.fspath(root))).expanduser()


def official_game_files(
    data_path: str | os.PathLike | None = None,
    split: str = "valid_unseen",
    task_types: Sequence[str] = TASK_TYPES,
) -> list[Path]:
    """The release's solvable games of a split, sorted, filtered by task type.

    As ALFWorld does, movable-receptacle and sliced variants are left out (the text engine does
    not support them), and so are games marked unsolvable.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown ALFWorld split {split!r}; expected one of {sorted(SPLITS)}")
    unknown = sorted(set(task_types) - set(TASK_TYPES))
    if unknown:
        raise ValueError(f"unknown ALFWorld task types {unknown}; expected some of {TASK_TYPES}")
    root = official_root(data_path)
    # The release unpacks into json_2.1.1/; some copies keep the tw-pddl archive's own name.
    candidates = [root / v / SPLITS[split] for v in RELEASE_FOLDERS] + [root / SPLITS[split]]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise AlfWorldError(
            f"no official ALFWorld games under {root} (looked for {RELEASE_FOLDERS[0]}/"
            f"{SPLITS[split]}): run `alfworld-download` (or set $ALFWORLD_DATA) where the data "
            "can be fetched, or use source='generated'"
        )
    files = []
    for game in sorted(folder.glob("*/*/game.tw-pddl")):
        task = game.parent.parent.name  # "<task_type>-<object>-<mrecep>-<receptacle>-<scene>"
        if "movable" in task or "Sliced" in task or task.split("-")[0] not in task_types:
            continue
        if not json.loads(game.read_text()).get("solvable", False):
            continue
        files.append(game)
    if not files:
        raise AlfWorldError(f"no solvable games of types {list(task_types)} under {folder}")
    return files


# --------------------------------------------------------------------------------------------
# Task lists

DEFAULT_GENERATED_TASKS = 134  # as many as the official unseen split


def task_files(
    source: str = "generated",
    num_tasks: int | None = None,
    seed: int = 0,
    task_types: Sequence[str] | str = TASK_TYPES,
    split: str = "valid_unseen",
    data_path: str | os.PathLike | None = None,
    game_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Game files of a task list, in a fixed order.

    source="official": the release's games of `split` (all, or the first `num_tasks`) under
    `data_path` (default $ALFWORLD_DATA, else ~/.cache/alfworld). source="generated":
    `num_tasks` (default 134) games of seed `seed`, made on first use and cached in `game_dir`
    (default ~/.cache/agemem_jax/alfworld); task i has type ``task_types[i % len(task_types)]``,
    so any prefix of the list covers the types evenly.
    """
    types = (task_types,) if isinstance(task_types, str) else tuple(task_types)
    bad = sorted(set(types) - set(TASK_TYPES))
    if bad or not types:
        raise ValueError(f"bad ALFWorld task types {bad or types}; choose from {TASK_TYPES}")
    if num_tasks is not None and num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    if source == "official":
        return official_game_files(data_path, split, types)[:num_tasks]
    if source == "generated":
        n = num_tasks or DEFAULT_GENERATED_TASKS
        return [generated_game_file(seed, i, types[i % len(types)], game_dir) for i in range(n)]
    raise ValueError(f"unknown ALFWorld source {source!r}; use 'generated' or 'official'")


# --------------------------------------------------------------------------------------------
# The environment


class _GymPool:
    """Idle TextWorld gym environments, handed from finished episodes to new ones.

    A gym environment holds a PDDL engine with its own copy of Fast Downward's library, which
    TextWorld never unloads; reusing them keeps memory bounded by the number of episodes run
    at once instead of the number run in total.
    """

    _idle: ClassVar[list[Any]] = []
    _lock = threading.RLock()  # RLock: `release` may run from a finalizer

    @classmethod
    def acquire(cls, game_file: Path):
        with cls._lock:
            env = cls._idle.pop() if cls._idle else None
        if env is None:
            import textworld.gym

            infos, wrappers = _tw_env(gym=True)
            # No step limit inside TextWorld: TextEnv counts steps (invalid ones included).
            env_id = textworld.gym.register_games(
                [os.fspath(game_file)],
                infos,
                # Annotated int, but TextWorld's envs take None as "no limit".
                max_episode_steps=None,  # pyright: ignore[reportArgumentType]
                wrappers=wrappers,
            )
            env = textworld.gym.make(env_id)
        return env

    @classmethod
    def release(cls, env) -> None:
        with cls._lock:
            cls._idle.append(env)


def _task_name(game_file: Path) -> str:
    if game_file.name == "game.tw-pddl":  # official: <split>/<task>/<trial>/game.tw-pddl
        return "alfworld/" + "/".join(game_file.parts[-4:-1])
    return f"alfworld/{game_file.stem}"


WELCOME = "-= Welcome to TextWorld, ALFRED! =-"
INVALID = "Nothing happens."  # ALFWorld's answer to any command it cannot carry out
ACTION_FORMATS = (
    "look",
    "inventory",
    "go to (receptacle)",
    "open (receptacle)",
    "close (receptacle)",
    "take (object) from (receptacle)",
    "move (object) to (receptacle)",
    "examine (something)",
    "use (object)",
    "heat (object) with (receptacle)",
    "clean (object) with (receptacle)",
    "cool (object) with (receptacle)",
    "slice (object) with (object)",
)
_PUT = re.compile(r"^put (.+?) (?:in|on|in/on|into|onto) (.+)$")
_MOVE = re.compile(r"^move (.+?) to (.+)$")


class AlfWorldEnv(TextEnv):
    """One ALFWorld game (official or generated) behind the common text interface.

    The first observation is the game's own text without TextWorld's banner: the room, then
    "Your task is to: ...". Commands the game does not accept get ALFWorld's "Nothing
    happens." and count as invalid. `oracle_action` replays the game's walkthrough.
    """

    benchmark = "alfworld"
    metric = "success_rate"

    def __init__(
        self,
        game_file: str | os.PathLike,
        name: str | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        action_aliases: bool = True,
    ):
        """`action_aliases`: accept "put X in/on Y" for "move X to Y" and the reverse."""
        self._gym = None  # before anything can fail: `close` runs from the finalizer
        super().__init__(max_steps)
        self.game_file = Path(game_file)
        if not self.game_file.is_file():
            raise AlfWorldError(f"no ALFWorld game file at {self.game_file}")
        self.name = name or _task_name(self.game_file)
        self.action_aliases = action_aliases
        self._admissible: list[str] = []
        self._won = False
        self._goal = ""
        self._walkthrough: list[str] | None = None
        self._played: list[str] = []  # commands the game carried out since the reset

    @classmethod
    def tasks(cls, **kwargs: Any) -> list[dict[str, Any]]:
        """Constructor kwargs of each task; arguments as `task_files`."""
        files = task_files(**kwargs)
        return [dict(game_file=str(f), name=_task_name(f)) for f in files]

    # ----- TextEnv -----
    def _reset(self) -> str:
        if self._gym is None:
            self._gym = _GymPool.acquire(self.game_file)
        self._gym.gamefiles = [os.fspath(self.game_file)]
        self._gym.seed(0)  # rebuilds the gym env's game iterator over this one file
        obs, infos = self._gym.reset()
        self._read(infos)
        self._played = []
        text = obs.replace(WELCOME, "").strip()
        match = re.search(r"Your task is to: (.*)", text)
        self._goal = match.group(1).strip() if match else ""
        return text

    def _act(self, action: str) -> str:
        command = self._resolve(action)
        if command is None:
            raise InvalidAction(INVALID)
        if self._gym is None:
            raise RuntimeError("the environment was closed; call reset() to play again")
        obs, _, _, infos = self._gym.step(command)
        self._read(infos)
        self._played.append(command)
        return obs.strip()

    @property
    def task(self) -> str:
        formats = "; ".join(ACTION_FORMATS)
        return (
            f"Your task is to: {self._goal}\n"
            f"Actions: {formats}. Objects and receptacles are named as the game shows them "
            '(e.g. "apple 1", "countertop 2"). Say "check valid actions" to list the actions '
            "valid now."
        )

    def admissible_actions(self) -> list[str] | None:
        return list(self._admissible)

    @property
    def success(self) -> bool:
        return self._won

    @property
    def progress(self) -> float:
        return float(self._won)  # ALFWorld scores success only

    def oracle_action(self) -> str:
        """The next walkthrough command not yet carried out (an open-loop plan from the start:
        other commands in between are skipped over, not planned around)."""
        if self._walkthrough is None:
            data = json.loads(self.game_file.read_text())
            self._walkthrough = list(data.get("walkthrough") or []) or _Planner.plan(data)
        done = 0
        for command in self._played:
            done += done < len(self._walkthrough) and command == self._walkthrough[done]
        return self._walkthrough[done] if done < len(self._walkthrough) else "look"

    def close(self) -> None:
        gym, self._gym = self._gym, None
        if gym is not None:
            _GymPool.release(gym)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to hand back to
            pass

    # ----- helpers -----
    def _read(self, infos: Mapping[str, Any]) -> None:
        self._admissible = list(infos["admissible_commands"])
        self._won = bool(infos["won"])

    def _resolve(self, action: str) -> str | None:
        """The admissible command meant by `action`, or None."""
        if action in self._admissible:
            return action
        match = _PUT.match(action) or _MOVE.match(action)
        if self.action_aliases and match:
            # Older ALFWorld grammars say "put X in/on Y" where this one says "move X to Y".
            obj, recep = match.groups()
            for alias in (f"move {obj} to {recep}", f"put {obj} in/on {recep}"):
                if alias in self._admissible:
                    return alias
        return None
