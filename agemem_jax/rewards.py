"""The composite trajectory reward of spec section 6.

    R(τ) = w_task·R_task + w_context·R_context + w_memory·R_memory + P_penalty

- R_task = S_judge(answer, A_q) in [0, 1] when an answer was given, else P_no_answer = -1.
- R_context = α_c·R_compression + α_v·R_preventive + α_p·R_preservation, with
  R_compression = max(0, 1 - T_used/T_max), R_preventive = 1 if Summary/Filter ran before the
  context reached the limit, R_preservation = 1 if every key item of the query is still in the
  context at answer time (directly or inside a summary).
- R_memory = β_s·R_storage + β_m·R_maintenance + β_r·R_relevance, with R_storage =
  N_high_quality / max(1, N_added) over stage-1 additions, R_maintenance = 1 if any Update or
  Delete ran, R_relevance = S_judge(retrieved set, q).
- P_penalty = P_rounds (-1) if rounds > N_max, plus P_overflow (-0.5) if token usage > T_max.

Every number the spec fixes is a default of `RewardConfig`. The runner records one
`EpisodeFacts` per trajectory; `compute_rewards` scores a batch of them with a single judge call
(one batch, so an HTTP judge can run its requests concurrently) and returns each component
separately for logging.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agemem_jax.judges import Judge, JudgeRequest, normalize_answer


@dataclass(frozen=True)
class RewardConfig:
    """Reward weights and penalties. Answer-only (the spec's ablation) = w_context = w_memory = 0.

    `storage_threshold` **(ours)**: a stage-1 entry counts as high quality when its judge score
    is at least this; the spec only says the LLM judges "high quality or not".
    """

    w_task: float = 1 / 3
    w_context: float = 1 / 3
    w_memory: float = 1 / 3
    alpha_compression: float = 1 / 3
    alpha_preventive: float = 1 / 3
    alpha_preservation: float = 1 / 3
    beta_storage: float = 1 / 3
    beta_maintenance: float = 1 / 3
    beta_relevance: float = 1 / 3
    p_no_answer: float = -1.0
    p_rounds: float = -1.0
    p_overflow: float = -0.5
    storage_threshold: float = 0.5

    @classmethod
    def from_config(cls, cfg: Mapping | None = None, **overrides) -> RewardConfig:
        """From a dict or ml_collections ConfigDict; an unknown key is an error, not a no-op."""
        if cfg is not None and hasattr(cfg, "to_dict"):
            cfg = cfg.to_dict()
        values = {**(cfg or {}), **overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown reward settings {unknown}; known: {sorted(known)}")
        return cls(**{k: float(v) for k, v in values.items()})

    @classmethod
    def answer_only(cls, **overrides) -> RewardConfig:
        return cls.from_config({"w_context": 0.0, "w_memory": 0.0}, **overrides)


@dataclass(frozen=True, kw_only=True)
class EpisodeFacts:
    """What the episode runner records about one trajectory for its reward.

    question, gold_answer, supporting_facts: the task (q, A_q, and the facts the rule judge
        compares stored entries with).
    answer: the text of the final `<answer>` of stage 3, or None when none was given.
    context_tokens: T_used, tokens in the context when the answer was generated (at the last
        step when there was none, **ours**).
    context_text: that final context as text, summaries included (for preservation).
    reduced_before_limit: a Summary_context or Filter_context call ran before the context
        reached T_max.
    added_entries: contents of the Add_memory calls of stage 1.
    maintained: any Update_memory or Delete_memory ran.
    retrieved: contents of the entries the agent's Retrieve_memory calls returned.
    rounds, n_max: rounds used and the allowed maximum.
    token_usage: the episode's total token usage, as the runner counts it, compared with T_max.
    """

    question: str
    gold_answer: str
    supporting_facts: tuple[str, ...] = ()
    answer: str | None
    context_tokens: int
    t_max: int = 8192
    context_text: str = ""
    reduced_before_limit: bool = False
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
# Preservation: key items of the query (ours: how "named entities, dates, places, numbers" are
# found without an NER model).

_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
    r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.?"
)
_DATE = re.compile(
    rf"\b(?:\d{{1,2}}\s+{_MONTH}(?:,?\s+\d{{3,4}})?"  # 2 March 1972
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{3,4}}"  # March 2, 1972
    rf"|{_MONTH}\s+\d{{3,4}})\b"  # March 1972
)
_WORD = re.compile(r"[\w'’.&-]*\w[\w'’&-]*\.?")
# Lower-case words allowed inside a name between two capitalized ones ("Bank of America").
# "and" is not one: "Jonny Craig and Pete Doherty" are two names.
_CONNECT = frozenset("of the de du da del della di von van der den la le for on upon".split())
# Capitalized only because they start the question: dropped from the front of a span.
_LEADING = frozenset(
    """which what who whom whose when where why how is are was were do does did has have had
    can could would should will shall may might the a an in on at of for and or but by from to
    with as if this that these those it its he she they his her their there name identify
    during after before since while although though between among about according despite
    under over within without into onto upon not""".split()
)
_NUM = re.compile(r"\d+(?:[.,:]\d+)*")


def _capitalized_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, span) for each run of capitalized words, joined by short connectors.

    Words of a run are separated by whitespace only, so a comma, quote or slash ends it.
    """
    words = list(_WORD.finditer(text))

    def joined(a: int, b: int) -> bool:
        return not text[words[a].end() : words[b].start()].strip()

    spans, i = [], 0
    while i < len(words):
        if not words[i].group(0)[0].isupper():
            i += 1
            continue
        k = i  # words[i..k] is the run so far; look past connectors for its next word
        while True:
            nxt = k + 1
            while (
                nxt < len(words)
                and words[nxt].group(0).lower() in _CONNECT
                and joined(nxt - 1, nxt)
            ):
                nxt += 1
            if nxt < len(words) and words[nxt].group(0)[0].isupper() and joined(nxt - 1, nxt):
                k = nxt
            else:
                break
        run = [w.group(0) for w in words[i : k + 1]]
        spans.append((words[i].start(), words[k].end(), run))
        i = k + 1
    out = []
    for start, end, run in spans:
        while run and run[0].lower().strip(".'’") in _LEADING:
            run.pop(0)
        if run:
            out.append((start, end, " ".join(run)))
    return out


def key_items(query: str) -> list[str]:
    """Dates, capitalized spans (names, places, titles) and numbers of a query, in that order.

    Our reading of the spec's "named entities, dates/times, places, numbers": a date is taken
    whole so its day and year are not required again as bare numbers; a span loses leading
    question and function words ("Which", "The", ...); numbers are the digits outside both.
    """
    items = [m.group(0) for m in _DATE.finditer(query)]
    rest = _DATE.sub(lambda m: " " * len(m.group(0)), query)
    spans = _capitalized_spans(rest)
    items += [span for _, _, span in spans]
    for start, end, _ in spans:
        rest = rest[:start] + " " * (end - start) + rest[end:]
    items += _NUM.findall(rest)
    seen, out = set(), []
    for item in items:
        norm = normalize_answer(item)
        if norm and norm not in seen:
            seen.add(norm)
            out.append(item)
    return out


def preserved(query: str, context_text: str) -> float:
    """1.0 if every key item of `query` occurs in `context_text` as whole normalized words.

    A query without key items is trivially preserved (1.0, **ours**).
    """
    hay = f" {normalize_answer(context_text)} "
    return float(all(f" {normalize_answer(item)} " in hay for item in key_items(query)))


# ---------------------------------------------------------------------------------------------


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
    cfg = config if isinstance(config, RewardConfig) else RewardConfig.from_config(config)
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
            relevance = nan if scores[pos] is None else scores[pos]
            pos += 1
        high = sum(s >= cfg.storage_threshold for s in storage_scores)
        storage = high / max(1, len(ep.added_entries))
        if len(storage_scores) < len(ep.added_entries):  # over the judged entries only
            storage = high / len(storage_scores) if storage_scores else nan

        compression = max(0.0, 1.0 - ep.context_tokens / ep.t_max)
        preventive = float(ep.reduced_before_limit)
        preservation = preserved(ep.question, ep.context_text)
        context = (
            cfg.alpha_compression * compression
            + cfg.alpha_preventive * preventive
            + cfg.alpha_preservation * preservation
        )
        maintenance = float(ep.maintained)
        memory = _weighted(
            (cfg.beta_storage, storage),
            (cfg.beta_maintenance, maintenance),
            (cfg.beta_relevance, relevance),
        )
        rounds_penalty = cfg.p_rounds if ep.rounds > ep.n_max else 0.0
        overflow_penalty = cfg.p_overflow if ep.token_usage > ep.t_max else 0.0
        penalty = rounds_penalty + overflow_penalty
        total = (
            _weighted((cfg.w_task, task), (cfg.w_context, context), (cfg.w_memory, memory))
            + penalty
        )
        out.append(
            Reward(
                total=total,
                task=task,
                context=context,
                compression=compression,
                preventive=preventive,
                preservation=preservation,
                memory=memory,
                storage=storage,
                maintenance=maintenance,
                relevance=relevance,
                penalty=penalty,
                no_answer=0.0 if answered else cfg.p_no_answer,
                rounds_penalty=rounds_penalty,
                overflow_penalty=overflow_penalty,
                judge_failures=failures,
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
