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

While the episode runs, each trajectory's `Ledger` records what the reward needs (calls that
shortened the context, when the context first went over budget, peak tokens, stage-1 additions,
retrievals, what was kept at answer time). Scoring (`rewards.score`) reads only that ledger.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from agemem_jax import baselines, methods, prompts
from agemem_jax import tools as T
from agemem_jax.data import Task
from agemem_jax.dataclass_config import build
from agemem_jax.memory_env import TURN, CallRecord, MemoryEnv, StepResult
from agemem_jax.policies import Action, AgentView, Policy
from agemem_jax.rewards import EpisodeFacts, Reward
from agemem_jax.stm import Message


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """Shape of an episode. T1 and T2 are message counts, T3 the actions allowed in stage 3."""

    t1: int = 4  # stage-1 conversation messages (the contextual information I_q)
    t2: int = 4  # stage-2 distractor messages
    t3: int = 4  # stage-3 actions to answer the query
    max_actions_per_turn: int = 3  # actions before a stage-1/2 turn closes (ours)
    # Rounds (policy actions) before the round penalty applies (ours: the spec gives no value).
    # Below `max_rounds` (28 with these defaults), so the penalty can fire, and above the 20
    # actions the scripted expert needs at most.
    n_max: int = 24
    introspective_top_k: int = 3  # stage-1 retrieval of the incoming message (spec: k)
    instructions: str = prompts.HOTPOTQA_INSTRUCTIONS  # task instructions after the tool listing
    max_env_steps: int = 30  # interactive benchmarks: environment actions (AgentBoard's limit)

    def __post_init__(self):
        if min(self.t1, self.t3, self.max_actions_per_turn) < 1 or self.t2 < 0:
            raise ValueError(
                "episode needs t1, t3, max_actions_per_turn >= 1 and t2 >= 0; got "
                f"t1={self.t1}, t2={self.t2}, t3={self.t3}, "
                f"max_actions_per_turn={self.max_actions_per_turn}"
            )
        if self.n_max < 0:
            raise ValueError(f"episode n_max must be >= 0, got {self.n_max}")

    @property
    def max_rounds(self) -> int:
        """The most actions an episode can take; the round penalty needs n_max below it."""
        return (self.t1 + self.t2) * self.max_actions_per_turn + self.t3


# Call errors that are protocol violations in the spec's sense (unknown tool, missing or bad
# argument), counted with parse errors in `format_error_rate`.
FORMAT_ERROR_CODES = frozenset({"unknown_tool", "bad_args"})


@dataclasses.dataclass
class Step:
    """One policy action: an experience row (prompt -> action) with what it did."""

    stage: int
    turn: int
    prompt_ids: np.ndarray  # int32: the full context the policy saw
    action_ids: np.ndarray  # int32: the policy's tokens (the only loss-bearing ones)
    logprobs: np.ndarray | None  # raw-model log-probs of action_ids (π_old), model policy only
    text: str
    calls: list[CallRecord]  # the structured record of every tool call the action made
    error: str | None
    answer: str | None
    finish_reason: str
    sampler_logprobs: np.ndarray | None = None  # log μ of action_ids when μ ≠ π_old (rl_loss)
    # For readers of the trajectory (the viewer), never for the reward: how long-term memory
    # changed since the previous step of this rollout (what the environment injected, e.g. a
    # raw store, shows up at the next step), and what this step's calls removed from the
    # context and the summaries they wrote.
    memory_diff: dict[str, list] = dataclasses.field(default_factory=dict)
    context_edit: dict[str, list[str]] = dataclasses.field(default_factory=dict)

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
            "memory_diff": self.memory_diff,
            "context_edit": self.context_edit,
        }


def memory_snapshot(env: MemoryEnv) -> dict[str, str]:
    """The long-term store as {id: content}, for step-by-step diffs."""
    return {e.id: e.content for e in env.ltm.entries()}


def memory_diff(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, list]:
    """added [id, content], updated [id, old, new], deleted [id, content]; empty when equal."""
    diff = {
        "added": [[i, c] for i, c in after.items() if i not in before],
        "updated": [[i, before[i], c] for i, c in after.items() if i in before and before[i] != c],
        "deleted": [[i, c] for i, c in before.items() if i not in after],
    }
    return {k: v for k, v in diff.items() if v}


def context_edit(before: Sequence[Message], after: Sequence[Message]) -> dict[str, list[str]]:
    """Messages a step removed from the context and the summaries it added (identity compare:
    messages are immutable, so a message still present is the same object)."""
    now, then = set(after), set(before)
    edit = {
        "removed": [m.text for m in before if m not in now],
        "summaries": [m.text for m in after if m not in then and m.kind == "summary"],
    }
    return {k: v for k, v in edit.items() if v}


def kept_text(messages: Sequence[Message]) -> str:
    """What the agent kept in its context, for R_preservation **(ours)**.

    Injected messages still present (conversation, distractors), summaries, and the contents of
    entries retrieved into the context. Left out: the system prompt, the protected query (it
    would vouch for itself), the agent's own turns (copying the query into a thought keeps
    nothing), and other tool observations (they echo the agent's arguments).
    """
    parts = []
    for m in messages:
        if m.kind == "retrieval" and m.data:
            parts += [r["content"] for r in m.data.get("results", ())]
        elif m.kind == "summary" or (m.role == "user" and not m.protected):
            parts.append(m.text)
    return "\n".join(parts)


@dataclasses.dataclass
class Ledger:
    """What the reward needs from one trajectory, recorded while its episode runs.

    rounds: policy actions so far. added: contents of successful stage-1 Add_memory calls.
    maintained: an Update_memory or Delete_memory succeeded. retrieved: contents the agent's
    Retrieve_memory calls returned. reduced_before_limit: a Summary/Filter call shortened the
    context before the context first went over its budget; reduction_fill: the largest share of
    the budget the context held when such a call ran. limit_round: the round after which
    the context had first gone over its budget (None: never). peak_tokens: the most prompt
    tokens of the episode, all stages. answer_tokens: T_used, prompt tokens when the answer was
    generated. last_prompt_tokens: the prompt of the latest action (T_used when no answer).
    kept_text: `kept_text` of the answer-time context.
    """

    t_max: int
    rounds: int = 0
    added: list[str] = dataclasses.field(default_factory=list)
    maintained: bool = False
    retrieved: list[str] = dataclasses.field(default_factory=list)
    reduced_before_limit: bool = False
    reduction_fill: float = 0.0
    limit_round: int | None = None
    peak_tokens: int = 0
    answer_tokens: int | None = None
    last_prompt_tokens: int = 0
    kept_text: str = ""

    def record(self, stage: int, prompt_tokens: int, result: StepResult) -> None:
        """Account for one action and the calls it made."""
        self.rounds += 1
        self.last_prompt_tokens = prompt_tokens
        for rec in result.records:
            if rec.name in (T.SUMMARY, T.FILTER) and rec.reduced and rec.before_limit:
                self.reduced_before_limit = True
                self.reduction_fill = max(self.reduction_fill, rec.tokens_before / self.t_max)
            if not rec.ok:
                continue
            if rec.name == T.ADD and stage == 1:
                self.added.append(rec.arguments["content"])
            elif rec.name in (T.UPDATE, T.DELETE):
                self.maintained = True
            elif rec.name == T.RETRIEVE:
                self.retrieved += [r["content"] for r in rec.result["results"]]
        self.peak_tokens = max(self.peak_tokens, result.peak_tokens)
        if result.limit_hit and self.limit_round is None:
            self.limit_round = self.rounds


@dataclasses.dataclass
class Trajectory:
    task: Task
    rollout: int
    env: MemoryEnv
    steps: list[Step] = dataclasses.field(default_factory=list)
    answer: str | None = None
    ledger: Ledger = dataclasses.field(init=False)  # sized to the environment's budget
    # The entries left in long-term memory at the end (for MQ), recorded by the runner.
    memory_entries: tuple[str, ...] = ()
    reward: Reward | None = None
    memory_quality: float | None = None
    # A memory baseline's statistics (LLM calls, tokens, latencies, parse failures); None for
    # methods without one.
    memory_stats: baselines.SystemStats | None = None

    def __post_init__(self):
        self.ledger = Ledger(t_max=self.env.config.t_max)

    def calls(self, name: str | None = None, stage: int | None = None, ok: bool | None = None):
        for s in self.steps:
            if stage is not None and s.stage != stage:
                continue
            for c in s.calls:
                if (name is None or c.name == name) and (ok is None or c.ok == ok):
                    yield c

    def facts(self, n_max: int) -> EpisodeFacts:
        """The reward's input, from the ledger alone."""
        led = self.ledger
        used = led.answer_tokens if led.answer_tokens is not None else led.last_prompt_tokens
        return EpisodeFacts(
            question=self.task.question,
            gold_answer=self.task.answer,
            supporting_facts=self.task.supporting_facts,
            answer=self.answer,
            context_tokens=used,
            t_max=led.t_max,
            kept_text=led.kept_text,
            reduced_before_limit=led.reduced_before_limit,
            reduction_fill=led.reduction_fill,
            added_entries=tuple(led.added),
            maintained=led.maintained,
            retrieved=tuple(led.retrieved),
            rounds=led.rounds,
            n_max=n_max,
            token_usage=led.peak_tokens,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task.id,
            "rollout": self.rollout,
            "question": self.task.question,
            "gold_answer": self.task.answer,
            "answer": self.answer,
            "reward": self.reward.as_dict() if self.reward else None,
            "memory_quality": self.memory_quality,
            "memory": list(self.memory_entries)
            if self.memory_stats is not None
            else [e.content for e in self.env.ltm.entries()],
            "tool_stats": self.env.metrics(),
            "memory_system": None if self.memory_stats is None else self.memory_stats.to_json(),
            "steps": [s.to_json() for s in self.steps],
        }


def _hits(result: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """A retrieval's structured results as the policy's view shows them."""
    return [
        {"id": r["memory_id"], "content": r["content"], "metadata": r["metadata"]}
        for r in (result or {}).get("results", ())
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
        self.memory: dict[str, str] = {}  # the store after this rollout's previous step
        self.system: baselines.MemorySystem | None = None  # a memory baseline's, if any


class EpisodeRunner:
    """Runs batches of three-stage episodes for any `Policy`.

    `make_env()` returns a fresh `MemoryEnv` (empty store); the K rollouts of a task fork it, so
    they start from one snapshot. `encode_action(text)` turns a text-only action (scripted,
    random) into ids, as the tokenizer would. `method` (methods.py) decides how injected
    messages enter the context and whether stage 2 starts from a fresh one. A memory-baseline
    method needs `baseline` (`baselines.Harness`): its system ingests the stage-1 messages and
    its recall for the question is shown right before the question.
    """

    def __init__(
        self,
        make_env: Callable[[], MemoryEnv],
        config: EpisodeConfig | Mapping | None = None,
        stop_id: int | None = None,
        method: str | methods.MethodSpec = "agemem",
        baseline: baselines.Harness | None = None,
    ):
        self.make_env = make_env
        self.cfg = build(EpisodeConfig, config)
        self.stop_id = stop_id
        self.method = methods.method_spec(method)
        if self.method.memory_system is not None and baseline is None:
            raise ValueError(
                f"method {self.method.name!r} runs a memory system: pass baseline= "
                "(builders.baseline builds it from the config)"
            )
        self.baseline = baseline if self.method.memory_system is not None else None

    # ------------------------------------------------------------------------------ running
    def run(
        self,
        tasks: Sequence[Task],
        policy: Policy,
        group_size: int = 1,
        seed: int = 0,
        first_row: int = 0,
    ) -> list[Trajectory]:
        """Episodes of `tasks` x `group_size` rollouts; `seed` reaches the policy's sampler.

        `first_row` is the index of these rollouts' first row in a batch split over hosts: the
        sampler draws by global row, so a host's share samples exactly as the whole batch would.
        """
        rollouts: list[_Rollout] = []
        for task in tasks:
            base = self.make_env()
            for k in range(group_size):
                env = base.fork() if k else base
                rollouts.append(_Rollout(Trajectory(task, k, env), len(rollouts)))

        try:
            return self._run(rollouts, policy, seed, first_row)
        finally:
            for r in rollouts:
                if r.system is not None:
                    r.system.close()

    def _run(
        self, rollouts: list[_Rollout], policy: Policy, seed: int, first_row: int
    ) -> list[Trajectory]:
        cfg = self.cfg
        if self.baseline is not None:
            for r in rollouts:
                r.system = self.baseline.new("conversation")
        begin = getattr(policy, "begin", None)
        if begin is not None:
            begin(len(rollouts), seed, first_row) if first_row else begin(len(rollouts), seed)
        instructions = self.method.hotpotqa_instructions or cfg.instructions
        system = rollouts[0].env.system_prompt(instructions) if rollouts else ""
        # Stage 1: LTM construction with introspective retrieval.
        self._stage_start(rollouts, "1", system, reset=True)
        for turn in range(cfg.t1):
            self._ingest(rollouts, [r.traj.task.conversation[turn] for r in rollouts])
            for r in rollouts:
                msg = r.traj.task.conversation[turn]
                self._inject(r, msg, introspect_k=cfg.introspective_top_k)
            self._turn(rollouts, policy, 1, turn, cfg.max_actions_per_turn, turn == cfg.t1 - 1)
        # Stage 2: a fresh context (unless the method keeps one), one distractor per turn.
        self._stage_start(rollouts, "2", system, reset=self.method.reset_context)
        for turn in range(cfg.t2):
            if self.baseline is not None and self.baseline.config.ingest_distractors:
                self._ingest(rollouts, [r.traj.task.distractors[turn] for r in rollouts])
            for r in rollouts:
                self._inject(r, r.traj.task.distractors[turn])
            self._turn(rollouts, policy, 2, turn, cfg.max_actions_per_turn, turn == cfg.t2 - 1)
        # Stage 3: the query joins the stage-2 context; Filter/Summary never remove it.
        self._stage_start(rollouts, "3", system, reset=False)
        self._recall(rollouts, [r.traj.task.question for r in rollouts])
        for r in rollouts:
            self._inject(r, r.traj.task.question, protected=True)
        self._turn(rollouts, policy, 3, 0, cfg.t3, True)
        for r in rollouts:
            if r.system is not None:
                r.traj.memory_entries = tuple(r.system.memories())
                r.traj.memory_stats = r.system.stats
            else:
                r.traj.memory_entries = tuple(e.content for e in r.env.ltm.entries())
        return [r.traj for r in rollouts]

    def _ingest(self, rollouts: Sequence[_Rollout], texts: Sequence[str]) -> None:
        """A memory baseline's systems ingest one user message each, batched."""
        if self.baseline is not None:
            systems = [r.system for r in rollouts if r.system is not None]
            self.baseline.ingest(systems, [[("user", t)] for t in texts])

    def _recall(self, rollouts: Sequence[_Rollout], queries: Sequence[str]) -> None:
        """A memory baseline's recall for each query, shown as a retrieval message."""
        if self.baseline is None:
            return
        systems = [r.system for r in rollouts if r.system is not None]
        for r, recalls in zip(rollouts, self.baseline.recall(systems, queries), strict=True):
            results = [{"memory_id": x.id, "content": x.text, "metadata": {}} for x in recalls]
            r.env.stm.add(
                "tool", baselines.recall_text(recalls), kind="retrieval", data={"results": results}
            )

    def _inject(self, r: _Rollout, text: str, protected: bool = False, introspect_k: int = 0):
        """The method's hook for an injected message; what it retrieved is this turn's hits."""
        shown = methods.inject(
            r.env, self.method, text, protected=protected, introspect_k=introspect_k
        )
        r.retrieved = _hits(shown.data) if shown is not None else []

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
        context_before = list(r.env.stm.messages)
        ids, result, records = step_env(r.env, action, self.stop_id)
        memory_after = memory_snapshot(r.env)
        diff = memory_diff(r.memory, memory_after)
        r.memory = memory_after
        calls = [rec for rec in records if rec.name != TURN]
        for rec in calls:
            if rec.name == T.RETRIEVE and rec.ok:
                r.retrieved += _hits(rec.result)
        r.traj.ledger.record(stage, view.context_tokens, result)
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
            sampler_logprobs=None
            if action.sampler_logprobs is None
            else np.asarray(action.sampler_logprobs, np.float32),
            memory_diff=diff,
            context_edit=context_edit(context_before, r.env.stm.messages),
        )
        r.traj.steps.append(step)
        r.turn_step += 1
        r.last_error = result.turn.error
        if result.done:
            r.open = False
            if stage == 3:
                r.traj.answer = result.answer
                r.traj.ledger.answer_tokens = view.context_tokens
                # The answer turn only appended the agent's own message, which is not kept text.
                r.traj.ledger.kept_text = kept_text(r.env.stm.messages)


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
    result = env.step(ids, action.text)
    return ids, result, result.records


def _known_mean(values: Sequence[float | None]) -> float:
    """Mean of the values the judge could score (NaN when there is none)."""
    known = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(known)) if known else float("nan")


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
    scored = [t for t in trajectories if t.reward is not None]
    rewards = [t.reward for t in trajectories if t.reward is not None]
    components = {}
    if rewards:
        for key in rewards[0].as_dict():
            components[key] = _known_mean([r.as_dict()[key] for r in rewards])
    task_scores = [
        r.task if t.answer is not None else 0.0 for t, r in zip(scored, rewards, strict=True)
    ]
    # Failed judge scores are NaN/None: left out of the means and counted instead.
    failures = sum(r.judge_failures for r in rewards)
    failures += sum(t.memory_quality is None for t in scored)
    with_system = [t.memory_stats for t in trajectories if t.memory_stats is not None]
    return baselines.summarize_stats(with_system) | {
        "episodes": n,
        "judge": judge_name,
        "judge_failures": failures,
        "unscored_episodes": sum(not np.isfinite(r.total) for r in rewards),
        "judge_score": _known_mean(task_scores) if task_scores else 0.0,
        "memory_quality": _known_mean([t.memory_quality for t in scored]) if scored else 0.0,
        "prompt_tokens": float(np.mean([s.prompt_tokens for s in steps])) if steps else 0.0,
        "tool_calls": sum(by_name.values()) / n,
        "tool_calls_by_name": {k: v / n for k, v in sorted(by_name.items())},
        "reward": components.get("total", 0.0),
        "reward_components": components,
        "format_error_rate": (sum(s.format_error for s in steps) / len(steps)) if steps else 0.0,
        "answered_rate": sum(t.answer is not None for t in trajectories) / n,
        "steps_per_episode": len(steps) / n,
    }
