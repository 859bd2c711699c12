"""The memory environment: runs what the policy emits against long- and short-term memory.

Per agent step the episode runner calls `step(response_ids)`. The environment appends the
assistant turn to the context (exact sampled ids), parses it, executes its tool calls, and
appends one tool message per call. Malformed output never raises. It becomes an error
observation the model can read, and it is counted in `stats`, as is every call and every error
by category (`ERROR_CODES`).

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

    enabled_tools: tuple[str, ...] = T.TOOL_NAMES
    t_max: int = 8192  # context budget in tokens
    theta: float = 0.6  # Filter_context cosine threshold
    top_k: int = 3  # Retrieve_memory default
    max_top_k: int = 10
    require_seen_id: bool = True  # Update/Delete only ids shown by Add/Retrieve this episode
    max_entries: int | None = None
    default_memory_type: str = "general"
    summary_role: str = "user"
    seed: int = 0  # memory id RNG
    prompt_style: str = "json"  # how tools are listed in the system prompt: json | compact
    limits: ProtocolLimits = dataclasses.field(default_factory=ProtocolLimits)

    @classmethod
    def from_any(cls, cfg: Mapping[str, Any] | MemoryEnvConfig | None = None, **overrides):
        """From a dataclass, a dict or an ml_collections ConfigDict, plus keyword overrides."""
        if isinstance(cfg, MemoryEnvConfig):
            base = dataclasses.asdict(cfg) | {"limits": cfg.limits}
        else:
            base = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg or {}))
        base.update(overrides)
        unknown = sorted(set(base) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown memory env settings {unknown}")
        if "enabled_tools" in base:
            base["enabled_tools"] = tuple(base["enabled_tools"])
        base["limits"] = ProtocolLimits.from_any(base.get("limits"))
        return cls(**base)


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One executed (or rejected) call, for per-tool statistics and the reward."""

    step: int
    stage: str
    name: str
    ok: bool
    code: str | None  # one of ERROR_CODES when not ok
    tokens_before: int  # prompt tokens when the call ran
    tokens_after: int
    info: dict[str, Any]


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
            self.errors[rec.code] += 1
            self.tool_errors[rec.name, rec.code] += 1

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


def _observation(name: str | None, ok: bool, **fields) -> str:
    body = ({"tool": name} if name else {}) | {"status": "ok" if ok else "error", **fields}
    return json.dumps(body, ensure_ascii=False)


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
        self.config = cfg = MemoryEnvConfig.from_any(config, **overrides)
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
        """Start a fresh context (a new stage) holding only the system prompt."""
        stage = self.stm.stage
        self.stm = self._new_context()
        self.stm.stage = stage
        return self.stm.add(
            "system", self.system_prompt() if system_prompt is None else system_prompt
        )

    def add_message(self, role: str, text: str, *, protected: bool = False) -> Message:
        """Inject a message (a conversation turn, a distractor, the task query)."""
        return self.stm.add(role, text, protected=protected)

    def retrieve_into_context(self, query: str, top_k: int | None = None) -> Message:
        """Environment-driven retrieval (stage-1 introspection, RAG baselines); not an agent call."""
        hits = self.ltm.search(query, top_k or self.config.top_k)
        self.seen.update(h.entry.id for h in hits)  # the agent now sees these ids
        return self.stm.add("tool", _observation(T.RETRIEVE, True, results=_results(hits)))

    # -- the agent step -----------------------------------------------------------------------

    def step(self, response_ids: Sequence[int] | np.ndarray, text: str | None = None) -> StepResult:
        """Append the sampled turn, parse it, run its calls, append their observations."""
        assistant = self.stm.add_generated(response_ids, text)
        turn = parse_turn(assistant.text, self.config.limits)
        observations = self.execute(turn, current=assistant)
        return StepResult(turn, assistant, observations, turn.answer is not None)

    def execute(self, turn: Turn, current: Message | None = None) -> list[Message]:
        """Run a parsed turn's calls; returns the tool messages appended to the context.

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
                self._record(
                    TURN, False, code, self.stm.prompt_tokens, {"violation": turn.violation}
                )
                return [self._observe(_observation(None, False, error=turn.error))]
            if turn.answer is not None:
                self.stats.answers += 1
                return []
            return [self._run_call(c["name"], c["arguments"]) for c in turn.tool_calls]
        finally:
            self._turn = set()

    def _observe(self, text: str) -> Message:
        msg = self.stm.add("tool", text)
        self._turn.add(msg)
        return msg

    def _record(self, name: str, ok: bool, code: str | None, before: int, info: dict) -> None:
        self.stats.add(
            CallRecord(
                self.step_index, self.stage, name, ok, code, before, self.stm.prompt_tokens, info
            )
        )

    def _run_call(self, name: str, arguments: dict[str, Any]) -> Message:
        before = self.stm.prompt_tokens
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
            fields, info = self._dispatch(name, args)
        except (_CallError, LTMError, ContextError) as e:
            code = e.code if isinstance(e, _CallError) else _error_code(e)
            self._record(name, False, code, before, {"error": str(e)})
            return self._observe(_observation(name, False, error=str(e)))
        self._record(name, True, None, before, info)
        return self._observe(_observation(name, True, **fields))

    # -- the six tools ------------------------------------------------------------------------

    def _dispatch(self, name: str, a: dict[str, Any]) -> tuple[dict, dict]:
        """Returns (observation fields, record info); raises _CallError, LTMError, ContextError."""
        if name == T.ADD:
            metadata = ({"source": self.stage} if self.stage else {}) | a.get("metadata", {})
            entry = self.ltm.add(a["content"], metadata, a.get("memory_type"))
            self.seen.add(entry.id)
            return {"memory_id": entry.id}, {"memory_id": entry.id}
        if name in (T.UPDATE, T.DELETE):
            memory_id = a["memory_id"]
            self._check_id(memory_id)
            if name == T.UPDATE:
                self.ltm.update(memory_id, a["content"], a.get("metadata"))
                return {"memory_id": memory_id, "updated": True}, {"memory_id": memory_id}
            self.ltm.delete(memory_id)
            self.seen.discard(memory_id)
            return {"memory_id": memory_id, "deleted": True}, {"memory_id": memory_id}
        if name == T.RETRIEVE:
            hits = self.ltm.search(a["query"], a["top_k"], a.get("metadata_filter"))
            ids = [h.entry.id for h in hits]
            self.seen.update(ids)
            self.retrieved.extend((self.step_index, self.stage, i) for i in ids)
            return {"results": _results(hits)}, {"memory_ids": ids}
        if name == T.SUMMARY:
            removed, _ = self.stm.summarize(a["span"], self.summarizer, keep=self._turn)
            fields = {"summarized_messages": len(removed)}
            return fields | {"context_tokens": self.stm.prompt_tokens}, {"removed": len(removed)}
        if name == T.FILTER:
            removed = self.stm.filter(a["criteria"], keep=self._turn)
            fields = {"removed_messages": len(removed)}
            return fields | {"context_tokens": self.stm.prompt_tokens}, {"removed": len(removed)}
        raise _CallError("unknown_tool", f"no handler for {name!r}")  # unreachable by design

    def _check_id(self, memory_id: str) -> None:
        if memory_id not in self.ltm:
            raise _CallError("unknown_id", f"no memory with id {memory_id!r}")
        if self.config.require_seen_id and memory_id not in self.seen:
            raise _CallError(
                "unseen_id",
                f"{memory_id} was not returned by Add_memory or Retrieve_memory in this "
                "episode; retrieve it first",
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
