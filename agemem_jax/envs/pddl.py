"""PDDL planning tasks (AgentBoard's barman, blockworld, gripper, tyreworld) as text games.

Problems are parsed and grounded with pyperplan. Grounding keeps the static facts in the state
and every operator (`remove_statics_from_initial_state=False, remove_irrelevant_operators=False`),
because pruning hides actions an agent may legally take and facts it may be asked about.
States, goals and actions are rendered in English from per-domain templates; an action is
accepted in that English form or in PDDL form (`stack b1 b2`, `(stack b1 b2)`).

Metric: progress rate, the running maximum over the episode of the fraction of goal atoms that
hold, scored after each valid action as AgentBoard does (the initial state is not scored).
Success: all goal atoms hold.

Tasks come from the 60 AgentBoard problems under `../shared/data/pddl` (read in place, never
copied) or from this module's seeded generators, which write problems for our own domain files
in `pddl_domains/`. The oracle executes a pyperplan plan through the same text interface.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, cast

from pyperplan import grounding
from pyperplan.heuristics.landmarks import LandmarkHeuristic
from pyperplan.heuristics.relaxation import hAddHeuristic
from pyperplan.pddl.parser import Parser
from pyperplan.pddl.pddl import Domain, Problem
from pyperplan.search import astar_search, greedy_best_first_search
from pyperplan.task import Operator, Task

from agemem_jax.envs.base import DEFAULT_MAX_STEPS, InvalidAction, StepResult, TextEnv

DOMAINS = ("barman", "blockworld", "gripper", "tyreworld")
# AgentBoard's file layout: the problem files of each domain, in its order.
AGENTBOARD_COUNTS = {"barman": 20, "blockworld": 10, "gripper": 20, "tyreworld": 10}

INVALID = (
    "The action is not valid in the current state and therefore takes no effect. "
    "Please remember to satisfy the preconditions of actions. You can also check valid actions."
)
UNKNOWN = "The action is not recognized and therefore takes no effect. Please check valid actions."

# ----- English rendering -----
# Templates are keyed by predicate or action name; `{0}`, `{1}`… are the PDDL arguments in order.
FACTS: dict[str, dict[str, str]] = {
    "blockworld": {
        "on": "{0} is on top of {1}",
        "on-table": "{0} is on the table",
        "clear": "{0} is clear",
        "holding": "the arm is holding {0}",
        "arm-empty": "the arm is empty",
    },
    "gripper": {
        "room": "{0} is a room",
        "ball": "{0} is a ball",
        "gripper": "{0} is a gripper",
        "at-robby": "the robot is in {0}",
        "at": "{0} is in {1}",
        "free": "gripper {0} is free",
        "carry": "gripper {1} is carrying {0}",
    },
    "tyreworld": {
        "isopen": "{0} is open",
        "closed": "{0} is closed",
        "unlocked": "{0} is unlocked",
        "have": "you have {0}",
        "in": "{0} is in {1}",
        "loose": "nut {0} on {1} is loose",
        "tight": "nut {0} on {1} is tight",
        "on-ground": "{0} is on the ground",
        "not-on-ground": "{0} is jacked up",
        "fastened": "{0} is fastened",
        "unfastened": "{0} is unfastened",
        "free": "{0} has no wheel on it",
        "inflated": "wheel {0} is inflated",
        "not-inflated": "wheel {0} is not inflated",
        "intact": "wheel {0} is intact",
        "on": "wheel {0} is on {1}",
    },
    "barman": {
        "ontable": "{0} is on the table",
        "holding": "{0} hand is holding {1}",
        "handempty": "{0} hand is empty",
        "empty": "{0} is empty",
        "clean": "{0} is clean",
        "contains": "{0} contains {1}",
        "used": "{0} has been used for {1}",
        "dispenses": "{0} dispenses {1}",
        "shaker-empty-level": "the empty level of {0} is {1}",
        "shaker-level": "{0} is at level {1}",
        "next": "level {1} is one above level {0}",
        "unshaked": "{0} is not shaken",
        "shaked": "{0} is shaken",
        "cocktail-part1": "the first ingredient of {0} is {1}",
        "cocktail-part2": "the second ingredient of {0} is {1}",
    },
}

ACTIONS: dict[str, dict[str, str]] = {
    "blockworld": {
        "pickup": "pick up {0}",
        "putdown": "put down {0}",
        "stack": "stack {0} on {1}",
        "unstack": "unstack {0} from {1}",
    },
    "gripper": {
        "move": "move from {0} to {1}",
        "pick": "pick up {0} in {1} with {2}",
        "drop": "drop {0} in {1} with {2}",
    },
    "tyreworld": {
        "open": "open {0}",
        "close": "close {0}",
        "fetch": "fetch {0} from {1}",
        "put-away": "put away {0} in {1}",
        "loosen": "loosen nut {0} on {1}",
        "tighten": "tighten nut {0} on {1}",
        "jack-up": "jack up {0}",
        "jack-down": "jack down {0}",
        "undo": "undo nut {0} on {1}",
        "do-up": "do up nut {0} on {1}",
        "remove-wheel": "remove wheel {0} from {1}",
        "put-on-wheel": "put wheel {0} on {1}",
        "inflate": "inflate wheel {0}",
    },
    "barman": {
        "grasp": "grasp {1} with {0} hand",
        "leave": "leave {1} from {0} hand",
        "fill-shot": "fill {0} with {1} from {4} holding it in {2} hand with {3} hand free",
        "refill-shot": "refill {0} with {1} from {4} holding it in {2} hand with {3} hand free",
        "empty-shot": "empty {2} from {1} with {0} hand",
        "clean-shot": "clean {0} used for {1} holding it in {2} hand with {3} hand free",
        "pour-shot-to-clean-shaker": "pour {1} from {0} into clean {2} with {3} hand, "
        "level {4} to {5}",
        "pour-shot-to-used-shaker": "pour {1} from {0} into used {2} with {3} hand, "
        "level {4} to {5}",
        "empty-shaker": "empty {2} from {1} with {0} hand, level {3} to {4}",
        "clean-shaker": "clean {2} holding it in {0} hand with {1} hand free",
        "shake": "shake {0} from {1} and {2} in {3} holding it in {4} hand with {5} hand free",
        "pour-shaker-to-shot": "pour {0} from {3} into {1} with {2} hand, level {4} to {5}",
    },
}

INTROS: dict[str, str] = {
    "blockworld": """\
Blocks world. Blocks sit on the table or on top of each other, and one arm moves them one at a
time. Actions:
- pick up <block>: the block is on the table and clear, and the arm is empty.
- put down <block>: the arm is holding the block; it goes on the table.
- stack <block> on <other block>: the arm is holding the block and the other block is clear.
- unstack <block> from <other block>: the block is clear, on top of the other, the arm empty.""",
    "gripper": """\
Gripper. A robot with grippers carries balls between rooms; each gripper holds one ball.
Actions:
- move from <room> to <room>: the robot is in the first room.
- pick up <ball> in <room> with <gripper>: the ball and the robot are in the room and the
  gripper is free.
- drop <ball> in <room> with <gripper>: the gripper carries the ball and the robot is there.""",
    "tyreworld": """\
Tyre world. Replace flat wheels with intact spare wheels; the tools (wrench, jack, pump) and
spares are in the boot. Actions:
- open <container> / close <container>: the container is unlocked (to open) or open.
- fetch <thing> from <container> / put away <thing> in <container>: the container is open.
- loosen nut <nut> on <hub> / tighten nut <nut> on <hub>: you have the wrench and the hub is on
  the ground.
- jack up <hub>: you have the jack and the hub is on the ground (the jack stays under it).
- jack down <hub>: the hub is jacked up; you get the jack back.
- undo nut <nut> on <hub>: the hub is jacked up and fastened, the nut loose, you have the wrench.
- do up nut <nut> on <hub>: the hub is jacked up and unfastened, you have the nut and wrench.
- remove wheel <wheel> from <hub>: the hub is jacked up and unfastened with the wheel on it.
- put wheel <wheel> on <hub>: you have the wheel; the hub is jacked up, unfastened and free.
- inflate wheel <wheel>: you have the pump and the wheel is intact and not inflated.""",
    "barman": """\
Barman. A robot barman with a left and a right hand makes drinks with shot glasses, one shaker
and ingredient dispensers. Actions (<h> is a hand, <h2> the other hand, which must be empty):
- grasp <container> with <h> hand / leave <container> from <h> hand.
- fill <shot> with <ingredient> from <dispenser> holding it in <h> hand with <h2> hand free:
  the shot is empty and clean. refill … (same words): the shot is empty and was used for it.
- empty <beverage> from <shot> with <h> hand.
- clean <shot> used for <beverage> holding it in <h> hand with <h2> hand free: the shot is empty.
- pour <ingredient> from <shot> into clean <shaker> with <h> hand, level <l> to <l1>: the
  shaker is empty and clean at level <l>. pour … into used <shaker> … : it is not yet shaken.
- shake <cocktail> from <ingredient1> and <ingredient2> in <shaker> holding it in <h> hand with
  <h2> hand free: the shaker holds exactly the cocktail's two ingredients.
- pour <cocktail> from <shaker> into <shot> with <h> hand, level <l> to <l1>: the shaker is
  shaken and the shot empty and clean; the shaker level drops one step.
- empty <cocktail> from <shaker> with <h> hand, level <l> to <l1>: back to its empty level.
- clean <shaker> holding it in <h> hand with <h2> hand free: the shaker is empty.""",
}


def _split(atom: str) -> tuple[str, list[str]]:
    name, *args = atom.strip("()").split()
    return name, args


def render_fact(domain: str, atom: str) -> str:
    name, args = _split(atom)
    template = FACTS.get(domain, {}).get(name)
    return template.format(*args) if template else " ".join([name, *args])


def render_action(domain: str, op_name: str) -> str:
    name, args = _split(op_name)
    template = ACTIONS.get(domain, {}).get(name)
    return template.format(*args) if template else " ".join([name, *args])


def _key(text: str) -> str:
    """Matching key: lower case, punctuation and articles dropped, single spaces."""
    words = re.sub(r"[(),.;:!?\"'`]", " ", text.lower()).split()
    return " ".join(w for w in words if w not in ("the", "a", "an"))


def _sentences(domain: str, atoms: Iterable[str]) -> str:
    lines = sorted(render_fact(domain, a) for a in atoms)
    return " ".join(line + "." for line in lines) if lines else "nothing."


# ----- parsing, grounding, planning -----
def shipped_domain_file(domain: str) -> Path:
    """Our own PDDL domain file for `domain`, shipped as package data."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown PDDL domain {domain!r}; expected one of {DOMAINS}")
    return Path(str(resources.files("agemem_jax.envs") / "pddl_domains" / f"{domain}.pddl"))


def default_data_dir() -> Path:
    """Where AgentBoard's PDDL problems live beside the project (`../shared/data/pddl`)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pddl"


def _parse(domain_pddl: str, problem_pddl: str) -> tuple[Domain, Problem]:
    parser = Parser(None)
    parser.domInput, parser.probInput = domain_pddl, problem_pddl
    try:
        domain = parser.parse_domain(read_from_file=False)
        problem = parser.parse_problem(domain, read_from_file=False)
    except Exception as e:  # pyperplan raises ParseError, ValueError, KeyError, IndexError…
        raise ValueError(f"cannot parse PDDL: {type(e).__name__}: {e}") from None
    # pyperplan's tree visitors start from None and set their result while traversing the AST.
    assert domain is not None and problem is not None
    return domain, problem


def _statics(domain) -> set[str]:
    """Predicates that no action adds or deletes."""
    changed = {
        p.name for a in domain.actions.values() for p in (*a.effect.addlist, *a.effect.dellist)
    }
    return set(domain.predicates) - changed


class PlanningFailed(RuntimeError):
    pass


class _Budgeted:
    """A heuristic that gives up after `budget` evaluations, so planning always ends (and ends
    the same way on every machine, unlike a wall-clock limit)."""

    def __init__(self, heuristic, budget: int):
        self.heuristic, self.budget, self.calls = heuristic, budget, 0

    def __call__(self, node):
        self.calls += 1
        if self.calls > self.budget:
            raise PlanningFailed
        return self.heuristic(node)


# (search, heuristic, evaluation budget), tried in turn. A* with hAdd gives short plans on small
# tasks (AgentBoard blockworld p10: 22 steps against greedy search's 40); greedy best-first
# search with hAdd solves most of the rest within a few thousand evaluations; barman tasks with
# two cocktails need the landmark heuristic (cheap per node) and up to ~0.9M evaluations (~40 s,
# AgentBoard barman p12). hFF is too slow per node to help.
PLANNERS = (
    (astar_search, hAddHeuristic, 3_000),
    (greedy_best_first_search, hAddHeuristic, 5_000),
    (greedy_best_first_search, LandmarkHeuristic, 2_000_000),
)


def plan(task: Task, planners: Sequence[tuple[Any, type, int]] = PLANNERS) -> list[Operator]:
    """A plan for `task` (operator list) from the first of `planners` that finds one."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # pyperplan logs every search at INFO on the root logger
    try:
        for search, heuristic, budget in planners:
            try:
                found = search(task, _Budgeted(heuristic(task), budget))
            except PlanningFailed:
                continue
            if found is not None:
                return found
    finally:
        logging.disable(previous)
    raise PlanningFailed(f"no plan found for {task.name} within the search budgets")


def _operators(task: Task) -> list[Operator]:
    """A grounded task's operators (pyperplan's inferred list[Operator | None]: grounding
    filters out the Nones)."""
    return cast(list[Operator], task.operators)


@functools.lru_cache(maxsize=256)
def _ground(domain_pddl: str, problem_pddl: str):
    """(full task, pruned planning task, static predicate names, objects) for a problem."""
    domain, problem = _parse(domain_pddl, problem_pddl)
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        full = grounding.ground(
            problem, remove_statics_from_initial_state=False, remove_irrelevant_operators=False
        )
        _, problem = _parse(domain_pddl, problem_pddl)  # grounding mutates the problem
        pruned = grounding.ground(problem)
    finally:
        logging.disable(previous)
    # Sorted operators make search order, hence plans, independent of string hashing.
    _operators(full).sort(key=lambda o: o.name)
    _operators(pruned).sort(key=lambda o: o.name)
    return full, pruned, frozenset(_statics(domain)), tuple(sorted(problem.objects))


@functools.lru_cache(maxsize=256)
def _initial_plan(domain_pddl: str, problem_pddl: str) -> tuple[str, ...]:
    _, pruned, _, _ = _ground(domain_pddl, problem_pddl)
    return tuple(op.name for op in plan(pruned))


# ----- the environment -----
class PddlEnv(TextEnv):
    """One PDDL problem as a text game.

    Args:
      domain: rendering key, one of DOMAINS (any other name renders facts and actions in
        PDDL form).
      problem_file / problem_pddl: the problem, as a path or as PDDL text (exactly one).
      domain_file: the domain; defaults to our own file for `domain`.
      name: a task id for logs.
      max_steps: step limit (AgentBoard: 30).
      planners: (search, heuristic class, evaluation budget) triples the oracle tries in turn.
    """

    benchmark: ClassVar[str] = "pddl"
    metric: ClassVar[str] = "progress_rate"

    def __init__(
        self,
        domain: str,
        problem_file: str | Path | None = None,
        problem_pddl: str | None = None,
        domain_file: str | Path | None = None,
        name: str | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        planners: Sequence[tuple[Any, type, int]] = PLANNERS,
    ):
        super().__init__(max_steps)
        if (problem_file is None) == (problem_pddl is None):
            raise ValueError("give exactly one of problem_file and problem_pddl")
        if problem_file is not None:
            problem_pddl = Path(problem_file).read_text()
        if domain_file is None:
            domain_file = shipped_domain_file(domain)
        self.domain = domain
        self.name = name or (str(problem_file) if problem_file else f"{domain}/generated")
        self.planners = tuple(planners)
        self._domain_pddl = Path(domain_file).read_text()
        self._problem_pddl = problem_pddl
        full, self._plan_task, statics, self.objects = _ground(self._domain_pddl, problem_pddl)
        self.goals = full.goals
        self.operators = _operators(full)
        self._static_atoms = frozenset(a for a in full.initial_state if _split(a)[0] in statics)
        self._initial_state = full.initial_state
        self._by_key: dict[str, Operator] = {}
        for op in self.operators:
            self._by_key.setdefault(_key(render_action(domain, op.name)), op)
            self._by_key.setdefault(_key(op.name), op)
        self.state = self._initial_state
        self._progress = 0.0
        self._oracle_plan: list[str] = []  # remaining plan, valid from state `_expected`
        self._expected = self.state

    # ----- text -----
    @property
    def task(self) -> str:
        intro = INTROS.get(self.domain, f"PDDL domain {self.domain}.")
        goal = ", ".join(sorted(render_fact(self.domain, g) for g in self.goals))
        parts = [
            intro,
            "You may also say 'look around' to see the current state and 'check valid actions'.",
            f"The goal is to satisfy the following conditions: {goal}.",
        ]
        if self._static_atoms:
            parts.append("Facts that never change: " + _sentences(self.domain, self._static_atoms))
        parts.append("Initial state: " + self.describe_state())
        return "\n".join(parts)

    def describe_state(self) -> str:
        return _sentences(self.domain, self.state - self._static_atoms)

    def admissible_actions(self) -> list[str]:
        return sorted(
            render_action(self.domain, op.name)
            for op in self.operators
            if op.preconditions <= self.state
        )

    # ----- dynamics -----
    def _reset(self) -> str:
        self.state = self._initial_state
        self._progress = 0.0
        self._oracle_plan = []
        return "Initial state: " + self.describe_state()

    def _act(self, action: str) -> str:
        if action == "look around":
            return "Current state: " + self.describe_state()
        op = self._by_key.get(_key(action))
        if op is None:
            raise InvalidAction(UNKNOWN)
        if not op.preconditions <= self.state:
            raise InvalidAction(INVALID)
        self.state = op.apply(self.state)
        self._progress = max(self._progress, self.goal_fraction(self.state))
        observation = self.describe_state()
        return observation + (" The goal is satisfied." if self.success else "")

    def goal_fraction(self, state: frozenset[str]) -> float:
        return len(self.goals & state) / len(self.goals) if self.goals else 1.0

    @property
    def success(self) -> bool:
        return self.goals <= self.state

    @property
    def progress(self) -> float:
        return self._progress

    # ----- oracle -----
    def oracle_action(self) -> str:
        """The next step of a pyperplan plan, replanning whenever the state left the plan."""
        if not self._oracle_plan or self._expected != self.state:
            self._oracle_plan = self._plan_from(self.state)
        return render_action(self.domain, self._oracle_plan[0])

    def _plan_from(self, state: frozenset[str]) -> list[str]:
        if state == self._initial_state and self.planners == PLANNERS:
            names: list[str] = list(_initial_plan(self._domain_pddl, self._problem_pddl))
        else:
            t = self._plan_task
            names = [
                op.name
                for op in plan(
                    Task(t.name, t.facts, state & t.facts, t.goals, t.operators), self.planners
                )
            ]
        if not names:
            raise PlanningFailed("the goal already holds")
        self._expected = state
        return names

    def step(self, action_text: str) -> StepResult:
        before = self.state
        result = super().step(action_text)
        if self._oracle_plan and before == self._expected != self.state:
            # The agent took the plan's next step: advance; any other change triggers a replan.
            nxt = self._by_key[_key(self._oracle_plan[0])]
            if nxt.apply(before) == self.state:
                self._oracle_plan.pop(0)
                self._expected = self.state
        return result

    # ----- task lists -----
    @classmethod
    def tasks(
        cls,
        source: str = "agentboard",
        domains: Sequence[str] = DOMAINS,
        num_per_domain: int | None = None,
        seed: int = 0,
        data_dir: str | Path | None = None,
        generator_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Constructor kwargs for each task.

        source="agentboard": AgentBoard's problems (all, or the first `num_per_domain` of each
        domain) read from `data_dir` (default `../shared/data/pddl`), with AgentBoard's domain
        files. source="generated": `num_per_domain` (default 10) problems per domain from our
        seeded generators and our domain files; `generator_kwargs[domain]` sets their sizes.
        """
        for d in domains:
            if d not in DOMAINS:
                raise ValueError(f"unknown PDDL domain {d!r}; expected one of {DOMAINS}")
        if source == "agentboard":
            root = Path(data_dir) if data_dir else default_data_dir()
            if not root.is_dir():
                raise FileNotFoundError(f"AgentBoard PDDL problems not found at {root}")
            specs = []
            for d in domains:
                files = sorted(
                    (p for p in (root / d).glob("*.pddl") if p.name != "domain.pddl"),
                    key=lambda p: int(re.sub(r"\D", "", p.stem)),
                )
                for p in files[:num_per_domain]:
                    specs.append(
                        dict(
                            domain=d,
                            problem_file=str(p),
                            domain_file=str(root / d / "domain.pddl"),
                            name=f"{d}/{p.stem}",
                        )
                    )
            return specs
        if source == "generated":
            n = 10 if num_per_domain is None else num_per_domain
            return [
                dict(
                    domain=d,
                    problem_pddl=generate_problem(
                        d, seed * 100_003 + i, **(generator_kwargs or {}).get(d, {})
                    ),
                    name=f"{d}/gen-s{seed}-{i:03d}",
                )
                for d in domains
                for i in range(n)
            ]
        raise ValueError(f"unknown PDDL task source {source!r}; use 'agentboard' or 'generated'")


# ----- seeded problem generators for our domain files -----
def _towers(blocks: list[str], rng: random.Random) -> list[list[str]]:
    """A random arrangement of blocks into towers (bottom first)."""
    order = blocks[:]
    rng.shuffle(order)
    towers: list[list[str]] = []
    for b in order:
        if towers and rng.random() < 0.6:
            rng.choice(towers).append(b)
        else:
            towers.append([b])
    return towers


def _on_atoms(towers: list[list[str]]) -> list[str]:
    return [f"(on {t[i + 1]} {t[i]})" for t in towers for i in range(len(t) - 1)]


def _problem(name: str, domain: str, objects: str, init: Iterable[str], goal: Iterable[str]) -> str:
    init_s = "\n    ".join(init)
    goal_s = "\n      ".join(goal)
    return (
        f"(define (problem {name})\n  (:domain {domain})\n  (:objects {objects})\n"
        f"  (:init\n    {init_s})\n  (:goal (and\n      {goal_s})))\n"
    )


def generate_blockworld(rng: random.Random, min_blocks: int = 4, max_blocks: int = 6) -> str:
    blocks = [f"b{i}" for i in range(1, rng.randint(min_blocks, max_blocks) + 1)]
    start = _towers(blocks, rng)
    while True:
        goal = _on_atoms(_towers(blocks, rng))
        if goal and not set(goal) <= set(_on_atoms(start)):
            break
    init = ["(arm-empty)", *_on_atoms(start)]
    init += [f"(on-table {t[0]})" for t in start] + [f"(clear {t[-1]})" for t in start]
    return _problem("blocks", "blocksworld-4ops", " ".join(blocks), init, goal)


def generate_gripper(
    rng: random.Random, min_balls: int = 3, max_balls: int = 6, rooms: int = 2
) -> str:
    room_names = [f"room{chr(ord('a') + i)}" for i in range(rooms)]
    balls = [f"ball{i}" for i in range(1, rng.randint(min_balls, max_balls) + 1)]
    where = {b: rng.choice(room_names) for b in balls}
    target = dict(where)
    for b in rng.sample(balls, rng.randint((len(balls) + 1) // 2, len(balls))):  # most move
        target[b] = rng.choice([r for r in room_names if r != where[b]])
    init = [f"(room {r})" for r in room_names] + [f"(ball {b})" for b in balls]
    init += ["(gripper left)", "(gripper right)", "(free left)", "(free right)"]
    init += [f"(at-robby {rng.choice(room_names)})"] + [f"(at {b} {where[b]})" for b in balls]
    goal = [f"(at {b} {target[b]})" for b in balls if target[b] != where[b] or rng.random() < 0.5]
    objects = " ".join([*room_names, *balls, "left", "right"])
    return _problem("gripper", "gripper-strips", objects, init, goal)


def generate_tyreworld(rng: random.Random, min_hubs: int = 1, max_hubs: int = 2) -> str:
    k = rng.randint(min_hubs, max_hubs)
    ids = range(1, k + 1)
    objects = (
        " ".join(f"the-hub{i}" for i in ids)
        + " - hub "
        + " ".join(f"nuts{i}" for i in ids)
        + " - nut boot - container "
        + " ".join(f"r{i} w{i}" for i in ids)
        + " - wheel"
    )
    init = [
        "(in jack boot)",
        "(in pump boot)",
        "(in wrench boot)",
        "(unlocked boot)",
        "(closed boot)",
    ]
    for i in ids:
        init += [
            f"(intact r{i})",
            f"(in r{i} boot)",
            f"(not-inflated r{i})",
            f"(on w{i} the-hub{i})",
            f"(on-ground the-hub{i})",
            f"(tight nuts{i} the-hub{i})",
            f"(fastened the-hub{i})",
        ]
    goal = []
    for i in ids:
        goal += [f"(on r{i} the-hub{i})", f"(inflated r{i})"]
        if rng.random() < 0.5:
            goal.append(f"(in w{i} boot)")
    return _problem("tyres", "tyreworld", objects, init, goal)


def generate_barman(
    rng: random.Random, min_shots: int = 2, max_shots: int = 4, max_cocktails_in_goal: int = 1
) -> str:
    shots = [f"shot{i}" for i in range(1, rng.randint(min_shots, max_shots) + 1)]
    ingredients = ["ingredient1", "ingredient2", "ingredient3"]
    cocktails = ["cocktail1", "cocktail2", "cocktail3"]
    objects = (
        "shaker1 - shaker left right - hand "
        + " ".join(shots)
        + " - shot "
        + " ".join(ingredients)
        + " - ingredient "
        + " ".join(cocktails)
        + " - cocktail "
        "dispenser1 dispenser2 dispenser3 - dispenser l0 l1 l2 - level"
    )
    init = [
        "(ontable shaker1)",
        "(clean shaker1)",
        "(empty shaker1)",
        "(handempty left)",
        "(handempty right)",
        "(shaker-empty-level shaker1 l0)",
        "(shaker-level shaker1 l0)",
        "(next l0 l1)",
        "(next l1 l2)",
    ]
    init += [f"(dispenses dispenser{i} ingredient{i})" for i in (1, 2, 3)]
    init += [f"({p} {s})" for s in shots for p in ("ontable", "clean", "empty")]
    for c in cocktails:
        a, b = rng.sample(ingredients, 2)
        init += [f"(cocktail-part1 {c} {a})", f"(cocktail-part2 {c} {b})"]
    n_goal = rng.randint(1, min(2, len(shots)))
    n_cocktails = rng.randint(1, min(max_cocktails_in_goal, n_goal))
    drinks = rng.sample(cocktails, n_cocktails) + rng.sample(ingredients, n_goal - n_cocktails)
    goal = [f"(contains {s} {d})" for s, d in zip(rng.sample(shots, n_goal), drinks, strict=True)]
    return _problem("bar", "barman", objects, init, goal)


GENERATORS = {
    "barman": generate_barman,
    "blockworld": generate_blockworld,
    "gripper": generate_gripper,
    "tyreworld": generate_tyreworld,
}


def generate_problem(domain: str, seed: int, **kwargs: Any) -> str:
    """A seeded random problem (PDDL text) for our domain file `domain`."""
    if domain not in GENERATORS:
        raise ValueError(f"unknown PDDL domain {domain!r}; expected one of {DOMAINS}")
    return GENERATORS[domain](random.Random(seed), **kwargs)
