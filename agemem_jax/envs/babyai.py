"""BabyAI (minigrid 3.x) grid-world instruction following as a text game.

Our own text layer over minigrid's BabyAI levels:
  * observation: an egocentric description of the agent's 7x7 view: every visible object with
    its colour (and a door's state) at "N steps ahead and M steps to your left/right", the
    nearest walls ahead/left/right, and what the agent carries;
  * actions: `turn left`, `turn right`, `move forward`, `go to <object>`, `pick up <object>`,
    `drop`, `toggle`, `go through <door>`. The high-level ones are compiled into primitive
    actions by breadth-first search over (cell, heading) on the part of the grid the agent has
    seen, and only name objects in view. Objects are named by colour and type, numbered by
    distance when several look alike ("red ball 2").
  * metric: success rate (the mission's own verifier). `progress` is a subgoal measure of ours:
    the mission is split into its clauses (go to / pick up / open / put next to), each clause
    into ordered subgoals, and progress is the fraction of subgoals ever achieved (1.0 on
    success):
        go to X        -> facing an X
        pick up X      -> facing an X, carrying an X
        open D         -> facing a D, a D is open
        put X next to Y-> carrying an X, an X lies next to a Y
  * oracle: minigrid's own BabyAI bot. It is kept in step with every primitive action executed,
    and its next moves are emitted through the text interface: as one `go to` / `pick up` /
    `go through` when our compiled version of that action is exactly the bot's next primitives,
    else as the single primitive (`turn left`, `move forward`, `pick up X`, `drop`, `toggle`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium
import minigrid  # noqa: F401  (registers the BabyAI levels with gymnasium)
import numpy as np
from minigrid.core.constants import DIR_TO_VEC
from minigrid.core.world_object import Door
from minigrid.envs.babyai.core.roomgrid_level import RoomGridLevel
from minigrid.envs.babyai.core.verifier import (
    GoToInstr,
    OpenInstr,
    PickupInstr,
    PutNextInstr,
    pos_next_to,
)
from minigrid.utils.baby_ai_bot import BabyAIBot

from agemem_jax.envs.base import DEFAULT_MAX_STEPS, InvalidAction, TextEnv

# The default suite: missions of several clauses (put next to, open in order, unlock, fetch
# behind locked doors) that minigrid's bot finishes within AgentBoard's 30 text steps through our
# actions, and a random policy almost never does (measured: oracle 1.00, random 0.00-0.10).
DEFAULT_LEVELS = (
    "BabyAI-PutNextLocal-v0",
    "BabyAI-PutNextS5N1-v0",
    "BabyAI-MoveTwoAcrossS5N2-v0",
    "BabyAI-OpenTwoDoors-v0",
    "BabyAI-OpenDoorsOrderN2-v0",
    "BabyAI-UnlockLocal-v0",
    "BabyAI-UnlockPickup-v0",
    "BabyAI-BlockedUnlockPickup-v0",
    "BabyAI-KeyCorridorS3R1-v0",
    "BabyAI-KeyCorridorS3R2-v0",
)
# Single-clause go-to / pick-up levels (as in AgentBoard's set). `go to <object>` makes them easy:
# a random choice among the admissible actions succeeds on 40-90% of them.
EASY_LEVELS = (
    "BabyAI-GoToRedBallGrey-v0",
    "BabyAI-GoToRedBall-v0",
    "BabyAI-GoToObj-v0",
    "BabyAI-GoToLocal-v0",
    "BabyAI-GoToDoor-v0",
    "BabyAI-PickupLoc-v0",
    "BabyAI-OpenDoor-v0",
)

LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)  # minigrid's action ids
PRIMITIVE_TEXT = {
    LEFT: "turn left",
    RIGHT: "turn right",
    FORWARD: "move forward",
    DROP: "drop",
    TOGGLE: "toggle",
}
OBJECT_TYPES = ("door", "key", "ball", "box", "goal", "lava")
PICKABLE = ("key", "ball", "box")

UNKNOWN = "The action is not recognized. Please check available actions."
ACTION_HELP = """\
You are an agent in a grid world of rooms, viewing a 7x7 square in front of you. Actions:
- turn left / turn right / move forward
- go to <object>: walk next to an object in view and face it
- pick up <object>: go to an object in view and pick it up (you can carry one thing)
- drop: put down what you carry in the cell in front of you
- toggle: open or close the door in front of you (a locked door needs the key of its colour),
  or open the box in front of you
- go through <door>: walk through an open door in view
Objects are named by colour and type, e.g. "red ball", numbered by distance when several
look alike ("red ball 2"). You may also say 'check available actions'."""


State = tuple[int, int, int]  # x, y, heading (minigrid's 0 = east, clockwise)


def _steps(n: int) -> str:
    return f"{n} step{'s' if n != 1 else ''}"


@dataclass(frozen=True)
class Seen:
    """One visible object: its name (the action referent), description and place."""

    name: str
    text: str
    pos: tuple[int, int]
    type: str
    ahead: int
    right: int


class BabyAIEnv(TextEnv):
    """One BabyAI level instance (level id + seed) as a text game.

    Args:
      level: a minigrid BabyAI environment id.
      seed: the reset seed, which fixes the grid and the mission.
      max_steps: text-action step limit (AgentBoard: 30).
      primitive_step_limit: minigrid's own limit on primitive actions; None keeps the level's.
      name: a task id for logs.
    """

    benchmark: ClassVar[str] = "babyai"
    metric: ClassVar[str] = "success_rate"
    empty_action_message: ClassVar[str] = UNKNOWN

    def __init__(
        self,
        level: str = "BabyAI-GoToLocal-v0",
        seed: int = 0,
        max_steps: int = DEFAULT_MAX_STEPS,
        primitive_step_limit: int | None = None,
        name: str | None = None,
    ):
        super().__init__(max_steps)
        if not level.startswith("BabyAI-"):
            raise ValueError(f"not a BabyAI level: {level!r}")
        kwargs: dict[str, Any] = (
            {} if primitive_step_limit is None else {"max_steps": int(primitive_step_limit)}
        )
        try:
            self._gym_env = gymnasium.make(level, **kwargs)
        except gymnasium.error.Error as e:
            raise ValueError(f"unknown BabyAI level {level!r}: {e}") from None
        # gymnasium 1.x: attributes live on the base env, typed there as a plain gymnasium.Env.
        env = self._gym_env.unwrapped
        if not isinstance(env, RoomGridLevel):
            raise ValueError(f"not a BabyAI level: {level!r} makes a {type(env).__name__}")
        self.env = env
        self.level, self.seed = level, int(seed)
        self.name = name or f"{level}/seed{seed}"
        self._success = self._ended = False
        self._bot: _BoundedBot | None = None

    # ----- episode -----
    def _reset(self) -> str:
        with contextlib.redirect_stdout(io.StringIO()):  # minigrid prints rejected samples
            self.env.reset(seed=self.seed)
        self.mission = str(self.env.mission)
        self._seen_mask = np.zeros((self.env.width, self.env.height), dtype=bool)
        self._success = self._ended = False
        self._bot, self._bot_next = None, None
        self.oracle_restarts = 0
        # Each level's gen_mission sets `instrs`; RoomGridLevel never declares it.
        instrs = self.env.instrs  # pyright: ignore[reportAttributeAccessIssue]
        self._subgoals = [(leaf, i) for leaf in _leaves(instrs) for i in range(_num_subgoals(leaf))]
        self._achieved: set[int] = set()
        self._update_after_primitive()
        return self.describe()

    @property
    def task(self) -> str:
        return f"{ACTION_HELP}\nYour mission: {self.mission}."

    @property
    def success(self) -> bool:
        return self._success

    @property
    def terminated(self) -> bool:
        return self._ended

    @property
    def progress(self) -> float:
        if self._success:
            return 1.0
        return len(self._achieved) / len(self._subgoals) if self._subgoals else 0.0

    def close(self) -> None:
        self._gym_env.close()

    # ----- perception -----
    def _view(self) -> Iterator[tuple[int, int, tuple[int, int]]]:
        """(ahead, right, world cell) of every visible cell except the agent's own."""
        _, vis = self.env.gen_obs_grid()
        size = self.env.agent_view_size
        pos, f, r = np.array(self.env.agent_pos), self.env.dir_vec, self.env.right_vec
        for i in range(size):
            for j in range(size):
                ahead, right = size - 1 - j, i - size // 2
                x, y = pos + f * ahead + r * right
                if vis[i, j] and (ahead, right) != (0, 0) and self._in_grid(x, y):
                    yield ahead, right, (int(x), int(y))

    def _in_grid(self, x: int, y: int) -> bool:
        return 0 <= x < self.env.width and 0 <= y < self.env.height

    def visible_objects(self) -> list[Seen]:
        cells = []
        for ahead, right, p in self._view():
            obj = self.env.grid.get(*p)
            if obj is not None and obj.type in OBJECT_TYPES:
                cells.append((ahead + abs(right), ahead, right, p, obj))
        cells.sort(key=lambda c: c[:3])
        base = [f"{o.color} {o.type}" for *_, o in cells]
        out, counts = [], {}
        for b, (_, ahead, right, p, obj) in zip(base, cells, strict=True):
            counts[b] = counts.get(b, 0) + 1
            name = f"{b} {counts[b]}" if base.count(b) > 1 else b
            text = name
            if obj.type == "door":
                state = "locked" if obj.is_locked else "open" if obj.is_open else "closed"
                text = f"{state} {name}"
            out.append(Seen(name, text, p, obj.type, ahead, right))
        return out

    def _wall_distances(self) -> list[str]:
        """Nearest wall straight ahead, to the left and to the right, when in view."""
        visible = {(a, r): p for a, r, p in self._view()}
        out = []
        for label, step in (
            ("ahead", (1, 0)),
            ("to your left", (0, -1)),
            ("to your right", (0, 1)),
        ):
            for k in range(1, self.env.agent_view_size):
                p = visible.get((step[0] * k, step[1] * k))
                cell = None if p is None else self.env.grid.get(*p)
                if p is None or (cell is not None and cell.type != "wall"):
                    break
                if cell is not None:
                    out.append(f"{_steps(k)} {label}")
                    break
        return out

    def describe(self) -> str:
        lines = []
        objects = self.visible_objects()
        if objects:
            lines.append("You see:")
            for o in objects:
                where = []
                if o.ahead:
                    where.append(f"{_steps(o.ahead)} ahead")
                if o.right:
                    side = "right" if o.right > 0 else "left"
                    where.append(f"{_steps(abs(o.right))} to your {side}")
                lines.append(f"- {o.text}: {' and '.join(where)}")
        else:
            lines.append("You see no objects.")
        walls = self._wall_distances()
        lines.append("Walls: " + ", ".join(walls) + "." if walls else "No wall in sight.")
        carrying = self.env.carrying
        lines.append(
            f"You are carrying a {carrying.color} {carrying.type}."
            if carrying
            else "You are not carrying anything."
        )
        return "\n".join(lines)

    # ----- planning over the seen grid -----
    def _passable(self, p: tuple[int, int]) -> bool:
        if not self._in_grid(*p) or not self._seen_mask[p]:
            return False
        cell = self.env.grid.get(*p)
        return cell is None or cell.can_overlap()

    def _search(self) -> dict[State, tuple[State, int, int] | None]:
        """Breadth-first search over (x, y, heading) from the agent: state -> (parent, action,
        number of primitive actions), None for the start."""
        ax, ay = self.env.agent_pos
        start: State = (int(ax), int(ay), int(self.env.agent_dir))
        tree: dict[State, tuple[State, int, int] | None] = {start: None}
        queue = deque([(start, 0)])
        while queue:
            state, depth = queue.popleft()
            x, y, d = state
            dx, dy = DIR_TO_VEC[d]
            for action, nxt in (
                (FORWARD, (x + dx, y + dy, d)),
                (LEFT, (x, y, (d - 1) % 4)),
                (RIGHT, (x, y, (d + 1) % 4)),
            ):
                if nxt in tree or (action == FORWARD and not self._passable(nxt[:2])):
                    continue
                tree[nxt] = (state, action, depth + 1)
                queue.append((nxt, depth + 1))
        return tree

    @staticmethod
    def _path(tree, goal_states: Sequence[State]) -> list[int] | None:
        """Primitive actions to the nearest reachable goal state, or None."""
        reachable = [g for g in goal_states if g in tree]
        if not reachable:
            return None
        state = min(reachable, key=lambda g: 0 if tree[g] is None else tree[g][2])
        path = []
        while tree[state] is not None:
            state, action, _ = tree[state]
            path.append(action)
        return path[::-1]

    @staticmethod
    def _facing_states(p: tuple[int, int]) -> list[State]:
        return [(p[0] - dx, p[1] - dy, d) for d, (dx, dy) in enumerate(DIR_TO_VEC)]

    def _compile(self, verb: str, obj: Seen, tree) -> list[int] | str:
        """Primitive actions for `verb obj`, or the reason it cannot be done."""
        if verb == "go through":
            if obj.type != "door":
                return f"You cannot go through the {obj.name}, as it is not a door."
            door = self.env.grid.get(*obj.pos)
            assert isinstance(door, Door)  # `obj` was seen as a door in this very grid
            if not door.is_open:
                return f"You cannot go through the {obj.name}, as it is closed. Toggle it first."
            x, y = obj.pos
            horizontal = self._blocks((x - 1, y)) and self._blocks((x + 1, y))
            ax, ay = self.env.agent_pos
            if horizontal:  # the wall runs east-west: cross north-south
                d = 1 if ay < y else 3
            else:
                d = 0 if ax < x else 2
            path = self._path(tree, [(x, y, d)])
            return (
                f"You cannot go through the {obj.name}, as there is no path leading to it."
                if path is None
                else [*path, FORWARD]
            )
        path = self._path(tree, self._facing_states(obj.pos))
        if path is None:
            return f"You cannot {verb} the {obj.name}, as there is no path leading to it."
        if verb == "pick up":
            if obj.type not in PICKABLE:
                return f"You cannot pick up the {obj.name}."
            if self.env.carrying:
                c = self.env.carrying
                return (
                    f"You cannot pick up the {obj.name}, as you are already carrying a "
                    f"{c.color} {c.type}. Drop it first."
                )
            return [*path, PICKUP]
        return path

    def _blocks(self, p: tuple[int, int]) -> bool:
        cell = self.env.grid.get(*p) if self._in_grid(*p) else None
        return cell is not None and cell.type == "wall"

    # ----- actions -----
    def admissible_actions(self) -> list[str]:
        actions = ["turn left", "turn right"]
        front = self.env.grid.get(*self.env.front_pos)
        if front is None or front.can_overlap():
            actions.append("move forward")
        if front is not None and front.type in ("door", "box"):
            actions.append("toggle")
        if self.env.carrying and front is None:
            actions.append("drop")
        tree = self._search()
        for obj in self.visible_objects():
            for verb in ("go to", "pick up", "go through"):
                prims = self._compile(verb, obj, tree)
                if isinstance(prims, list) and (verb != "go to" or prims):
                    actions.append(f"{verb} {obj.name}")
        return actions

    def _resolve(self, ref: str) -> Seen | str:
        """The visible object `ref` names ("red ball", "ball 2", "closed blue door")."""
        words = [w for w in ref.split() if w not in ("the", "a", "an", "open", "closed", "locked")]
        index = int(words.pop()) if words and words[-1].isdigit() else None
        if not words or words[-1] not in OBJECT_TYPES:
            return f"There is no object called '{ref}'. Name objects by colour and type."
        want_type, want_color = words[-1], " ".join(words[:-1])
        matches = [
            o
            for o in self.visible_objects()
            if o.type == want_type and (not want_color or o.name.split()[0] == want_color)
        ]
        if index is not None:
            matches = [o for o in matches if o.name.endswith(f" {index}")] or (
                matches if index == 1 and len(matches) == 1 else []
            )
        if not matches:
            return f"You cannot see any {ref} from here."
        return matches[0]

    def _act(self, action: str) -> str:
        simple = {
            "turn left": LEFT,
            "left": LEFT,
            "turn right": RIGHT,
            "right": RIGHT,
            "move forward": FORWARD,
            "forward": FORWARD,
            "go forward": FORWARD,
            "drop": DROP,
            "toggle": TOGGLE,
        }
        if action in simple:
            prim = simple[action]
            self._check_primitive(prim)
            event = self._event(prim)
            self._execute([prim])
            return self._observation(event)
        m = re.fullmatch(r"(go to|pick up|pickup|go through) (.+)", action)
        if m is None:
            raise InvalidAction(UNKNOWN)
        verb = "pick up" if m.group(1) == "pickup" else m.group(1)
        obj = self._resolve(m.group(2))
        if isinstance(obj, str):
            raise InvalidAction(obj)
        prims = self._compile(verb, obj, self._search())
        if isinstance(prims, str):
            raise InvalidAction(prims)
        # Already facing the object: a no-op primitive lets the mission verifier see it.
        self._execute(prims or [DONE])
        return self._observation(f"You {verb} the {obj.name}.")

    def _check_primitive(self, prim: int) -> None:
        front = self.env.grid.get(*self.env.front_pos)
        what = (
            None
            if front is None
            else f"{front.color} {front.type}"
            if front.type != "wall"
            else "wall"
        )
        carrying = self.env.carrying
        if prim == FORWARD and front is not None and not front.can_overlap():
            raise InvalidAction(f"You cannot move forward, as there is a {what} in front of you.")
        if prim == DROP:
            if carrying is None:
                raise InvalidAction("You cannot drop anything, as you are not carrying anything.")
            if front is not None:
                raise InvalidAction(
                    f"You cannot drop the {carrying.color} {carrying.type}, "
                    f"as there is a {what} in front of you."
                )
        if prim == TOGGLE:
            if front is None or front.type not in ("door", "box"):
                raise InvalidAction("There is nothing to toggle in front of you.")
            if (
                isinstance(front, Door)
                and front.is_locked
                and not (
                    carrying is not None
                    and carrying.type == "key"
                    and carrying.color == front.color
                )
            ):
                raise InvalidAction(
                    f"The {what} is locked; you need a {front.color} key to open it."
                )

    def _event(self, prim: int) -> str:
        front, carrying = self.env.grid.get(*self.env.front_pos), self.env.carrying
        if prim == TOGGLE and isinstance(front, Door):
            verb = "close" if front.is_open else "unlock and open" if front.is_locked else "open"
            return f"You {verb} the {front.color} door."
        if prim == TOGGLE:
            assert front is not None  # _check_primitive: a door or a box is in front
            return f"You open the {front.color} box."
        if prim == DROP:
            assert carrying is not None  # _check_primitive: the agent carries something
            return f"You drop the {carrying.color} {carrying.type}."
        return {LEFT: "You turn left.", RIGHT: "You turn right.", FORWARD: "You move forward."}[
            prim
        ]

    def _observation(self, event: str) -> str:
        tail = " The mission is complete." if self._success else ""
        return f"{event}{tail}\n{self.describe()}"

    def _execute(self, prims: Sequence[int]) -> None:
        for prim in prims:
            if self._success or self._ended:
                return
            _, reward, terminated, truncated, _ = self.env.step(prim)
            self._success = bool(terminated and float(reward) > 0)
            self._ended = bool(terminated or truncated)
            self._update_after_primitive()
            if self._bot is not None:
                try:
                    self._bot_next = self._bot.replan(prim)
                except Exception:
                    # The bot asserts on states it did not plan for (it is an advisor, not a
                    # general planner); a fresh bot is built at the next oracle call.
                    self._bot = None

    def _update_after_primitive(self) -> None:
        for _, _, p in self._view():
            self._seen_mask[p] = True
        self._seen_mask[tuple(self.env.agent_pos)] = True
        for k, (leaf, i) in enumerate(self._subgoals):
            if k not in self._achieved and _subgoal_holds(self.env, leaf, i):
                self._achieved.add(k)

    # ----- oracle -----
    def oracle_action(self) -> str:
        try:
            if self._bot is None:
                self._bot = _BoundedBot(self.env)
                self._bot_next = self._bot.replan()
            planned = self._bot_lookahead()
        except BotStuck:
            # The bot can loop forever on rare layouts; look elsewhere and rebuild it.
            self._bot = None
            self.oracle_restarts += 1
            return "turn left"
        tree = self._search()
        best: tuple[int, str] | None = None
        for obj in self.visible_objects():
            for verb in ("go to", "pick up", "go through"):
                prims = self._compile(verb, obj, tree)
                if (
                    isinstance(prims, list)
                    and len(prims) > 1
                    and prims == planned[: len(prims)]
                    and (best is None or len(prims) > best[0])
                ):
                    best = (len(prims), f"{verb} {obj.name}")
        if best is not None:
            return best[1]
        first = planned[0]
        if first == PICKUP:
            front = tuple(self.env.front_pos)
            return "pick up " + next(o.name for o in self.visible_objects() if o.pos == front)
        if first not in PRIMITIVE_TEXT:
            raise RuntimeError(f"the BabyAI bot has no move left on {self.name}")
        return PRIMITIVE_TEXT[first]

    def _bot_lookahead(self, horizon: int = 64) -> list[int]:
        """The bot's next primitives, up to and including its next pick up/drop/toggle."""
        if self._bot is None or self._bot_next is None:
            raise RuntimeError("no bot plan to look ahead on: oracle_action() makes one")
        env, bot = copy.deepcopy((self.env, self._bot))  # together: the bot refers to the env
        action, planned = self._bot_next, []
        for _ in range(horizon):
            planned.append(int(action))
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated or action in (PICKUP, DROP, TOGGLE, DONE):
                break
            action = bot.replan(action)
        return planned

    # ----- task lists -----
    @classmethod
    def tasks(
        cls,
        levels: Sequence[str] = DEFAULT_LEVELS,
        num_per_level: int = 10,
        seed: int = 0,
    ) -> list[dict[str, Any]]:
        """`num_per_level` seeded instances of each level (seeds are disjoint across `seed`)."""
        return [
            dict(level=level, seed=seed * 1_000_003 + i, name=f"{level}/s{seed}-{i:03d}")
            for level in levels
            for i in range(num_per_level)
        ]


class BotStuck(RuntimeError):
    pass


class _BoundedBot(BabyAIBot):
    """minigrid's BabyAI bot with a cap on path searches per decision.

    On a few layouts (e.g. BabyAI-UnlockToUnlock-v0, seed 4) the bot's `replan` never returns;
    the cap turns that into `BotStuck`.
    """

    max_searches_per_replan = 500

    def replan(self, action_taken: int | None = None) -> int:
        self._searches = 0
        action = super().replan(action_taken)
        assert action is not None  # minigrid's replan falls back on `done`, never None
        return action

    def _shortest_path(self, *args, **kwargs):
        self._searches = getattr(self, "_searches", 0) + 1
        if self._searches > self.max_searches_per_replan:
            raise BotStuck("the BabyAI bot is replanning in a loop")
        return super()._shortest_path(*args, **kwargs)


# ----- the subgoal progress measure -----
def _leaves(instr) -> list:
    if hasattr(instr, "instr_a"):
        return _leaves(instr.instr_a) + _leaves(instr.instr_b)
    return [instr]


def _num_subgoals(leaf) -> int:
    return 1 if isinstance(leaf, GoToInstr) else 2


def _facing(env, desc) -> bool:
    front = env.grid.get(*env.front_pos)
    return front is not None and any(front is o for o in desc.obj_set)


def _subgoal_holds(env, leaf, i: int) -> bool:
    if isinstance(leaf, GoToInstr) or (isinstance(leaf, (PickupInstr, OpenInstr)) and i == 0):
        return _facing(env, leaf.desc)
    if isinstance(leaf, PickupInstr):
        return any(env.carrying is o for o in leaf.desc.obj_set)
    if isinstance(leaf, OpenInstr):
        return any(d.is_open for d in leaf.desc.obj_set)
    if isinstance(leaf, PutNextInstr):
        if i == 0:
            return any(env.carrying is o for o in leaf.desc_move.obj_set)
        return any(
            env.carrying is not a
            and a.cur_pos is not None
            and b.cur_pos is not None
            and pos_next_to(a.cur_pos, b.cur_pos)
            for a in leaf.desc_move.obj_set
            for b in leaf.desc_fixed.obj_set
        )
    raise TypeError(f"unknown BabyAI instruction {type(leaf).__name__}")
