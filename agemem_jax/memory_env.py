"""The memory environment: runs what the policy emits against long- and short-term memory.

Per agent step the episode runner calls `step(response_ids)`. The environment appends the
assistant turn to the context (exact sampled ids), parses it, executes its tool calls, and
appends one tool message per call. Malformed output never raises. It becomes an error
observation the model can read, and it is counted in `stats`, as is every call and every error
by category (`ERROR_CODES`).

`step` returns one structured `CallRecord` per call (its result, the context size before and
after it, whether the context had already gone over its budget), which is what the episode
runner records for the reward. JSON is rendered from those results only for the model's
observation, never parsed back.

`fork()` gives an independent copy that shares long-term memory copy-on-write. All K rollouts of
a GRPO group fork from one prepared environment, and `snapshot()`/`restore()` replay an episode.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from agemem_jax import tools as T
from agemem_jax.chat import ChatFormat
from agemem_jax.dataclass_config import build
from agemem_jax.encoder import Encoder, default_encoder
from agemem_jax.ltm import Hit, LongTermMemory, LTMError, LTMSnapshot, StoreFull, UnknownMemoryId
from agemem_jax.protocol import LIMIT_VIOLATIONS, ProtocolLimits, Turn, parse_turn
from agemem_jax.stm import ContextError, Message, ShortTermContext, Summarizer

TURN = "<turn>"  # the record name of a rejected turn (no call ran)
UNKNOWN = "<unknown>"  # statistics bucket for names that are not enabled tools
# Error categories in statistics.
ERROR_CODES = (
    "malformed",  # the turn broke the protocol (violation codes are counted separately)
    "limit",  # a turn, call count, argument size, top_k or store size over its limit
    "unknown_tool",  # not a tool, or disabled in this configuration
    "bad_args",  # missing, unexpected or mistyped arguments
    "unknown_id",  # no entry has this memory_id
    "unseen_id",  # the id exists but was never shown to the agent in this episode
    "missing_confirmation",  # Delete_memory without "confirmation": true
    "failed",  # the operation itself could not be done (e.g. the summarizer gave nothing)
)


@dataclasses.dataclass(frozen=True)
class MemoryEnvConfig:
    """Every knob of the environment, with the method's defaults."""

    enabled_tools: tuple[str, ...] = T.TOOL_NAMES  # ablate by listing fewer
    t_max: int = 8192  # context budget in tokens
    theta: float = 0.6  # Filter_context cosine threshold
    top_k: int = 3  # Retrieve_memory default
    max_top_k: int = 10  # largest top_k a Retrieve_memory call may ask for
    # Update/Delete need an id an earlier retrieval showed this episode (Retrieve_memory or the
    # stage-1 introspective retrieval), as the spec asks.
    require_seen_id: bool = True
    # Lenient rule (ours, off by default): ids returned by Add_memory count as seen too.
    added_ids_are_seen: bool = False
    max_entries: int | None = 10_000  # LTM capacity (StoreFull past it); None = unbounded
    # Bounds on what one Add/Update may store, so model output cannot grow memory without limit
    # even when a caller skips the protocol's turn-size limits.
    max_content_chars: int = 4_096  # one entry's content
    max_metadata_chars: int = 2_048  # one entry's metadata, serialized as JSON
    default_memory_type: str = "general"  # Add_memory's memory_type when the call gives none
    summary_role: str = "user"  # role of the message a Summary_context writes
    seed: int = 0  # memory id RNG
    prompt_style: str = "json"  # how tools are listed in the system prompt: json | compact
    limits: ProtocolLimits = dataclasses.field(default_factory=ProtocolLimits)


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One executed (or rejected) call, for per-tool statistics and the reward.

    `result` is the structured outcome; the observation the model reads is its JSON rendering
    (with "tool" and "status" added). A rejected turn is one record named `TURN`.
    """

    step: int
    stage: str
    name: str
    arguments: dict[str, Any]
    ok: bool
    code: str | None  # one of ERROR_CODES when not ok
    tokens_before: int  # prompt tokens when the call ran
    tokens_after: int  # prompt tokens right after it, before its observation is appended
    # The context had not yet gone over its budget (no eviction or overflow so far this episode).
    before_limit: bool
    result: dict[str, Any]

    @property
    def reduced(self) -> bool:
        """The call succeeded and left the context shorter than it found it."""
        return self.ok and self.tokens_after < self.tokens_before


class ToolStats:
    """Counters over calls and turns; `as_dict()` is flat, for logging."""

    def __init__(self):
        self.records: list[CallRecord] = []
        self.calls: collections.Counter[str] = collections.Counter()
        self.ok: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.tool_errors: collections.Counter[tuple[str, str]] = collections.Counter()
        self.violations: collections.Counter[str] = collections.Counter()
        self.turns = 0
        self.answers = 0

    def add(self, rec: CallRecord) -> None:
        self.records.append(rec)
        if rec.name != TURN:
            self.calls[rec.name] += 1
            if rec.ok:
                self.ok[rec.name] += 1
        if not rec.ok:
            code = rec.code or "failed"  # every failed record carries a code; never None here
            self.errors[code] += 1
            self.tool_errors[rec.name, code] += 1

    def copy(self) -> ToolStats:
        other = ToolStats()
        other.records = list(self.records)
        for name in ("calls", "ok", "errors", "tool_errors", "violations"):
            setattr(other, name, collections.Counter(getattr(self, name)))
        other.turns, other.answers = self.turns, self.answers
        return other

    def as_dict(self) -> dict[str, int]:
        out = {"turns": self.turns, "answers": self.answers}
        out |= {f"calls/{k}": v for k, v in sorted(self.calls.items())}
        out |= {f"ok/{k}": v for k, v in sorted(self.ok.items())}
        out |= {f"errors/{k}": v for k, v in sorted(self.errors.items())}
        out |= {f"tool_errors/{n}/{c}": v for (n, c), v in sorted(self.tool_errors.items())}
        out |= {f"violations/{k}": v for k, v in sorted(self.violations.items())}
        return out


@dataclasses.dataclass(frozen=True)
class StepResult:
    turn: Turn
    assistant: Message
    observations: list[Message]
    done: bool  # the turn gave an answer
    records: tuple[CallRecord, ...] = ()  # one per call, or one `TURN` record if rejected
    peak_tokens: int = 0  # the most prompt tokens the context has held this episode
    limit_hit: bool = False  # the context has gone over its budget at least once this episode

    @property
    def answer(self) -> str | None:
        return self.turn.answer


@dataclasses.dataclass(frozen=True)
class EnvSnapshot:
    ltm: LTMSnapshot
    stm: ShortTermContext
    seen: frozenset[str]
    stats: ToolStats
    step: int
    retrieved: tuple[tuple[int, str, str], ...]


class _CallError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _error_code(e: Exception) -> str:
    if isinstance(e, StoreFull):
        return "limit"
    if isinstance(e, UnknownMemoryId):
        return "unknown_id"
    return "failed" if isinstance(e, ContextError) else "bad_args"


def _results(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    return [
        {
            "memory_id": h.entry.id,
            "content": h.entry.content,
            "score": round(h.score, 4),
            "memory_type": h.entry.memory_type,
            "metadata": h.entry.metadata,
        }
        for h in hits
    ]


def _observation(name: str | None, ok: bool, fields: Mapping[str, Any]) -> str:
    body = ({"tool": name} if name else {}) | {"status": "ok" if ok else "error", **fields}
    return json.dumps(body, ensure_ascii=False)


# What a Summary/Filter that did not shorten the context is told, so the model can learn the
# call was wasted instead of reading a bare "ok".
NO_CHANGE = "nothing was removed; the context is unchanged"
NOT_SHORTER = "the context is not shorter than before this call"


class MemoryEnv:
    """Long-term store + short-term context + the tools, for one rollout.

    `chat` renders messages to ids with the policy's tokenizer. `encoder` defaults to MiniLM.
    `summarizer` (messages -> summary text) is required when Summary_context is enabled; the
    episode runner passes the policy model prompted with `stm.summary_request`. Exceptions from
    the summarizer or the encoder are infrastructure failures and propagate.
    """

    def __init__(
        self,
        chat: ChatFormat,
        *,
        encoder: Encoder | None = None,
        summarizer: Summarizer | None = None,
        config: Mapping[str, Any] | MemoryEnvConfig | None = None,
        clock: Callable[[], float] = time.time,
        **overrides,
    ):
        self.config = cfg = build(MemoryEnvConfig, config, **overrides)
        if T.SUMMARY in cfg.enabled_tools and summarizer is None:
            raise ValueError("Summary_context is enabled: pass summarizer=, or disable the tool")
        self.chat = chat
        self.encoder = encoder if encoder is not None else default_encoder()
        self.summarizer = summarizer
        self.tools = T.select_tools(cfg.enabled_tools, T.build_tools(cfg.top_k, cfg.max_top_k))
        self.ltm = LongTermMemory(
            self.encoder,
            seed=cfg.seed,
            clock=clock,
            max_entries=cfg.max_entries,
            default_memory_type=cfg.default_memory_type,
        )
        self.stm = self._new_context()
        self.stats = ToolStats()
        self.seen: set[str] = set()
        self.retrieved: list[tuple[int, str, str]] = []  # (step, stage, memory_id)
        self.step_index = 0
        self._turn: set[Message] = set()  # messages of the turn being executed

    def _new_context(self) -> ShortTermContext:
        return ShortTermContext(
            self.chat,
            t_max=self.config.t_max,
            encoder=self.encoder,
            theta=self.config.theta,
            summary_role=self.config.summary_role,
        )

    # -- stage and context setup (called by the episode runner) --------------------------------

    @property
    def stage(self) -> str:
        return self.stm.stage

    @stage.setter
    def stage(self, value: str) -> None:
        self.stm.stage = str(value)

    def system_prompt(self, instructions: str = "") -> str:
        return T.system_prompt(self.tools, instructions, self.config.prompt_style)

    def reset_context(self, system_prompt: str | None = None) -> Message:
        """Start a fresh context (a new stage) holding only the system prompt.

        Token usage (peak, overflows, evictions) carries over: it is the episode's, not the
        stage's, for the overflow penalty and for when the context first hit its budget.
        """
        old = self.stm
        self.stm = self._new_context()
        self.stm.stage = old.stage
        self.stm.carry_usage(old)
        return self.stm.add(
            "system", self.system_prompt() if system_prompt is None else system_prompt
        )

    def add_message(self, role: str, text: str, *, protected: bool = False) -> Message:
        """Inject a message (a conversation turn, a distractor, the task query)."""
        return self.stm.add(role, text, protected=protected)

    def retrieve_into_context(self, query: str, top_k: int | None = None) -> Message:
        """Environment-driven retrieval (stage-1 introspection, RAG baselines); not an agent call.

        The message's `data` holds the results (`{"results": [...]}`) as structured values.
        """
        hits = self.ltm.search(query, top_k or self.config.top_k)
        self.seen.update(h.entry.id for h in hits)  # the agent now sees these ids
        fields = {"results": _results(hits)}
        text = _observation(T.RETRIEVE, True, fields)
        return self.stm.add("tool", text, kind="retrieval", data=fields)

    # -- the agent step -----------------------------------------------------------------------

    @property
    def limit_hit(self) -> bool:
        """The context has gone over its budget at least once this episode."""
        return self.stm.overflows > 0

    def step(self, response_ids: Sequence[int] | np.ndarray, text: str | None = None) -> StepResult:
        """Append the sampled turn, parse it, run its calls, append their observations."""
        assistant = self.stm.add_generated(response_ids, text)
        turn = parse_turn(assistant.text, self.config.limits)
        observations, records = self.execute(turn, current=assistant)
        return StepResult(
            turn,
            assistant,
            observations,
            turn.answer is not None,
            tuple(records),
            self.stm.peak_tokens,
            self.limit_hit,
        )

    def execute(
        self, turn: Turn, current: Message | None = None
    ) -> tuple[list[Message], list[CallRecord]]:
        """Run a parsed turn's calls: (tool messages appended to the context, their records).

        `current` is the assistant message that made the calls: it and this turn's observations
        are outside any Summary/Filter span.
        """
        self.step_index += 1
        self.stats.turns += 1
        self._turn = {current} if current is not None else set()
        try:
            if turn.error is not None:
                self.stats.violations[turn.violation or "unknown"] += 1
                code = "limit" if turn.violation in LIMIT_VIOLATIONS else "malformed"
                before = self.stm.prompt_tokens
                rec = self._record(
                    TURN, {}, False, code, before, not self.limit_hit, {"error": turn.error}
                )
                return [self._observe(None, rec)], [rec]
            if turn.answer is not None:
                self.stats.answers += 1
                return [], []
            observations, records = [], []
            for c in turn.tool_calls:
                rec = self._run_call(c["name"], c["arguments"])
                observations.append(self._observe(rec.name, rec))
                records.append(rec)
            return observations, records
        finally:
            self._turn = set()

    def _observe(self, name: str | None, rec: CallRecord) -> Message:
        """The tool message the model reads: the record's result rendered as JSON."""
        msg = self.stm.add(
            "tool",
            _observation(name, rec.ok, rec.result),
            kind="retrieval" if rec.ok and rec.name == T.RETRIEVE else "",
            data=rec.result,
        )
        self._turn.add(msg)
        return msg

    def _record(
        self,
        name: str,
        arguments: dict[str, Any],
        ok: bool,
        code: str | None,
        before: int,
        before_limit: bool,
        result: dict[str, Any],
    ) -> CallRecord:
        rec = CallRecord(
            step=self.step_index,
            stage=self.stage,
            name=name,
            arguments=arguments,
            ok=ok,
            code=code,
            tokens_before=before,
            tokens_after=self.stm.prompt_tokens,
            before_limit=before_limit,
            result=result,
        )
        self.stats.add(rec)
        return rec

    def _run_call(self, name: str, arguments: dict[str, Any]) -> CallRecord:
        before = self.stm.prompt_tokens
        before_limit = not self.limit_hit
        spec = self.tools.get(name)
        if spec is None:  # an arbitrary string: bound what is echoed and what is counted
            name, shown = UNKNOWN, json.dumps(name[:40] + ("…" if len(name) > 40 else ""))
        try:
            if spec is None:
                raise _CallError(
                    "unknown_tool", f"unknown tool {shown}; available: {', '.join(self.tools)}"
                )
            if not isinstance(arguments, Mapping):
                raise _CallError("bad_args", f"{name}: arguments must be a JSON object")
            if name == T.DELETE and arguments.get("confirmation") is not True:
                raise _CallError(
                    "missing_confirmation",
                    'Delete_memory needs "confirmation": true; nothing was deleted',
                )
            args, problem = T.validate_arguments(spec, arguments)
            if problem is not None:
                raise _CallError(*problem)
            self._check_sizes(name, args)
            fields = self._dispatch(name, args)
        except (_CallError, LTMError, ContextError) as e:
            code = e.code if isinstance(e, _CallError) else _error_code(e)
            args = dict(arguments) if isinstance(arguments, Mapping) else {}
            return self._record(name, args, False, code, before, before_limit, {"error": str(e)})
        if name in (T.SUMMARY, T.FILTER) and self.stm.prompt_tokens >= before:
            changed = fields.get("removed_messages") or fields.get("summarized_messages")
            fields["note"] = NOT_SHORTER if changed else NO_CHANGE
        return self._record(name, args, True, None, before, before_limit, fields)

    # -- the six tools ------------------------------------------------------------------------

    def _dispatch(self, name: str, a: dict[str, Any]) -> dict[str, Any]:
        """The call's structured result; raises _CallError, LTMError, ContextError."""
        if name == T.ADD:
            metadata = ({"source": self.stage} if self.stage else {}) | a.get("metadata", {})
            entry = self.ltm.add(a["content"], metadata, a.get("memory_type"))
            if self.config.added_ids_are_seen:
                self.seen.add(entry.id)
            return {"memory_id": entry.id}
        if name in (T.UPDATE, T.DELETE):
            memory_id = a["memory_id"]
            self._check_id(memory_id)
            if name == T.UPDATE:
                self.ltm.update(memory_id, a["content"], a.get("metadata"))
                return {"memory_id": memory_id, "updated": True}
            self.ltm.delete(memory_id)
            self.seen.discard(memory_id)
            return {"memory_id": memory_id, "deleted": True}
        if name == T.RETRIEVE:
            hits = self.ltm.search(a["query"], a["top_k"], a.get("metadata_filter"))
            self.seen.update(h.entry.id for h in hits)
            self.retrieved.extend((self.step_index, self.stage, h.entry.id) for h in hits)
            return {"results": _results(hits)}
        if name == T.SUMMARY:
            if self.summarizer is None:  # the constructor requires one while the tool is on
                raise _CallError("failed", "no summarizer is configured")
            removed, _ = self.stm.summarize(a["span"], self.summarizer, keep=self._turn)
            return {"summarized_messages": len(removed), "context_tokens": self.stm.prompt_tokens}
        if name == T.FILTER:
            removed = self.stm.filter(a["criteria"], keep=self._turn)
            return {"removed_messages": len(removed), "context_tokens": self.stm.prompt_tokens}
        raise _CallError("unknown_tool", f"no handler for {name!r}")  # unreachable by design

    def _check_sizes(self, name: str, args: Mapping[str, Any]) -> None:
        cfg = self.config
        content = args.get("content")
        if isinstance(content, str) and len(content) > cfg.max_content_chars:
            raise _CallError(
                "limit", f"{name}: content has {len(content)} characters; "
                f"the limit is {cfg.max_content_chars}",
            )  # fmt: skip
        for key in ("metadata", "metadata_filter"):
            value = args.get(key)
            if value is None:
                continue
            try:
                size = len(json.dumps(value, ensure_ascii=False))
            except (TypeError, ValueError, RecursionError):
                raise _CallError("bad_args", f"{name}: {key} is not plain JSON") from None
            if size > cfg.max_metadata_chars:
                raise _CallError(
                    "limit", f"{name}: {key} has {size} characters of JSON; "
                    f"the limit is {cfg.max_metadata_chars}",
                )  # fmt: skip

    def _check_id(self, memory_id: str) -> None:
        if memory_id not in self.ltm:
            raise _CallError("unknown_id", f"no memory with id {memory_id!r}")
        if self.config.require_seen_id and memory_id not in self.seen:
            shown_by = (
                "Add_memory or a retrieval" if self.config.added_ids_are_seen else "a retrieval"
            )
            raise _CallError(
                "unseen_id",
                f"{memory_id} was not shown by {shown_by} in this episode; "
                "retrieve it with Retrieve_memory first",
            )

    # -- forking and replay -------------------------------------------------------------------

    def snapshot(self) -> EnvSnapshot:
        return EnvSnapshot(
            self.ltm.snapshot(),
            self.stm.copy(),
            frozenset(self.seen),
            self.stats.copy(),
            self.step_index,
            tuple(self.retrieved),
        )

    def restore(self, snap: EnvSnapshot) -> None:
        self.ltm.restore(snap.ltm)
        self.stm = snap.stm.copy()
        self.seen = set(snap.seen)
        self.stats = snap.stats.copy()
        self.step_index = snap.step
        self.retrieved = list(snap.retrieved)

    def fork(self) -> MemoryEnv:
        """An independent environment in the same state (long-term memory copy-on-write)."""
        other = object.__new__(MemoryEnv)
        other.__dict__.update(self.__dict__)
        other.ltm = self.ltm.fork()
        other.stm = self.stm.copy()
        other.seen = set(self.seen)
        other.stats = self.stats.copy()
        other.retrieved = list(self.retrieved)
        other._turn = set()
        return other

    def metrics(self) -> dict[str, int]:
        return (
            self.stats.as_dict()
            | {f"stm/{k}": v for k, v in self.stm.stats().items()}
            | {"ltm/entries": len(self.ltm)}
        )
