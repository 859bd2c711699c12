"""Continuous batching over one `SamplerSession`: requests join free rows while others decode.

One engine thread owns the session and its R rows. Each iteration it
  1. drops cancelled requests (a client went away), freeing their rows;
  2. admits waiting requests into free rows and, in the same prefill call, commits the pending
     last token of every running row (`SamplerSession.feed`);
  3. decodes every running row for at most `decode_chunk` tokens: free rows together in one
     call per distinct stop list (rows may differ in temperature, top_p, seed and budget),
     grammar-constrained rows one token per call with their masks;
  4. hands each request its new text, and frees the row of every request that finished.
A request therefore waits at most one chunk before it starts, and a long request never holds
a short one back: the short one leaves after its own last chunk and its row takes the next
request at once. Stop strings are matched on each request's whole text, so they fire even when
they straddle two chunks.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from collections.abc import Callable

import numpy as np
from absl import logging

from agemem_jax.sampler import SamplerSession, SamplingParams
from agemem_jax.serving.grammar import Constraint


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """The server's limits and batching, settable by `experiments/serve.py` flags."""

    max_rows: int = 8  # rows of the sampler batch = requests decoded concurrently
    decode_chunk: int = 16  # tokens a row decodes before the engine admits new requests
    max_prompt_tokens: int = 4096  # longer prompts get a 400 with their token count
    max_output_tokens: int = 1024  # max_tokens above this (or unset) is clamped to it
    max_body_bytes: int = 1 << 20  # larger request bodies get a 413
    max_n: int = 8  # choices per request
    seed: int = 0  # PRNG seed of requests that bring none
    model_name: str = ""  # the id clients send as `model`; empty: the checkpoint's name
    api_key: str = ""  # empty: no authentication
    embedding_model: str = "all-MiniLM-L6-v2"  # the id of /v1/embeddings' model

    def __post_init__(self):
        for name in ("max_rows", "decode_chunk", "max_prompt_tokens", "max_output_tokens",
                     "max_body_bytes", "max_n"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass
class Event:
    """What a request learns after a chunk: new text and tokens, and the end once it came."""

    text: str
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str | None = None  # "stop" | "length" | "error"
    error: str | None = None


@dataclasses.dataclass(eq=False)
class Request:
    """One completion (one choice of a chat request). `sink` receives its events, from the
    engine thread; `cancel()` may be called from any thread."""

    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams
    sink: Callable[[Event], None]
    stop: tuple[str, ...] = ()
    seed: int | None = None
    constraint: Constraint | None = None
    submitted: float = dataclasses.field(default_factory=time.perf_counter)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclasses.dataclass(eq=False)
class _Slot:
    req: Request
    fresh: bool = True  # admitted this iteration: its prompt is prefilled by the next feed
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    sent_text: int = 0  # characters of the text already sent
    sent_tokens: int = 0


class Engine:
    """The thread that owns the sampler. `submit` is thread-safe; `close` stops the thread."""

    def __init__(self, session: SamplerSession, cfg: ServeConfig):
        self.session = session
        self.cfg = cfg
        if session.tokenizer is None:
            raise ValueError("the engine needs a session with a tokenizer")
        self.tokenizer = session.tokenizer
        self._inbox: queue.Queue[Request | None] = queue.Queue()
        self._waiting: collections.deque[Request] = collections.deque()
        self._slots: dict[int, _Slot] = {}
        self._rng = np.random.default_rng(cfg.seed)
        self._closed = False
        self.stats = collections.Counter()
        self._thread = threading.Thread(target=self._run, name="serve-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public
    def submit(self, req: Request) -> None:
        if self._closed:
            raise RuntimeError("the engine is closed")
        self._inbox.put(req)

    def close(self) -> None:
        self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout=30)

    @property
    def busy_rows(self) -> int:
        return len(self._slots)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        while not self._closed:
            self._collect(block=not self._slots and not self._waiting)
            try:
                self._iteration()
            except Exception as e:  # a bug, or the device failed: fail these requests, go on
                logging.exception("engine iteration failed")
                for slot in self._slots.values():
                    slot.req.sink(Event("", [], [], "error", f"{type(e).__name__}: {e}"))
                self._slots.clear()
        for req in [*self._waiting, *(s.req for s in self._slots.values())]:
            req.sink(Event("", [], [], "error", "the server is shutting down"))

    def _collect(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _iteration(self) -> None:
        for row in [r for r, s in self._slots.items() if s.req.cancelled]:
            del self._slots[row]
            self.stats["cancelled"] += 1
        self._waiting = collections.deque(r for r in self._waiting if not r.cancelled)
        free = [r for r in range(self.session.num_rows) if r not in self._slots]
        while free and self._waiting:
            self._slots[free.pop(0)] = _Slot(self._waiting.popleft())
        if not self._slots:
            return
        resets = {r: s.req.prompt for r, s in self._slots.items() if s.fresh}
        seeds = {
            r: s.req.seed if s.req.seed is not None else int(self._rng.integers(1 << 31))
            for r, s in self._slots.items()
            if s.fresh
        }
        appends = {r: [] for r, s in self._slots.items() if not s.fresh}
        self.session.feed(append=appends, reset=resets, seeds=seeds)
        for s in self._slots.values():
            s.fresh = False
        self.stats["iterations"] += 1

        groups: dict[tuple[str, ...], list[int]] = collections.defaultdict(list)
        constrained = []
        for r, s in self._slots.items():
            (constrained if s.req.constraint is not None else groups[s.req.stop]).append(r)
        for stops, rows in groups.items():
            budget = {r: min(self.cfg.decode_chunk, self._left(r)) for r in rows}
            self._decode(rows, budget, stops, None)
        if constrained:
            masks = {r: self._slots[r].req.constraint.mask() for r in constrained}  # type: ignore[union-attr]
            self._decode(constrained, {r: 1 for r in constrained}, (), masks)

    def _left(self, row: int) -> int:
        slot = self._slots[row]
        return slot.req.max_tokens - len(slot.tokens)

    def _decode(self, rows, budget, stops, masks) -> None:
        params = {r: self._slots[r].req.sampling for r in rows}
        outs = self.session.decode(budget, params, rows=rows, stop=stops, allowed=masks)
        self.stats["decode_calls"] += 1
        lengths = self.session.lengths
        for r in rows:
            out = outs[r]
            assert out is not None
            slot = self._slots[r]
            finish = None
            tokens = out.tokens
            if out.finish_reason == "eos":
                tokens, finish = tokens[:-1], "stop"
            elif out.finish_reason == "stop":
                finish = "stop"
            if slot.req.constraint is not None and finish is None:
                for t in tokens:
                    slot.req.constraint.consume(t)
                if slot.req.constraint.done:
                    finish = "stop"
            slot.tokens += tokens
            slot.logprobs += out.model_logprobs[: len(tokens)]
            if finish is None and (self._left(r) <= 0 or lengths[r] >= self.session.max_len):
                finish = "length"
            self._emit(r, slot, finish)

    def _emit(self, row: int, slot: _Slot, finish: str | None) -> None:
        text = self.tokenizer.decode(slot.tokens, skip_special_tokens=False)
        stops = slot.req.stop
        # The earliest stop string anywhere in the text ends the request there.
        hits = [(i, s) for s in stops if (i := text.find(s, max(0, slot.sent_text - len(s)))) >= 0]
        if hits:
            text, finish = text[: min(hits)[0]], "stop"
        if finish is None:
            # Hold back a partial character and any tail that may grow into a stop string.
            base = keep = len(text.rstrip("\ufffd"))
            for s in stops:
                for k in range(min(len(s) - 1, base), 0, -1):
                    if text[:base].endswith(s[:k]):
                        keep = min(keep, base - k)
                        break
            text = text[:keep]
        new_text = text[slot.sent_text :] if len(text) > slot.sent_text else ""
        n_tok = len(slot.tokens)
        event = Event(
            new_text,
            slot.tokens[slot.sent_tokens : n_tok],
            slot.logprobs[slot.sent_tokens : n_tok],
            finish,
        )
        slot.sent_text = max(slot.sent_text, len(text))
        slot.sent_tokens = n_tok
        if finish is not None:
            del self._slots[row]
            self.stats["finished"] += 1
        if event.text or event.tokens or finish is not None:
            slot.req.sink(event)
