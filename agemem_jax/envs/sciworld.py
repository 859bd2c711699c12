"""ScienceWorld (scienceworld==1.2.3) tasks as text games.

The package ships its simulator as a jar and talks to it over py4j; it runs on the machine's
Java 17. A JVM takes ~3 s to start and ~600 MB, so JVMs live in a bounded pool (`POOL`, 2 by
default) and are reused across tasks: an environment takes one on `reset()` and gives it back
on `close()`; all are shut down at exit.

Observations and error texts are the simulator's own ("No known action matches that input.").
An ambiguous command is resolved to its first reading, as AgentBoard does. Score: the native
0-100 task score; `progress` is its running maximum / 100 (negative scores, which mark a failed
task, count as 0), success is a score of 100. The oracle replays the simulator's gold action
sequence, which is valid from the start of the episode while the agent stays on it.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any, ClassVar

from scienceworld import ScienceWorldEnv

from agemem_jax.envs.base import DEFAULT_MAX_STEPS, InvalidAction, TextEnv, normalize_action

NO_MATCH = "No known action matches that input."
# Tasks whose gold paths fit AgentBoard's 30 steps for most variations (measured on variation 0
# with the "easy" simplifications).
DEFAULT_TASKS = (
    "find-animal",
    "find-living-thing",
    "find-non-living-thing",
    "find-plant",
    "chemistry-mix",
    "chemistry-mix-paint-secondary-color",
    "chemistry-mix-paint-tertiary-color",
    "lifespan-longest-lived",
    "lifespan-shortest-lived",
    "lifespan-longest-lived-then-shortest-lived",
    "identify-life-stages-2",
    "power-component",
    "power-component-renewable-vs-nonrenewable-energy",
    "test-conductivity",
    "use-thermometer",
)


class JvmPool:
    """At most `max_jvms` simulators; idle ones are reused by the next environment."""

    def __init__(self, max_jvms: int = 2, acquire_timeout: float = 600.0):
        self.max_jvms, self.acquire_timeout = max_jvms, acquire_timeout
        self._idle: list[ScienceWorldEnv] = []
        self._busy = 0
        self._cond = threading.Condition()

    def acquire(self) -> ScienceWorldEnv:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._idle or self._busy < self.max_jvms, timeout=self.acquire_timeout
            )
            if not ok:
                raise RuntimeError(
                    f"all {self.max_jvms} ScienceWorld JVMs are in use; close() finished "
                    "environments or raise POOL.max_jvms"
                )
            self._busy += 1
            if self._idle:
                return self._idle.pop()
        try:
            return ScienceWorldEnv("", envStepLimit=10**6)  # TextEnv enforces the step limit
        except Exception:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            raise

    def release(self, sim: ScienceWorldEnv) -> None:
        with self._cond:
            self._busy -= 1
            self._idle.append(sim)
            self._cond.notify()

    def close_all(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
        for sim in idle:
            sim.close()


POOL = JvmPool()
atexit.register(POOL.close_all)


class SciWorldEnv(TextEnv):
    """One ScienceWorld task variation.

    Args:
      task_name: a ScienceWorld task (see `DEFAULT_TASKS`, or the simulator's task list).
      variation: the variation index.
      simplification: the simulator's simplification string (AgentBoard: "easy").
      max_steps: step limit (AgentBoard: 30).
      gold_path: have the simulator build the gold path (needed by the oracle; it slows loading
        for a few tasks).
      name: a task id for logs.
    """

    benchmark: ClassVar[str] = "sciworld"
    metric: ClassVar[str] = "success_rate"
    empty_action_message: ClassVar[str] = NO_MATCH

    @classmethod
    def max_concurrent(cls) -> int:
        """Episodes that may be open at once: each holds one JVM of the bounded pool."""
        return POOL.max_jvms

    def __init__(
        self,
        task_name: str,
        variation: int = 0,
        simplification: str = "easy",
        max_steps: int = DEFAULT_MAX_STEPS,
        gold_path: bool = True,
        name: str | None = None,
    ):
        super().__init__(max_steps)
        self.task_name, self.variation = task_name, int(variation)
        self.simplification, self.gold_path = simplification, gold_path
        self.name = name or f"{task_name}/var{variation}"
        self._sim: ScienceWorldEnv | None = None
        self._score, self._best, self._completed = 0, 0, False

    def _reset(self) -> str:
        if self._sim is None:
            self._sim = POOL.acquire()
        self._sim.load(
            self.task_name, self.variation, self.simplification, generateGoldPath=self.gold_path
        )
        self._gold = self._sim.get_gold_action_sequence() if self.gold_path else []
        self._gold_index = 0
        self._score, self._best, self._completed = 0, 0, False
        self._task_description = self._sim.get_task_description()
        observation, _ = self._sim.reset()
        return observation

    def close(self) -> None:
        if self._sim is not None:
            POOL.release(self._sim)
            self._sim = None

    def _live_sim(self) -> ScienceWorldEnv:
        """The simulator this episode holds (between `reset()` and `close()`)."""
        if self._sim is None:
            raise RuntimeError("no simulator: call reset() first (again after close())")
        return self._sim

    def _templates(self) -> list[str]:
        return [t for t in self._live_sim().get_possible_actions() if t != "reset task"]

    @property
    def task(self) -> str:
        templates = ", ".join(self._templates()) if self._sim else ""
        return (
            f"{self._task_description}\nActions (OBJ is an object you can see): {templates}. "
            "You may also say 'check valid actions'."
        )

    def admissible_actions(self) -> list[str]:
        combinations = self._live_sim().get_valid_action_object_combinations()
        return [a for a in combinations if a != "reset task"]

    def valid_actions_message(self) -> str:
        # The full combination list runs to hundreds or thousands; templates stay readable.
        return "Valid actions are: " + ", ".join(self._templates()) + "."

    def _act(self, action: str) -> str:
        if action == "reset task":  # would restart the episode behind the step counter
            raise InvalidAction(NO_MATCH)
        # The package's step() also builds a large info dict. `server` is a py4j proxy of the
        # JVM's PythonInterface, whose methods py4j's types cannot describe.
        server: Any = self._live_sim().server
        observation = server.step(action)
        if observation.startswith("Ambiguous request"):
            observation = server.step("0")
        if observation.strip() == NO_MATCH:
            raise InvalidAction(NO_MATCH)
        gold = self._gold[self._gold_index] if self._gold_index < len(self._gold) else None
        if gold is not None and action == normalize_action(gold):
            self._gold_index += 1
        self._score = round(100 * float(server.getScore()))
        self._best = max(self._best, self._score)
        self._completed = bool(server.getCompleted()) or self._score < 0
        return observation

    @property
    def success(self) -> bool:
        return self._score >= 100

    @property
    def terminated(self) -> bool:
        return self._completed

    @property
    def progress(self) -> float:
        return min(max(self._best, 0), 100) / 100

    def oracle_action(self) -> str:
        if not self.gold_path:
            raise RuntimeError("the oracle needs gold_path=True")
        if self._gold_index >= len(self._gold):
            return "look around"
        return self._gold[self._gold_index]

    @classmethod
    def tasks(
        cls,
        task_names: tuple[str, ...] = DEFAULT_TASKS,
        num_per_task: int = 3,
        split: str = "test",
        simplification: str = "easy",
    ) -> list[dict[str, Any]]:
        """The first `num_per_task` variations of each task from the simulator's `split`."""
        if split not in ("train", "dev", "test"):
            raise ValueError(f"split must be train, dev or test, got {split!r}")
        sim = POOL.acquire()
        try:
            specs = []
            for task_name in task_names:
                sim.load(task_name, 0, simplification)
                variations = getattr(sim, f"get_variations_{split}")()
                specs += [
                    dict(
                        task_name=task_name,
                        variation=int(v),
                        simplification=simplification,
                        name=f"{task_name}/{split}-var{v}",
                    )
                    for v in list(variations)[:num_per_task]
                ]
            return specs
        finally:
            POOL.release(sim)
