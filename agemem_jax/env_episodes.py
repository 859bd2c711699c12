"""Interactive benchmarks (ALFWorld, ScienceWorld, BabyAI, PDDL) played with the memory tools.

The agent speaks the same protocol as in HotpotQA episodes: a turn with `<tool_call>` runs memory
tools (the results come back as tool messages), a turn with `<answer>` carries one environment
action, whose observation comes back as the next user message. Long-term memory persists for the
episode and the short-term context keeps its token budget, so Retrieve/Summary/Filter matter as
episodes grow. At most `max_tool_turns` memory turns may precede an action **(ours)**; past that
the environment gets an empty (invalid) action, so every episode ends within its step limit.
The `method` (methods.py) sets the tools and how each observation enters the context.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from agemem_jax import envs as envs_lib
from agemem_jax import methods, prompts
from agemem_jax import tools as T
from agemem_jax.episodes import FORMAT_ERROR_CODES, step_env
from agemem_jax.memory_env import MemoryEnv
from agemem_jax.policies import Action, AgentView


@dataclasses.dataclass
class EnvTrajectory:
    bench: str
    spec: dict[str, Any]
    task: str
    env: Any  # the TextEnv (closed after the run)
    memory: MemoryEnv
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "task": self.task,
            "spec": {k: str(v) for k, v in self.spec.items()},
            "metrics": self.metrics,
            "memory": [e.content for e in self.memory.ltm.entries()],
            "tool_stats": self.memory.metrics(),
            "steps": self.steps,
        }


class EnvEpisodeRunner:
    def __init__(
        self,
        bench: str,
        make_memory: Callable[[], MemoryEnv],
        *,
        max_tool_turns: int = 3,
        max_steps: int = envs_lib.DEFAULT_MAX_STEPS,
        stop_id: int | None = None,
        instructions: str | None = None,
        method: str | methods.MethodSpec = "agemem",
    ):
        if bench not in envs_lib.REGISTRY:
            raise ValueError(
                f"unknown benchmark {bench!r}; choose one of {sorted(envs_lib.REGISTRY)}"
            )
        if max_tool_turns < 0:
            raise ValueError(f"max_tool_turns must be >= 0, got {max_tool_turns}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.bench = bench
        self.max_steps = max_steps  # environment actions per episode (AgentBoard: 30)
        self.make_memory = make_memory
        self.max_tool_turns = max_tool_turns
        self.stop_id = stop_id
        self.method = methods.method_spec(method)
        self.instructions = instructions or self.method.env_instructions or prompts.ENV_INSTRUCTIONS

    def run(self, specs: Sequence[Mapping[str, Any]], policy, seed: int = 0) -> list[EnvTrajectory]:
        trajs = []
        for spec in specs:
            env = envs_lib.make(self.bench, dict(spec), max_steps=self.max_steps)
            first = env.reset()
            mem = self.make_memory()
            mem.stage = "env"
            mem.reset_context(mem.system_prompt(f"{self.instructions}\n\nYour task: {env.task}"))
            methods.inject(mem, self.method, first)
            trajs.append(EnvTrajectory(self.bench, dict(spec), env.task, env, mem))
        if hasattr(policy, "begin"):
            policy.begin(len(trajs), seed)
        tool_turns = [0] * len(trajs)
        try:
            while True:
                active = [i for i, t in enumerate(trajs) if not t.env.done]
                if not active:
                    break
                views = [self._view(i, trajs[i]) for i in active]
                for i, view, action in zip(active, views, policy.act(views), strict=True):
                    tool_turns[i] = self._apply(trajs[i], view, action, tool_turns[i])
        finally:
            for t in trajs:
                t.metrics = self._metrics(t)
                t.env.close()
        return trajs

    def _view(self, i: int, t: EnvTrajectory) -> AgentView:
        ids = t.memory.stm.render().ids
        return AgentView(
            row=i, rollout=0, task=None, stage=0, turn=len(t.steps), turn_step=0,
            incoming=t.env.observation, last_turn_of_stage=False,
            prompt_ids=tuple(int(x) for x in ids), context_tokens=len(ids), env=t.env,
        )  # fmt: skip

    def _apply(self, t: EnvTrajectory, view: AgentView, action: Action, tool_turns: int) -> int:
        _, result, records = step_env(t.memory, action, self.stop_id)
        codes = [r.code for r in records]
        env_action = result.answer
        if env_action is None:
            tool_turns += 1
            if tool_turns <= self.max_tool_turns:
                t.steps.append(self._record(view, action, result, codes, None, None))
                return tool_turns
            env_action = ""  # too many memory turns in a row: the environment moves on
        step = t.env.step(env_action.strip())
        methods.inject(t.memory, self.method, step.observation)
        t.steps.append(self._record(view, action, result, codes, env_action, step.observation))
        return 0

    @staticmethod
    def _record(view, action, result, codes, env_action, observation) -> dict[str, Any]:
        return {
            "prompt_tokens": view.context_tokens,
            "text": action.text,
            "calls": [c["name"] for c in result.turn.tool_calls],
            "error": result.turn.error,
            "format_error": result.turn.error is not None
            or any(c in FORMAT_ERROR_CODES for c in codes),
            "env_action": env_action,
            "observation": observation,
        }

    @staticmethod
    def _metrics(t: EnvTrajectory) -> dict[str, Any]:
        m = dict(t.env.metrics())
        m["policy_turns"] = len(t.steps)
        m["format_errors"] = sum(s["format_error"] for s in t.steps)
        m["prompt_tokens"] = (
            float(np.mean([s["prompt_tokens"] for s in t.steps])) if t.steps else 0.0
        )
        return m


def summarize(trajs: Sequence[EnvTrajectory]) -> dict[str, Any]:
    n = len(trajs)
    if not n:
        return {"episodes": 0}
    turns = [s for t in trajs for s in t.steps]
    calls = Counter({name: 0 for name in T.TOOL_NAMES})
    for s in turns:
        calls.update(s["calls"])
    numeric = [k for k, v in trajs[0].metrics.items() if isinstance(v, int | float)]
    out: dict[str, Any] = {
        k: float(np.mean([t.metrics.get(k, 0.0) for t in trajs])) for k in numeric
    }
    out.update(
        episodes=n,
        bench=trajs[0].bench,
        tool_calls=sum(calls.values()) / n,
        tool_calls_by_name={k: v / n for k, v in sorted(calls.items())},
        format_error_rate=(sum(s["format_error"] for s in turns) / len(turns)) if turns else 0.0,
    )
    return out
