"""What the memory baselines share: the LLM-call interface, lock-step batching, JSON parsing,
and the statistics every system reports.

A system's `ingest` and `search` are generators: each LLM call is a `yield` of an `LLMRequest`
that resumes with its `LLMReply`. `run_all` drives the systems of all the episodes of an
evaluation in lock-step, so every round of their calls is one batched `LLM.complete`, which is
what the jitted sampler wants. The `LLM` is a protocol: `SamplerLLM` runs our own sampler on the
agent's backbone; a client for an OpenAI-compatible server would be a second implementation with
the same `complete`.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import json
import re
import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from agemem_jax.chat import ChatFormat
from agemem_jax.sampler import generate

R = TypeVar("R")
BAD_REPLIES_KEPT = 3  # unparseable replies kept per episode for inspection


@dataclasses.dataclass(frozen=True)
class LLMRequest:
    """One chat completion a memory system asks for."""

    purpose: str  # which step of the pipeline (e.g. "extract", "update"), for accounting
    messages: tuple[Mapping[str, str], ...]
    temperature: float
    max_new_tokens: int


@dataclasses.dataclass(frozen=True)
class LLMReply:
    text: str
    prompt_tokens: int
    completion_tokens: int


class LLM(Protocol):
    """Completes a batch of requests, one reply per request, in order."""

    def complete(self, requests: Sequence[LLMRequest]) -> list[LLMReply]: ...


class SamplerLLM:
    """Our sampler on the agent's backbone. Requests with the same temperature and budget are
    decoded as one batch; each batch draws with a fresh seed, so sampled calls differ."""

    def __init__(self, model, tokenizer, *, max_prompt_tokens: int = 4096, seed: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.chat = ChatFormat(tokenizer)
        self.max_prompt_tokens = max_prompt_tokens
        self.seed = seed
        self._batches = 0

    def _ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        ids = self.chat.conversation([dict(m) for m in messages])
        if len(ids) > self.max_prompt_tokens:
            # Keep the instructions (head) and the newest material with the generation prompt
            # (tail): an overlong prompt degrades, it never fails the episode.
            head = self.max_prompt_tokens // 4
            ids = ids[:head] + ids[len(ids) - (self.max_prompt_tokens - head) :]
        return ids

    def complete(self, requests: Sequence[LLMRequest]) -> list[LLMReply]:
        out: list[LLMReply | None] = [None] * len(requests)
        groups: dict[tuple[float, int], list[int]] = collections.defaultdict(list)
        for i, req in enumerate(requests):
            groups[(float(req.temperature), int(req.max_new_tokens))].append(i)
        for (temperature, max_new), rows in groups.items():
            prompts = [self._ids(requests[i].messages) for i in rows]
            self._batches += 1
            completions = generate(
                self.model,
                self.tokenizer,
                prompts,
                max_new,
                temperature=temperature,
                seed=self.seed + self._batches,
            )
            for i, ids, c in zip(rows, prompts, completions, strict=True):
                out[i] = LLMReply(c.text or "", len(ids), len(c.tokens))
        return [r for r in out if r is not None]


# ------------------------------------------------------------------------------ statistics


@dataclasses.dataclass
class SystemStats:
    """What one memory system did in one episode."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls_by_purpose: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Malformed model output by kind (bad_json, bad_schema, unknown_id, ...): never dropped.
    parse_failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    ingest_seconds: list[float] = dataclasses.field(default_factory=list)
    search_seconds: list[float] = dataclasses.field(default_factory=list)
    # The first replies that held no JSON (cut to 300 characters): what a failing model writes.
    bad_replies: list[str] = dataclasses.field(default_factory=list)

    def account(self, request: LLMRequest, reply: LLMReply) -> None:
        self.llm_calls += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.calls_by_purpose[request.purpose] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "llm_calls": self.llm_calls,
            "llm_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "calls_by_purpose": dict(self.calls_by_purpose),
            "parse_failures": sum(self.parse_failures.values()),
            "parse_failures_by_kind": dict(self.parse_failures),
            "ingests": len(self.ingest_seconds),
            "searches": len(self.search_seconds),
            "ingest_p50_s": _p50(self.ingest_seconds),
            "search_p50_s": _p50(self.search_seconds),
            "bad_replies": list(self.bad_replies),
        }


def _p50(xs: Sequence[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def summarize_stats(stats: Sequence[SystemStats]) -> dict[str, Any]:
    """Per-episode means, and medians over every ingest and search of the evaluation."""
    n = len(stats)
    if not n:
        return {}
    kinds: collections.Counter = collections.Counter()
    for s in stats:
        kinds.update(s.parse_failures)
    return {
        "llm_calls_per_episode": sum(s.llm_calls for s in stats) / n,
        "llm_tokens_per_episode": sum(s.prompt_tokens + s.completion_tokens for s in stats) / n,
        "json_parse_failures": sum(kinds.values()),
        "json_parse_failures_by_kind": dict(kinds),
        "ingest_p50_s": _p50([x for s in stats for x in s.ingest_seconds]),
        "search_p50_s": _p50([x for s in stats for x in s.search_seconds]),
    }


# ------------------------------------------------------------------------------ JSON replies

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


def parse_json(text: str) -> Any | None:
    """The first JSON object in a reply (inside a code fence or not), or None.

    Models wrap JSON in fences or prose; the first `{` that starts a valid object wins.
    """
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for chunk in candidates:
        for start in (i for i, ch in enumerate(chunk) if ch == "{"):
            try:
                value, _ = _DECODER.raw_decode(chunk, start)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def str_list(value: Any) -> list[str] | None:
    """`value` as a list of non-empty strings, or None when it is not a list of strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return [v.strip() for v in value if v.strip()]


# ------------------------------------------------------------------------------ the systems


@dataclasses.dataclass(frozen=True)
class Recall:
    """One item a system's search returns: its id in the system's store and its text."""

    id: str
    text: str


Call = Generator[LLMRequest, LLMReply, R]


class MemorySystem(abc.ABC):
    """One episode's memory system. `domain` picks the extraction prompts: "conversation"
    (three-stage HotpotQA) or "environment" (interactive benchmarks)."""

    name: str = ""

    def __init__(self, domain: str):
        if domain not in ("conversation", "environment"):
            raise ValueError(f"domain must be 'conversation' or 'environment', got {domain!r}")
        self.domain = domain
        self.stats = SystemStats()

    def ask(
        self, purpose: str, system: str, user: str, temperature: float, max_new_tokens: int
    ) -> Call[str]:
        """One LLM call (yielded to the driver); returns the reply text."""
        request = LLMRequest(
            purpose,
            ({"role": "system", "content": system}, {"role": "user", "content": user}),
            temperature,
            max_new_tokens,
        )
        reply = yield request
        self.stats.account(request, reply)
        return reply.text

    def ask_json(
        self, purpose: str, system: str, user: str, temperature: float, max_new_tokens: int
    ) -> Call[dict | None]:
        """An LLM call whose reply must hold a JSON object; a reply without one is counted."""
        text = yield from self.ask(purpose, system, user, temperature, max_new_tokens)
        value = parse_json(text)
        if value is None:
            self.fail("bad_json")
            if len(self.stats.bad_replies) < BAD_REPLIES_KEPT:
                self.stats.bad_replies.append(text[:300])
        return value

    def fail(self, kind: str, n: int = 1) -> None:
        self.stats.parse_failures[kind] += n

    @abc.abstractmethod
    def ingest(self, messages: Sequence[tuple[str, str]]) -> Call[None]:
        """Bring new (role, content) messages into memory."""

    @abc.abstractmethod
    def search(self, query: str) -> Call[list[Recall]]:
        """What the system recalls for `query`, best first."""

    @abc.abstractmethod
    def memories(self) -> list[str]:
        """Every stored memory as text (what MQ judges)."""

    def close(self) -> None:
        """Release external resources (a graph database)."""
        return None


def transcript(messages: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"{role}: {content}" for role, content in messages)


def run_all(llm: LLM, calls: Sequence[Call[R]]) -> tuple[list[R], list[float]]:
    """Drive generators in lock-step: each round sends every pending request in one
    `llm.complete`. Returns each generator's result and its wall time (from the start until it
    finished, waits for the batch included: that is the latency a batched caller sees)."""
    results: list[Any] = [None] * len(calls)
    seconds = [0.0] * len(calls)
    pending: dict[int, LLMRequest] = {}
    t0 = time.perf_counter()

    def advance(i: int, reply: LLMReply | None) -> None:
        try:
            pending[i] = calls[i].send(reply) if reply is not None else next(calls[i])
        except StopIteration as stop:
            pending.pop(i, None)
            results[i] = stop.value
            seconds[i] = time.perf_counter() - t0

    for i in range(len(calls)):
        advance(i, None)
    while pending:
        rows = sorted(pending)
        replies = llm.complete([pending[i] for i in rows])
        if len(replies) != len(rows):
            raise RuntimeError(f"the LLM returned {len(replies)} replies for {len(rows)}")
        for i, reply in zip(rows, replies, strict=True):
            advance(i, reply)
    return results, seconds


def ingest_all(
    llm: LLM, systems: Sequence[MemorySystem], messages: Sequence[Sequence[tuple[str, str]]]
) -> None:
    """Each system ingests its messages; all in lock-step."""
    _, seconds = run_all(llm, [s.ingest(m) for s, m in zip(systems, messages, strict=True)])
    for s, sec in zip(systems, seconds, strict=True):
        s.stats.ingest_seconds.append(sec)


def search_all(
    llm: LLM, systems: Sequence[MemorySystem], queries: Sequence[str]
) -> list[list[Recall]]:
    results, seconds = run_all(llm, [s.search(q) for s, q in zip(systems, queries, strict=True)])
    for s, sec in zip(systems, seconds, strict=True):
        s.stats.search_seconds.append(sec)
    return results
