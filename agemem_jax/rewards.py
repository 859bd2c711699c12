"""The composite trajectory reward of spec section 6.

    R(τ) = w_task·R_task + w_context·R_context + w_memory·R_memory + P_penalty

- R_task = S_judge(answer, A_q) in [0, 1] when an answer was given, else P_no_answer = -1.
- R_context = α_c·R_compression + α_v·R_preventive + α_p·R_preservation, with
  R_compression = max(0, 1 - T_used/T_max); R_preventive = 1 if a Summary/Filter call that
  shortened the context ran before the context first went over T_max (and, when
  `preventive_min_fill` > 0, while it held at least that share of T_max); R_preservation = 1 if
  every key item of the query is in what the agent kept in its context at answer time.
- R_memory = β_s·R_storage + β_m·R_maintenance + β_r·R_relevance, with R_storage =
  N_high_quality / max(1, N_added) over stage-1 additions, R_maintenance = 1 if any Update or
  Delete ran, R_relevance = S_judge(retrieved set, q).
- P_penalty = P_rounds (-1) if rounds > N_max, plus P_overflow (-0.5) if the episode's peak
  token usage > T_max.

Every number the spec fixes is a default of `RewardConfig`. The episode runner records one
`EpisodeFacts` per trajectory as the episode runs; `compute_rewards` scores a batch of them with
a single judge call (one batch, so an HTTP judge can run its requests concurrently) and returns
each component separately for logging. `score` does this for finished trajectories.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agemem_jax.dataclass_config import build
from agemem_jax.judges import Judge, JudgeRequest
from agemem_jax.text import contains_items, key_items


@dataclass(frozen=True)
class RewardConfig:
    """Reward weights and penalties. Answer-only (the spec's ablation) = w_context = w_memory = 0.

    `storage_threshold` **(ours)**: a stage-1 entry counts as high quality when its judge score
    is at least this; the spec only says the LLM judges "high quality or not".

    `preventive_min_fill` **(ours)**: a context-reducing call earns R_preventive only when the
    context held at least this share of T_max as it ran. 0 is the spec as written: any
    shortening call before the limit pays. When episodes never come near T_max, that pays for
    a reduction nothing called for, and a policy can learn to summarize away what it needs
    (`docs/results/learning_cpu.md`); a positive share pays only for reducing under pressure.
    """

    w_task: float = 1 / 3  # weight of R_task (spec: 1/3, untuned)
    w_context: float = 1 / 3  # weight of R_context
    w_memory: float = 1 / 3  # weight of R_memory
    alpha_compression: float = 1 / 3  # R_context part weights (spec: 1/3 each)
    alpha_preventive: float = 1 / 3
    alpha_preservation: float = 1 / 3
    beta_storage: float = 1 / 3  # R_memory part weights (spec: 1/3 each)
    beta_maintenance: float = 1 / 3
    beta_relevance: float = 1 / 3
    p_no_answer: float = -1.0  # R_task when no answer was given
    p_rounds: float = -1.0  # penalty when rounds exceed episode.n_max
    p_overflow: float = -0.5  # penalty when token usage exceeded memory.t_max
    storage_threshold: float = 0.5  # judge score at which a stage-1 entry is high quality
    preventive_min_fill: float = 0.0  # share of T_max a reducing call needs to be preventive

    def __post_init__(self):
        if not 0.0 <= self.preventive_min_fill <= 1.0:
            raise ValueError(
                f"reward.preventive_min_fill must be in [0, 1], got {self.preventive_min_fill}"
            )

    @classmethod
    def answer_only(cls, **overrides) -> RewardConfig:
        return build(cls, {"w_context": 0.0, "w_memory": 0.0}, **overrides)


@dataclass(frozen=True, kw_only=True)
class EpisodeFacts:
    """What the episode runner recorded about one trajectory for its reward.

    question, gold_answer, supporting_facts: the task (q, A_q, and the facts the rule judge
        compares stored entries with).
    answer: the text of the final `<answer>` of stage 3, or None when none was given.
    context_tokens: T_used, prompt tokens when the answer was generated (at the last step when
        there was none, **ours**).
    kept_text: what the agent kept in that context, outside the query message **(ours)**: the
        injected messages still there, summaries, and the entries retrieved into it. The query
        message (protected from Summary/Filter) and the agent's own turns are left out, so the
        query's key items count only when the agent's context management kept them.
    reduced_before_limit: a Summary_context or Filter_context call shortened the context before
        the context first went over T_max (eviction or overflow); a no-op call does not count.
    reduction_fill: the largest share of T_max the context held when such a call ran (0 when
        none ran), for `RewardConfig.preventive_min_fill`.
    added_entries: contents of the successful Add_memory calls of stage 1.
    maintained: an Update_memory or Delete_memory succeeded.
    retrieved: contents of the entries the agent's Retrieve_memory calls returned.
    rounds, n_max: rounds (policy actions) used and the allowed maximum.
    token_usage: the most prompt tokens the context held at any point of the episode (all
        stages), compared with T_max.
    """

    question: str
    gold_answer: str
    supporting_facts: tuple[str, ...] = ()
    answer: str | None
    context_tokens: int
    t_max: int = 8192
    kept_text: str = ""
    reduced_before_limit: bool = False
    reduction_fill: float = 0.0
    added_entries: tuple[str, ...] = ()
    maintained: bool = False
    retrieved: tuple[str, ...] = ()
    rounds: int
    n_max: int
    token_usage: int

    def __post_init__(self):
        for name in ("supporting_facts", "added_entries", "retrieved"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"EpisodeFacts.{name} is a sequence of strings, not one string")
            object.__setattr__(self, name, tuple(value))
        if not 0.0 <= self.reduction_fill or (
            self.reduction_fill and not self.reduced_before_limit
        ):
            raise ValueError(
                f"EpisodeFacts.reduction_fill={self.reduction_fill}: must be >= 0, and 0 when no "
                "call reduced the context before the limit"
            )
        if self.t_max <= 0:
            raise ValueError(f"EpisodeFacts.t_max must be positive, got {self.t_max}")
        for name in ("context_tokens", "rounds", "n_max", "token_usage"):
            if getattr(self, name) < 0:
                raise ValueError(f"EpisodeFacts.{name} must be >= 0, got {getattr(self, name)}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Reward:
    """The total and every component, each as defined in the module docstring.

    `task` is R_task as it enters the total (the judge score, or P_no_answer); `no_answer`
    repeats that penalty (0 when answered) so it can be logged apart, and is not added twice.
    `penalty` = `rounds_penalty` + `overflow_penalty` = P_penalty.

    `judge_failures` counts this episode's judge requests that got no score. A part is computed
    from the scores that came back where that is defined (R_storage over the entries judged);
    otherwise (R_task, R_relevance, or every entry unjudged) it is NaN, as is every sum it
    enters with a non-zero weight, so an unknown reward is never made up **(ours)**.
    """

    total: float
    task: float
    context: float
    compression: float
    preventive: float
    preservation: float
    memory: float
    storage: float
    maintenance: float
    relevance: float
    penalty: float
    no_answer: float
    rounds_penalty: float
    overflow_penalty: float
    judge_failures: int = 0

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# The parts that need no judge, one function each, as the spec writes them.


def compression(ep: EpisodeFacts) -> float:
    """R_compression = max(0, 1 - T_used / T_max)."""
    return max(0.0, 1.0 - ep.context_tokens / ep.t_max)


def preventive(ep: EpisodeFacts, cfg: RewardConfig) -> float:
    """R_preventive = 1 if a context-reducing call ran before the context reached the limit,
    with the context at least `cfg.preventive_min_fill` full."""
    return float(ep.reduced_before_limit and ep.reduction_fill >= cfg.preventive_min_fill)


def preservation(ep: EpisodeFacts) -> float:
    """R_preservation = 1 if the query's key items are in what the agent kept, else 0.

    A query without key items is trivially preserved (1.0, **ours**).
    """
    return float(contains_items(key_items(ep.question), ep.kept_text))


def maintenance(ep: EpisodeFacts) -> float:
    """R_maintenance = 1 if any Update or Delete was performed."""
    return float(ep.maintained)


def rounds_penalty(ep: EpisodeFacts, cfg: RewardConfig) -> float:
    return cfg.p_rounds if ep.rounds > ep.n_max else 0.0


def overflow_penalty(ep: EpisodeFacts, cfg: RewardConfig) -> float:
    return cfg.p_overflow if ep.token_usage > ep.t_max else 0.0


# ---------------------------------------------------------------------------------------------
# The judged parts and the total.


def _requests(ep: EpisodeFacts) -> list[JudgeRequest]:
    """Judge requests for one episode, in a fixed order: task?, storage per entry, relevance?."""
    reqs = []
    if ep.answer is not None:
        reqs.append(JudgeRequest("task", ep.question, ep.gold_answer, ep.answer))
    for entry in ep.added_entries:
        reqs.append(
            JudgeRequest(
                "storage",
                ep.question,
                ep.gold_answer,
                entries=(entry,),
                facts=ep.supporting_facts,
            )
        )
    if ep.retrieved:
        reqs.append(
            JudgeRequest(
                "relevance",
                ep.question,
                ep.gold_answer,
                entries=ep.retrieved,
                facts=ep.supporting_facts,
            )
        )
    return reqs


def compute_rewards(
    episodes: Sequence[EpisodeFacts], judge: Judge, config: RewardConfig | Mapping | None = None
) -> list[Reward]:
    """Rewards for a batch of episodes, judged in one `judge.score` call."""
    cfg = build(RewardConfig, config)
    per_episode = [_requests(ep) for ep in episodes]
    flat = [r for reqs in per_episode for r in reqs]
    scores = judge.score(flat) if flat else []
    if len(scores) != len(flat):
        raise ValueError(f"judge returned {len(scores)} scores for {len(flat)} requests")
    for s in scores:
        if s is not None and not 0.0 <= s <= 1.0:
            raise ValueError(f"judge score {s} is outside [0, 1]")
    nan = float("nan")
    out, pos = [], 0
    for ep, reqs in zip(episodes, per_episode, strict=True):
        failures = sum(s is None for s in scores[pos : pos + len(reqs)])
        answered = ep.answer is not None
        task = scores[pos] if answered else cfg.p_no_answer
        task = nan if task is None else task
        pos += answered
        storage_scores = [s for s in scores[pos : pos + len(ep.added_entries)] if s is not None]
        pos += len(ep.added_entries)
        relevance = 0.0  # nothing retrieved: nothing relevant (ours)
        if ep.retrieved:
            judged = scores[pos]
            relevance = nan if judged is None else judged
            pos += 1
        high = sum(s >= cfg.storage_threshold for s in storage_scores)
        storage = high / max(1, len(ep.added_entries))
        if len(storage_scores) < len(ep.added_entries):  # over the judged entries only
            storage = high / len(storage_scores) if storage_scores else nan
        parts: dict[str, float] = dict(
            compression=compression(ep),
            preventive=preventive(ep, cfg),
            preservation=preservation(ep),
            storage=storage,
            maintenance=maintenance(ep),
            relevance=relevance,
            rounds_penalty=rounds_penalty(ep, cfg),
            overflow_penalty=overflow_penalty(ep, cfg),
        )
        context = (
            cfg.alpha_compression * parts["compression"]
            + cfg.alpha_preventive * parts["preventive"]
            + cfg.alpha_preservation * parts["preservation"]
        )
        memory = _weighted(
            (cfg.beta_storage, parts["storage"]),
            (cfg.beta_maintenance, parts["maintenance"]),
            (cfg.beta_relevance, parts["relevance"]),
        )
        penalty = parts["rounds_penalty"] + parts["overflow_penalty"]
        total = (
            _weighted((cfg.w_task, task), (cfg.w_context, context), (cfg.w_memory, memory))
            + penalty
        )
        out.append(
            Reward(
                total=total,
                task=task,
                context=context,
                memory=memory,
                penalty=penalty,
                no_answer=0.0 if answered else cfg.p_no_answer,
                judge_failures=failures,
                **parts,
            )
        )
    return out


def _weighted(*terms: tuple[float, float]) -> float:
    """Σ w·x, leaving out terms of weight 0 so an unknown (NaN) part that the config switches
    off (e.g. R_memory in the answer-only ablation) cannot make the total unknown."""
    return sum((w * x for w, x in terms if w), 0.0)


def compute_reward(
    episode: EpisodeFacts, judge: Judge, config: RewardConfig | Mapping | None = None
) -> Reward:
    return compute_rewards([episode], judge, config)[0]


class _Episode(Protocol):
    """What `score` reads of an episode config (`episodes.EpisodeConfig` is one)."""

    @property
    def n_max(self) -> int: ...


class Scored(Protocol):
    """What `score` needs of a trajectory (`episodes.Trajectory` is one); structural, so the
    reward never imports the episode loop that uses it."""

    task: Any  # question, answer, supporting_facts
    memory_entries: tuple[str, ...]
    reward: Reward | None
    memory_quality: float | None

    def facts(self, n_max: int) -> EpisodeFacts: ...


def score(
    trajectories: Sequence[Scored],
    judge: Judge,
    episode_cfg: _Episode,
    reward_cfg: RewardConfig | Mapping | None = None,
) -> None:
    """Fill each trajectory's reward and memory quality (MQ), judged in two batched calls.

    Reads only what the runner recorded (`Trajectory.facts`, `Trajectory.memory_entries`),
    never the live environment.
    """
    if not trajectories:
        return
    facts = [t.facts(episode_cfg.n_max) for t in trajectories]
    for t, reward in zip(trajectories, compute_rewards(facts, judge, reward_cfg), strict=True):
        t.reward = reward
    requests = [
        JudgeRequest(
            kind="memory",
            question=t.task.question,
            answer=t.task.answer,
            entries=t.memory_entries,
            facts=t.task.supporting_facts,
        )
        for t in trajectories
    ]
    for t, mq in zip(trajectories, judge.score(requests), strict=True):
        t.memory_quality = mq  # None: the judge failed; `summarize` counts it, never as 0
