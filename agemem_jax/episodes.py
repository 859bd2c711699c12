"""Three-stage AgeMem episodes (spec section 4), run batched: B tasks x K rollouts in lock-step.

Stage 1 (LTM construction): the contextual information arrives one message per turn; each
message is first used as a retrieval query against the agent's own store (introspective
retrieval) and the hits, then the message, enter the context. The agent acts (tool calls) until
its `<answer>` closes the turn. Stage 2 (STM under distractors): the context is reset, long-term
memory kept, and one distractor arrives per turn. Stage 3 (integrated reasoning): the query is
appended to the stage-2 context and the agent has T3 actions to answer.

A turn is a sequence of actions ending on `<answer>` or after `max_actions_per_turn` **(ours:
the spec leaves the per-turn bound open)**. Every action is one `Step`: the exact prompt ids the
policy saw and the action ids it produced, which is what GRPO trains on, one row per step.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from agemem_jax import methods
from agemem_jax import tools as T
from agemem_jax.data import Task
from agemem_jax.judges import Judge, JudgeRequest
from agemem_jax.memory_env import MemoryEnv
from agemem_jax.policies import Action, AgentView, Policy
from agemem_jax.rewards import EpisodeFacts, Reward, RewardConfig, compute_rewards

HOTPOTQA_INSTRUCTIONS = """\
You are a helpful assistant with a long-term memory store and a short-term context. The \
conversation comes in three parts. First, a user chats with you and shares information: store \
what may matter later with Add_memory (the question is not known yet). Then the context is \
cleared and unrelated material arrives: keep the context clean with Filter_context and \
Summary_context. Finally a question comes: use Retrieve_memory to recall what you stored and \
give a short final answer inside <answer></answer>. While the conversation goes on, reply \
<answer>Noted.</answer> once you have handled a message."""


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """Shape of an episode. T1 and T2 are message counts, T3 the actions allowed in stage 3."""

    t1: int = 4
    t2: int = 4
    t3: int = 4
    max_actions_per_turn: int = 3
    n_max: int = 30  # rounds (actions) before the round penalty applies
    introspective_top_k: int = 3
    instructions: str = HOTPOTQA_INSTRUCTIONS

    @classmethod
    def from_any(cls, cfg: Mapping[str, Any] | EpisodeConfig | None = None, **overrides):
        if isinstance(cfg, EpisodeConfig):
            cfg = dataclasses.asdict(cfg)
        values = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg or {})) | overrides
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown episode settings {unknown}")
        out = cls(**values)
        if min(out.t1, out.t3, out.max_actions_per_turn) < 1 or out.t2 < 0:
            raise ValueError(
                "episode needs t1, t3, max_actions_per_turn >= 1 and t2 >= 0; got "
                f"t1={out.t1}, t2={out.t2}, t3={out.t3}, max_actions_per_turn={out.max_actions_per_turn}"
            )
        return out


# Call errors that are protocol violations in the spec's sense (unknown tool, missing or bad
# argument), counted with parse errors in `format_error_rate`.
FORMAT_ERROR_CODES = frozenset({"unknown_tool", "bad_args"})


@dataclasses.dataclass
class Call:
    name: str
    arguments: dict[str, Any]
    ok: bool
    result: dict[str, Any]
    code: str | None = None  # memory_env.ERROR_CODES entry when not ok


@dataclasses.dataclass
class Step:
    """One policy action: an experience row (prompt -> action) with what it did."""

    stage: int
    turn: int
    prompt_ids: np.ndarray  # int32: the full context the policy saw
    action_ids: np.ndarray  # int32: the policy's tokens (the only loss-bearing ones)
    logprobs: np.ndarray | None  # raw-model log-probs of action_ids (π_old), model policy only
    text: str
    calls: list[Call]
    error: str | None
    answer: str | None
    finish_reason: str

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def format_error(self) -> bool:
        return self.error is not None or any(c.code in FORMAT_ERROR_CODES for c in self.calls)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "turn": self.turn,
            "prompt_tokens": self.prompt_tokens,
            "action_tokens": len(self.action_ids),
            "text": self.text,
            "calls": [dataclasses.asdict(c) for c in self.calls],
            "error": self.error,
            "answer": self.answer,
            "finish_reason": self.finish_reason,
        }


@dataclasses.dataclass
class Trajectory:
    task: Task
    rollout: int
    env: MemoryEnv
    steps: list[Step] = dataclasses.field(default_factory=list)
    answer: str | None = None
    answer_context_tokens: int = 0
    answer_context_text: str = ""
    reward: Reward | None = None
    memory_quality: float | None = None

    def calls(self, name: str | None = None, stage: int | None = None, ok: bool | None = None):
        for s in self.steps:
            if stage is not None and s.stage != stage:
                continue
            for c in s.calls:
                if (name is None or c.name == name) and (ok is None or c.ok == ok):
                    yield c

    def facts(self, cfg: EpisodeConfig, t_max: int) -> EpisodeFacts:
        reduced = any(
            rec.ok and rec.name in (T.SUMMARY, T.FILTER) and rec.tokens_before < t_max
            for rec in self.env.stats.records
        )
        retrieved = [
            r["content"]
            for c in self.calls(T.RETRIEVE, ok=True)
            for r in c.result.get("results", [])
        ]
        last = self.steps[-1] if self.steps else None
        return EpisodeFacts(
            question=self.task.question,
            gold_answer=self.task.answer,
            supporting_facts=self.task.supporting_facts,
            answer=self.answer,
            context_tokens=self.answer_context_tokens or (last.prompt_tokens if last else 0),
            t_max=t_max,
            context_text=self.answer_context_text or self.context_text(),
            reduced_before_limit=reduced,
            added_entries=[c.arguments["content"] for c in self.calls(T.ADD, stage=1, ok=True)],
            maintained=any(True for c in self.calls(ok=True) if c.name in (T.UPDATE, T.DELETE)),
            retrieved=retrieved,
            rounds=len(self.steps),
            n_max=cfg.n_max,
            token_usage=self.env.stm.peak_tokens,
        )

    def context_text(self) -> str:
        return "\n".join(m.text for m in self.env.stm.messages)

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task.id,
            "rollout": self.rollout,
            "question": self.task.question,
            "gold_answer": self.task.answer,
            "answer": self.answer,
            "reward": self.reward.as_dict() if self.reward else None,
            "memory_quality": self.memory_quality,
            "memory": [e.content for e in self.env.ltm.entries()],
            "tool_stats": self.env.metrics(),
            "steps": [s.to_json() for s in self.steps],
        }


def _results(obs_text: str) -> dict[str, Any]:
    try:
        out = json.loads(obs_text)
    except json.JSONDecodeError:
        return {}
    return out if isinstance(out, dict) else {}


def _hits(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": r.get("memory_id"),
            "content": r.get("content", ""),
            "metadata": r.get("metadata", {}),
        }
        for r in result.get("results", []) or []
    ]


class _Rollout:
    """Mutable state of one rollout while its episode runs."""

    def __init__(self, traj: Trajectory, row: int):
        self.traj = traj
        self.row = row
        self.env = traj.env
        self.open = False
        self.turn_step = 0
        self.retrieved: list[dict[str, Any]] = []
        self.last_error: str | None = None


class EpisodeRunner:
    """Runs batches of three-stage episodes for any `Policy`.

    `make_env()` returns a fresh `MemoryEnv` (empty store); the K rollouts of a task fork it, so
    they start from one snapshot. `encode_action(text)` turns a text-only action (scripted,
    random) into ids, as the tokenizer would. `method` (methods.py) decides how injected
    messages enter the context and whether stage 2 starts from a fresh one.
    """

    def __init__(
        self,
        make_env: Callable[[], MemoryEnv],
        config: EpisodeConfig | Mapping | None = None,
        stop_id: int | None = None,
        method: str | methods.MethodSpec = "agemem",
    ):
        self.make_env = make_env
        self.cfg = EpisodeConfig.from_any(config)
        self.stop_id = stop_id
        self.method = methods.method_spec(method)

    # ------------------------------------------------------------------------------ running
    def run(
        self, tasks: Sequence[Task], policy: Policy, group_size: int = 1, seed: int = 0
    ) -> list[Trajectory]:
        """Episodes of `tasks` x `group_size` rollouts; `seed` reaches the policy's sampler."""
        cfg = self.cfg
        rollouts: list[_Rollout] = []
        for task in tasks:
            base = self.make_env()
            for k in range(group_size):
                env = base.fork() if k else base
                rollouts.append(_Rollout(Trajectory(task, k, env), len(rollouts)))

        if hasattr(policy, "begin"):
            policy.begin(len(rollouts), seed)
        instructions = self.method.hotpotqa_instructions or cfg.instructions
        system = rollouts[0].env.system_prompt(instructions) if rollouts else ""
        # Stage 1: LTM construction with introspective retrieval.
        self._stage_start(rollouts, "1", system, reset=True)
        for turn in range(cfg.t1):
            for r in rollouts:
                msg = r.traj.task.conversation[turn]
                self._inject(r, msg, introspect_k=cfg.introspective_top_k)
            self._turn(rollouts, policy, 1, turn, cfg.max_actions_per_turn, turn == cfg.t1 - 1)
        # Stage 2: a fresh context (unless the method keeps one), one distractor per turn.
        self._stage_start(rollouts, "2", system, reset=self.method.reset_context)
        for turn in range(cfg.t2):
            for r in rollouts:
                self._inject(r, r.traj.task.distractors[turn])
            self._turn(rollouts, policy, 2, turn, cfg.max_actions_per_turn, turn == cfg.t2 - 1)
        # Stage 3: the query joins the stage-2 context; Filter/Summary never remove it.
        self._stage_start(rollouts, "3", system, reset=False)
        for r in rollouts:
            self._inject(r, r.traj.task.question, protected=True)
        self._turn(rollouts, policy, 3, 0, cfg.t3, True)
        return [r.traj for r in rollouts]

    def _inject(self, r: _Rollout, text: str, protected: bool = False, introspect_k: int = 0):
        """The method's hook for an injected message; what it retrieved is this turn's hits."""
        shown = methods.inject(
            r.env, self.method, text, protected=protected, introspect_k=introspect_k
        )
        r.retrieved = _hits(_results(shown.text)) if shown is not None else []

    def _stage_start(self, rollouts, stage: str, system: str, reset: bool) -> None:
        for r in rollouts:
            r.env.stage = stage
            if reset:
                r.env.reset_context(system)

    def _turn(self, rollouts, policy, stage: int, turn: int, max_actions: int, last: bool):
        for r in rollouts:
            r.open, r.turn_step, r.last_error = True, 0, None
        for _ in range(max_actions):
            active = [r for r in rollouts if r.open]
            if not active:
                break
            views = [self._view(r, stage, turn, last) for r in active]
            actions = policy.act(views)
            if len(actions) != len(active):
                raise RuntimeError(
                    f"{policy.name} returned {len(actions)} actions for {len(active)}"
                )
            for r, view, action in zip(active, views, actions, strict=True):
                self._apply(r, view, action, stage, turn)
        for r in rollouts:
            r.open = False

    def _view(self, r: _Rollout, stage: int, turn: int, last: bool) -> AgentView:
        task = r.traj.task
        incoming = (
            task.conversation[turn]
            if stage == 1
            else task.distractors[turn]
            if stage == 2
            else task.question
        )
        ids = r.env.stm.render().ids
        return AgentView(
            row=r.row,
            rollout=r.traj.rollout,
            task=task,
            stage=stage,
            turn=turn,
            turn_step=r.turn_step,
            incoming=incoming,
            last_turn_of_stage=last,
            retrieved=tuple(r.retrieved),
            last_error=r.last_error,
            prompt_ids=tuple(int(i) for i in ids),
            context_tokens=len(ids),
        )

    def _apply(self, r: _Rollout, view: AgentView, action: Action, stage: int, turn: int) -> None:
        ids, result, records = step_env(r.env, action, self.stop_id)
        calls = []
        for call, obs, rec in zip(
            result.turn.tool_calls, result.observations, records, strict=False
        ):
            res = _results(obs.text)
            calls.append(Call(call["name"], call["arguments"], rec.ok, res, rec.code))
            if call["name"] == T.RETRIEVE:
                r.retrieved += _hits(res)
        step = Step(
            stage=stage,
            turn=turn,
            prompt_ids=np.asarray(view.prompt_ids, np.int32),
            action_ids=ids,
            logprobs=None if action.logprobs is None else np.asarray(action.logprobs, np.float32),
            text=action.text,
            calls=calls,
            error=result.turn.error,
            answer=result.answer,
            finish_reason=action.finish_reason,
        )
        r.traj.steps.append(step)
        r.turn_step += 1
        r.last_error = result.turn.error
        if result.done:
            r.open = False
            if stage == 3:
                r.traj.answer = result.answer
                r.traj.answer_context_tokens = view.context_tokens
                r.traj.answer_context_text = r.traj.context_text()


def step_env(env: MemoryEnv, action: Action, stop_id: int | None):
    """Run one action in the memory environment: (action ids, StepResult, its call records).

    A text-only action (scripted, random, oracle) is tokenized here as the tokenizer would, and
    ends with `stop_id` as a sampled turn would; a model action keeps its sampled ids.
    """
    if action.token_ids is not None:
        ids = np.asarray(action.token_ids, np.int32)
    else:
        ids = np.asarray(env.chat.encode(action.text), np.int32)
        if stop_id is not None:
            ids = np.append(ids, np.int32(stop_id))
    n_records = len(env.stats.records)
    result = env.step(ids, action.text)
    return ids, result, env.stats.records[n_records:]


def score(
    trajectories: Sequence[Trajectory],
    judge: Judge,
    episode_cfg: EpisodeConfig,
    reward_cfg: RewardConfig,
) -> None:
    """Fill each trajectory's reward and memory quality (batched judge calls)."""
    if not trajectories:
        return
    t_max = trajectories[0].env.config.t_max
    facts = [t.facts(episode_cfg, t_max) for t in trajectories]
    for t, reward in zip(trajectories, compute_rewards(facts, judge, reward_cfg), strict=True):
        t.reward = reward
    requests = [
        JudgeRequest(
            kind="memory",
            question=t.task.question,
            answer=t.task.answer,
            entries=tuple(e.content for e in t.env.ltm.entries()),
            facts=t.task.supporting_facts,
        )
        for t in trajectories
    ]
    for t, mq in zip(trajectories, judge.score(requests), strict=True):
        t.memory_quality = mq


def summarize(trajectories: Sequence[Trajectory], judge_name: str = "rule") -> dict[str, Any]:
    """The evaluation table: J, MQ, TN, TC (+ per tool), reward and its components, rates."""
    n = len(trajectories)
    if n == 0:
        return {"episodes": 0}
    steps = [s for t in trajectories for s in t.steps]
    by_name = Counter({name: 0 for name in T.TOOL_NAMES})
    for t in trajectories:
        for c in t.calls():
            by_name[c.name] += 1
    rewards = [t.reward for t in trajectories if t.reward is not None]
    components = {}
    if rewards:
        for key in rewards[0].as_dict():
            components[key] = float(np.mean([r.as_dict()[key] for r in rewards]))
    task_scores = [
        r.task if t.answer is not None else 0.0 for t, r in zip(trajectories, rewards, strict=False)
    ]
    return {
        "episodes": n,
        "judge": judge_name,
        "judge_score": float(np.mean(task_scores)) if task_scores else 0.0,
        "memory_quality": float(np.mean([t.memory_quality or 0.0 for t in trajectories])),
        "prompt_tokens": float(np.mean([s.prompt_tokens for s in steps])) if steps else 0.0,
        "tool_calls": sum(by_name.values()) / n,
        "tool_calls_by_name": {k: v / n for k, v in sorted(by_name.items())},
        "reward": components.get("total", 0.0),
        "reward_components": components,
        "format_error_rate": (sum(s.format_error for s in steps) / len(steps)) if steps else 0.0,
        "answered_rate": sum(t.answer is not None for t in trajectories) / n,
        "steps_per_episode": len(steps) / n,
    }
