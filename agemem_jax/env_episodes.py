"""Interactive benchmarks (ALFWorld, ScienceWorld, BabyAI, PDDL) played with the memory tools.

The agent speaks the same protocol as in HotpotQA episodes: a turn with `<tool_call>` runs memory
tools (the results come back as tool messages), a turn with `<answer>` carries one environment
action, whose observation comes back as the next user message. Long-term memory persists for the
episode and the short-term context keeps its token budget, so Retrieve/Summary/Filter matter as
episodes grow. At most `max_tool_turns` memory turns may precede an action **(ours)**; past that
the environment gets an empty (invalid) action, so every episode ends within its step limit.
The `method` (methods.py) sets the tools and how each observation enters the context.

A memory baseline (`baseline`, a `baselines.Harness`) plugs in as the environment's memory, in
the spirit of an agent framework's long-term-memory hook: the system ingests the task with the
first observation and then each action with the observation it produced (one ingest per
environment step, batched over the episodes that run together), and before each new
observation enters the context the system's search with that observation is shown as a
retrieval message. The agent has no memory tools; its context keeps its token budget.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from agemem_jax import baselines, methods, prompts
from agemem_jax import envs as envs_lib
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
    system: baselines.MemorySystem | None = None  # a memory baseline's, if any
    memory_entries: tuple[str, ...] = ()  # the baseline's memories at the end (it is closed)

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "task": self.task,
            "spec": {k: str(v) for k, v in self.spec.items()},
            "metrics": self.metrics,
            "memory": list(self.memory_entries)
            if self.system is not None
            else [e.content for e in self.memory.ltm.entries()],
            "tool_stats": self.memory.metrics(),
            "memory_system": None if self.system is None else self.system.stats.to_json(),
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
        baseline: baselines.Harness | None = None,
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
        if self.method.memory_system is not None and baseline is None:
            raise ValueError(
                f"method {self.method.name!r} runs a memory system: pass baseline= "
                "(builders.baseline builds it from the config)"
            )
        self.baseline = baseline if self.method.memory_system is not None else None
        self.instructions = instructions or self.method.env_instructions or prompts.ENV_INSTRUCTIONS

    def run(self, specs: Sequence[Mapping[str, Any]], policy, seed: int = 0) -> list[EnvTrajectory]:
        trajs = []
        for spec in specs:
            env = envs_lib.make(self.bench, dict(spec), max_steps=self.max_steps)
            env.reset()
            mem = self.make_memory()
            mem.stage = "env"
            mem.reset_context(mem.system_prompt(f"{self.instructions}\n\nYour task: {env.task}"))
            t = EnvTrajectory(self.bench, dict(spec), env.task, env, mem)
            if self.baseline is not None:
                t.system = self.baseline.new("environment")
            trajs.append(t)
        try:
            firsts = [
                prompts.BASELINE_ENV_FIRST.format(task=t.task, observation=t.env.observation)
                for t in trajs
            ]
            self._observe(trajs, [t.env.observation for t in trajs], firsts)
            if hasattr(policy, "begin"):
                policy.begin(len(trajs), seed)
            tool_turns = [0] * len(trajs)
            while True:
                active = [i for i, t in enumerate(trajs) if not t.env.done]
                if not active:
                    break
                views = [self._view(i, trajs[i]) for i in active]
                moved: list[tuple[EnvTrajectory, str, str]] = []
                for i, view, action in zip(active, views, policy.act(views), strict=True):
                    tool_turns[i], step = self._apply(trajs[i], view, action, tool_turns[i])
                    if step is not None:
                        moved.append((trajs[i], *step))
                self._observe(
                    [t for t, _, _ in moved],
                    [obs for _, _, obs in moved],
                    [
                        prompts.BASELINE_ENV_STEP.format(action=a, observation=o)
                        for _, a, o in moved
                    ],
                )
        finally:
            for t in trajs:
                t.metrics = self._metrics(t)
                t.env.close()
                if t.system is not None:
                    t.memory_entries = tuple(t.system.memories())
                    t.system.close()
        return trajs

    def _observe(
        self, trajs: Sequence[EnvTrajectory], observations: Sequence[str], records: Sequence[str]
    ) -> None:
        """Bring each new observation into its episode's context, the method's way. A memory
        baseline's recall with the observation comes first (batched), then the observation;
        then the system ingests `records` (batched), skipped for episodes that have ended."""
        if self.baseline is None:
            for t, obs in zip(trajs, observations, strict=True):
                methods.inject(t.memory, self.method, obs)
            return
        systems = [t.system for t in trajs if t.system is not None]
        for t, recalls in zip(trajs, self.baseline.recall(systems, observations), strict=True):
            if recalls:
                results = [{"memory_id": x.id, "content": x.text, "metadata": {}} for x in recalls]
                t.memory.stm.add(
                    "tool",
                    baselines.recall_text(recalls),
                    kind="retrieval",
                    data={"results": results},
                )
        for t, obs in zip(trajs, observations, strict=True):
            t.memory.add_message("user", obs)
        live = [(t.system, r) for t, r in zip(trajs, records, strict=True) if not t.env.done]
        self.baseline.ingest(
            [s for s, _ in live if s is not None], [[("user", r)] for _, r in live]
        )

    def _view(self, i: int, t: EnvTrajectory) -> AgentView:
        ids = t.memory.stm.render().ids
        return AgentView(
            row=i, rollout=0, task=None, stage=0, turn=len(t.steps), turn_step=0,
            incoming=t.env.observation, last_turn_of_stage=False,
            prompt_ids=tuple(int(x) for x in ids), context_tokens=len(ids), env=t.env,
        )  # fmt: skip

    def _apply(
        self, t: EnvTrajectory, view: AgentView, action: Action, tool_turns: int
    ) -> tuple[int, tuple[str, str] | None]:
        """Run one policy turn: (memory turns in a row, (env action, observation) when the
        environment moved). The observation is brought in by `_observe`."""
        _, result, records = step_env(t.memory, action, self.stop_id)
        codes = [r.code for r in records]
        env_action = result.answer
        if env_action is None:
            tool_turns += 1
            if tool_turns <= self.max_tool_turns:
                t.steps.append(self._record(view, action, result, codes, None, None))
                return tool_turns, None
            env_action = ""  # too many memory turns in a row: the environment moves on
        step = t.env.step(env_action.strip())
        t.steps.append(self._record(view, action, result, codes, env_action, step.observation))
        return 0, (env_action.strip(), step.observation)

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
    out.update(baselines.summarize_stats([t.system.stats for t in trajs if t.system is not None]))
    out.update(
        episodes=n,
        bench=trajs[0].bench,
        tool_calls=sum(calls.values()) / n,
        tool_calls_by_name={k: v / n for k, v in sorted(calls.items())},
        format_error_rate=(sum(s["format_error"] for s in turns) / len(turns)) if turns else 0.0,
    )
    return out
