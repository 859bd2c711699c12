"""The one text interface every evaluation benchmark speaks.

An environment is one task: it gives a task description, text observations, the admissible
actions where the benchmark has them, and `step(action_text) -> StepResult(observation, done,
score)`. Step counting, the AgentBoard step limit (30 by default), the "check valid actions"
meta action and the bookkeeping of invalid actions live here, so each benchmark module only
implements its own dynamics, rendering and oracle.

An action the benchmark rejects is answered with the benchmark's own style of error text and
counted in `invalid_actions`; it never raises. Model output is arbitrary text, so this is the
contract the episode runner relies on.
"""

from __future__ import annotations

import abc
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Metric = Literal["success_rate", "progress_rate"]

DEFAULT_MAX_STEPS = 30  # AgentBoard's step limit for every benchmark.
CHECK_ACTIONS = ("check valid actions", "check available actions")


class InvalidAction(Exception):
    """Raised by `TextEnv._act` for an action the benchmark rejects.

    The message is the observation the agent sees, written in the benchmark's style.
    """


@dataclass(frozen=True)
class StepResult:
    observation: str
    done: bool
    score: float  # the benchmark's running score in [0, 1] (progress; 1.0 on success)


def normalize_action(text: str) -> str:
    """Lower-case, single-spaced, without wrapping quotes or a trailing full stop."""
    text = " ".join(str(text).split()).lower()
    text = text.strip(" \"'`")
    return text.rstrip(" .!")


class TextEnv(abc.ABC):
    """Base class: one benchmark task behind a text interface.

    Subclasses set `benchmark` and `metric` and implement `_reset`, `_act`, `task`,
    `admissible_actions`, `success`, `progress` and, where the benchmark has one, `oracle_action`.
    """

    benchmark: ClassVar[str]
    metric: ClassVar[Metric]
    empty_action_message: ClassVar[str] = "No action was given. Please check valid actions."

    def __init__(self, max_steps: int = DEFAULT_MAX_STEPS):
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = int(max_steps)
        self.steps = 0
        self.invalid_actions = 0
        self.observation = ""
        self._started = False

    # ----- what a benchmark implements -----
    @classmethod
    def tasks(cls, **kwargs: Any) -> list[dict[str, Any]]:
        """The constructor kwargs of each task of the benchmark's task list (see `envs.tasks`)."""
        raise NotImplementedError(f"{cls.__name__} has no task list")

    @abc.abstractmethod
    def _reset(self) -> str:
        """Start the task from scratch; return the first observation."""

    @abc.abstractmethod
    def _act(self, action: str) -> str:
        """Apply a normalized action and return the observation, or raise `InvalidAction`."""

    @property
    @abc.abstractmethod
    def task(self) -> str:
        """What the agent must achieve, with the action formats it may use."""

    @abc.abstractmethod
    def admissible_actions(self) -> list[str] | None:
        """The actions valid now, or None where the benchmark does not list them."""

    @property
    @abc.abstractmethod
    def success(self) -> bool: ...

    @property
    @abc.abstractmethod
    def progress(self) -> float:
        """The benchmark's partial score in [0, 1], non-decreasing within an episode."""

    def oracle_action(self) -> str:
        """The next action of the benchmark's expert; part of the task's ground truth."""
        raise NotImplementedError(f"{type(self).__name__} has no oracle")

    @property
    def terminated(self) -> bool:
        """Whether the underlying game ended on its own (besides success and the step limit)."""
        return False

    def close(self) -> None:  # noqa: B027  (most benchmarks hold nothing to release)
        """Release external resources (processes, JVMs)."""

    # ----- the interface -----
    def reset(self) -> str:
        self.steps = 0
        self.invalid_actions = 0
        self.observation = self._reset()
        self._started = True
        return self.observation

    @property
    def done(self) -> bool:
        return self.success or self.terminated or self.steps >= self.max_steps

    @property
    def score(self) -> float:
        return 1.0 if self.success else float(self.progress)

    def step(self, action_text: str) -> StepResult:
        if not self._started:
            raise RuntimeError("call reset() before step()")
        if self.done:
            return StepResult("The episode is over.", True, self.score)
        action = normalize_action(action_text)
        self.steps += 1
        if action in CHECK_ACTIONS and self.admissible_actions() is not None:
            observation = self.valid_actions_message()
        else:
            try:
                if not action:
                    raise InvalidAction(self.empty_action_message)
                observation = self._act(action)
            except InvalidAction as e:
                self.invalid_actions += 1
                observation = str(e)
        self.observation = observation
        return StepResult(observation, self.done, self.score)

    def valid_actions_message(self) -> str:
        """The answer to "check valid actions" (a benchmark with thousands may summarize)."""
        actions = self.admissible_actions()
        if actions is None:
            raise NotImplementedError(f"{type(self).__name__} does not list its valid actions")
        return "Valid actions are: " + ", ".join(actions) + "."

    @property
    def metric_value(self) -> float:
        return float(self.success) if self.metric == "success_rate" else self.score

    def metrics(self) -> dict[str, Any]:
        """Per-episode numbers; the benchmark metric appears under its own name as well."""
        return {
            "benchmark": self.benchmark,
            "success": float(self.success),
            "progress": float(self.score),
            self.metric: self.metric_value,
            "steps": self.steps,
            "invalid_actions": self.invalid_actions,
        }

    def __enter__(self) -> TextEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----- policies -----
Policy = Callable[[TextEnv], str]


def oracle_policy(env: TextEnv) -> str:
    return env.oracle_action()


_JUNK_WORDS = ("go", "take", "the", "north", "open", "door", "ball", "use", "look", "xyzzy", "up")


class RandomPolicy:
    """Emits junk text with probability `junk_prob`, else a random admissible action.

    Benchmarks without an action list always get junk or pieces of the task text; this is
    both the "random" baseline and a fuzzer of the text interface.
    """

    def __init__(self, seed: int = 0, junk_prob: float = 0.5):
        if not 0.0 <= junk_prob <= 1.0:
            raise ValueError(f"junk_prob must be in [0, 1], got {junk_prob}")
        self.rng = random.Random(seed)
        self.junk_prob = junk_prob

    def junk(self, env: TextEnv) -> str:
        rng = self.rng
        kind = rng.randrange(5)
        if kind == 0:
            return ""
        if kind == 1:
            n = rng.randint(1, 40)
            return "".join(rng.choice(string.printable) for _ in range(n))
        if kind == 2:
            return " ".join(rng.choice(_JUNK_WORDS) for _ in range(rng.randint(1, 5)))
        words = re.findall(r"[\w-]+", env.task) or ["nothing"]
        if kind == 3:
            return " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        actions = env.admissible_actions() or ["noop"]
        # A valid-looking action cut short or with a wrong argument.
        parts = rng.choice(actions).split()
        return " ".join([*parts[: rng.randint(1, len(parts))], rng.choice(words)])

    def __call__(self, env: TextEnv) -> str:
        actions = env.admissible_actions()
        if not actions or self.rng.random() < self.junk_prob:
            return self.junk(env)
        return self.rng.choice(actions)


def play(env: TextEnv, policy: Policy) -> dict[str, Any]:
    """Reset `env`, act with `policy` until done, and return `env.metrics()`."""
    env.reset()
    while not env.done:
        env.step(policy(env))
    return env.metrics()
