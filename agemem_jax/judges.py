"""Judges: scores in [0, 1] for answers, stored memories and retrievals (spec sections 6 and 8).

One interface serves every use of a judge in the method:

- `task`: the agent's answer against the reference answer (J, and R_task);
- `memory`: the entries left in LTM against the supporting facts (MQ);
- `storage`: one entry added in stage 1, high quality or not (R_storage counts these);
- `relevance`: the set of retrieved entries against the query (R_relevance).

Three judges implement it:

- `RuleJudge` (`"rule"`): offline and deterministic, the default on CPU and in tests. The task
  score is HotpotQA's answer F1 after the official answer normalization; the other three are
  lexical overlap against the supporting facts **(ours)**: the spec asks an LLM for these.
- `LocalJudge` (`"local"`): a separate, frozen model loaded from `JudgeConfig.checkpoint` and
  decoded greedily, prompted with the spec's rubrics written in our own words. It never sees
  the policy's parameters, so the judge cannot drift with the policy it scores.
- `HttpJudge` (`"http"`): any OpenAI-compatible `/chat/completions` endpoint, with deadlines,
  bounded retries, a concurrency limit and a response cache.

LLM replies are parsed as one number in [0, 1]. A reply that is not one, or (with
`on_failure="count"`) a request the endpoint could not answer, is a *failure*: `score` returns
None in its place and counts it in `judge.stats["failures"]`; it never becomes a 0. Empty inputs
(no answer text, no entries, nothing retrieved) score 0 without asking any model **(ours)**, so
every judge agrees on them. `JudgeConfig` holds every setting with its default.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agemem_jax import prompts
from agemem_jax.dataclass_config import build
from agemem_jax.text import entry_fact_overlap, f1_score, lexical_memory_quality

KINDS = ("task", "memory", "storage", "relevance")

# A batch of chat prompts (each a list of {"role", "content"} dicts) -> one reply text per prompt.
GenerateFn = Callable[[list[list[dict[str, str]]]], Sequence[str]]


class JudgeError(RuntimeError):
    """The judge cannot produce scores (bad config, bad checkpoint, endpoint refusing requests)."""


class JudgeUnavailable(JudgeError):
    """The endpoint gave no usable reply (down, timing out, 429/5xx, not a chat completion).

    Unlike a refused request (4xx), this may pass, so `on_failure="count"` counts it per request
    instead of stopping the run.
    """


JUDGE_KINDS = ("rule", "local", "http")
FAILURE_POLICIES = ("raise", "count")


@dataclass(frozen=True)
class JudgeConfig:
    """Every judge setting, with its default: the single source of the `judge` config block."""

    kind: str = "rule"  # rule (offline) | local (a frozen checkpoint) | http (OpenAI-compatible)
    checkpoint: str = ""  # local: HF folder, .gguf file or embedded alias; loaded apart from policy
    dtype: str = "float32"  # local: compute and parameter dtype of the judge model
    base_url: str = ""  # http: e.g. http://127.0.0.1:8000/v1 (".../chat/completions" is added)
    model: str = ""  # http: the model name the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # http: env var holding the key; unset = no auth header
    timeout: float = 30.0  # http: deadline in seconds of each attempt (connect and read)
    # http: wall-clock bound on one request, retries and waits included; a server that drips
    # bytes or asks to Retry-After past it fails the request instead of stalling the run
    deadline: float = 120.0
    max_retries: int = 3  # http: extra attempts after a connection error, timeout, 429 or 5xx
    backoff: float = 0.5  # http: first retry delay in seconds, doubled per attempt
    max_backoff: float = 8.0  # http: cap on one retry delay
    concurrency: int = 4  # requests in flight: http threads, or local prompts per decode batch
    temperature: float = 0.0  # 0 = greedy: a judge should give the same input the same score
    max_tokens: int = 16  # reply budget (local: new tokens); the rubric asks for one number
    cache_path: str = ""  # http: JSONL reply cache reused across runs; empty = in memory only
    on_failure: str = "raise"  # unavailable endpoint: raise (stop) | count (score None, go on)

    def __post_init__(self):
        if self.kind not in JUDGE_KINDS:
            raise JudgeError(f"unknown judge {self.kind!r}; choose one of {list(JUDGE_KINDS)}")
        if self.on_failure not in FAILURE_POLICIES:
            raise JudgeError(
                f"judge.on_failure={self.on_failure!r}; choose one of {list(FAILURE_POLICIES)}"
            )
        if self.timeout <= 0 or self.max_retries < 0 or self.concurrency < 1:
            raise JudgeError("judge: need timeout > 0, max_retries >= 0, concurrency >= 1")
        if self.deadline <= 0:
            raise JudgeError(f"judge.deadline={self.deadline} must be > 0")
        if self.backoff < 0 or self.max_backoff < 0 or self.temperature < 0:
            raise JudgeError("judge: backoff, max_backoff and temperature must be >= 0")
        if self.max_tokens < 1:
            raise JudgeError(f"judge.max_tokens={self.max_tokens} must be >= 1")
        if self.kind == "http" and not (self.base_url and self.model):
            raise JudgeError("the http judge needs `base_url` and `model`")


# ---------------------------------------------------------------------------------------------
# The interface.


@dataclass(frozen=True)
class JudgeRequest:
    """One thing to score. Which fields matter depends on `kind`.

    task: question, answer (reference), prediction.  memory: question, answer, entries (all LTM
    entries), facts.  storage: question, answer, entries (exactly one entry), facts.
    relevance: question, entries (the retrieved set), facts.
    """

    kind: str
    question: str
    answer: str = ""
    prediction: str = ""
    entries: tuple[str, ...] = ()
    facts: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"judge request kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "storage" and len(self.entries) != 1:
            raise ValueError(f"a storage request scores exactly one entry, got {len(self.entries)}")


class Judge:
    """Scores batches of `JudgeRequest`s: a float in [0, 1] each, or None where judging failed
    (counted in `stats["failures"]`; the caller decides what an unknown score means)."""

    name = "base"

    def __init__(self):
        self.stats: Counter[str] = Counter()

    def score(self, requests: Sequence[JudgeRequest]) -> list[float | None]:
        raise NotImplementedError

    # Conveniences over `score` for single uses.
    def task_score(self, question: str, prediction: str, answer: str) -> float | None:
        return self.score([JudgeRequest("task", question, answer, prediction)])[0]

    def memory_quality(
        self, question: str, entries: Sequence[str], facts: Sequence[str], answer: str = ""
    ) -> float | None:
        req = JudgeRequest("memory", question, answer, entries=tuple(entries), facts=tuple(facts))
        return self.score([req])[0]

    def storage_quality(
        self, question: str, answer: str, entries: Sequence[str], facts: Sequence[str] = ()
    ) -> list[float | None]:
        """One score per entry (the spec's "high quality or not" is a threshold on it)."""
        return self.score(
            [
                JudgeRequest("storage", question, answer, entries=(e,), facts=tuple(facts))
                for e in entries
            ]
        )

    def relevance(
        self, question: str, retrieved: Sequence[str], facts: Sequence[str] = (), answer: str = ""
    ) -> float | None:
        req = JudgeRequest(
            "relevance", question, answer, entries=tuple(retrieved), facts=tuple(facts)
        )
        return self.score([req])[0]


def _empty(req: JudgeRequest) -> bool:
    """Inputs every judge scores 0 without looking (see the module docstring)."""
    if req.kind == "task":
        return not req.prediction.strip()
    return not any(e.strip() for e in req.entries)


class RuleJudge(Judge):
    """Offline judge: answer F1 for the task, lexical overlap with supporting facts otherwise.

    Unlike the LLM judges, storage and relevance are scored against the supporting facts rather
    than against q and A_q **(ours)**: lexical overlap with a short question says little.
    """

    name = "rule"

    def score(self, requests: Sequence[JudgeRequest]) -> list[float | None]:
        out: list[float | None] = []
        for r in requests:
            self.stats[r.kind] += 1
            if _empty(r):
                out.append(0.0)
            elif r.kind == "task":
                out.append(f1_score(r.prediction, r.answer))
            elif r.kind == "memory":
                out.append(lexical_memory_quality(r.entries, r.facts))
            elif r.kind == "storage":
                out.append(entry_fact_overlap(r.entries[0], r.facts))
            else:
                scores = [entry_fact_overlap(e, r.facts) for e in r.entries]
                out.append(sum(scores) / len(scores))
        return out


# ---------------------------------------------------------------------------------------------
# LLM judges: rubric prompts (our wording of spec sections 6 and 8) and reply parsing.


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {x}" for x in items) if items else "(none)"


def judge_messages(req: JudgeRequest) -> list[dict[str, str]]:
    """The chat prompt an LLM judge sees for one request."""
    parts = [prompts.JUDGE_RUBRICS[req.kind], prompts.JUDGE_SCALE, f"Question: {req.question}"]
    if req.kind == "task":
        parts += [f"Reference answer: {req.answer}", f"Assistant's answer: {req.prediction}"]
    elif req.kind == "memory":
        parts += [
            f"Expected facts:\n{_bullets(req.facts)}",
            f"Stored memory entries:\n{_bullets(req.entries)}",
        ]
    elif req.kind == "storage":
        parts += [f"Reference answer: {req.answer}", f"Memory entry: {req.entries[0]}"]
    else:
        parts += [f"Retrieved entries:\n{_bullets(req.entries)}"]
    parts.append("Score (one number between 0 and 1):")
    return [
        {"role": "system", "content": prompts.JUDGE_SYSTEM_PROMPT},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_NUMBER = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?|-?\.\d+)(?:\s*(%)|\s*/\s*(\d+(?:\.\d+)?))?")


def parse_score(reply: str) -> float | None:
    """The first number of a reply as a score in [0, 1], or None when there is none.

    Accepts `0.7`, `Score: 1`, `70%` and `7/10`; reasoning inside `<think>` is ignored. A first
    number outside [0, 1] (e.g. `8` on a 0-10 scale) is unparseable rather than guessed at.
    """
    m = _NUMBER.search(_THINK.sub(" ", reply or ""))
    if m is None:
        return None
    value = float(m.group(1))
    if m.group(2):
        value /= 100.0
    elif m.group(3):
        denom = float(m.group(3))
        if denom <= 0:
            return None
        value /= denom
    return value if 0.0 <= value <= 1.0 else None


class LLMJudge(Judge):
    """Shared logic of the model-backed judges; subclasses supply `_complete`.

    `_complete` returns one reply per prompt, None where no reply came (only under
    `on_failure="count"`). Both a missing reply and one that holds no score become None.
    """

    def _complete(self, prompts: list[list[dict[str, str]]]) -> list[str | None]:
        raise NotImplementedError

    def score(self, requests: Sequence[JudgeRequest]) -> list[float | None]:
        out: list[float | None] = [0.0] * len(requests)
        todo = [i for i, r in enumerate(requests) if not _empty(r)]
        for r in requests:
            self.stats[r.kind] += 1
        if not todo:
            return out
        replies = self._complete([judge_messages(requests[i]) for i in todo])
        if len(replies) != len(todo):
            raise JudgeError(f"{self.name} judge returned {len(replies)} replies for {len(todo)}")
        for i, reply in zip(todo, replies, strict=True):
            if reply is None:
                self.stats["unavailable"] += 1
                value = None
            else:
                self.stats["replies"] += 1
                value = parse_score(reply)
                self.stats["unparseable"] += value is None
            self.stats["failures"] += value is None
            out[i] = value
        return out


class LocalJudge(LLMJudge):
    """A judge backed by a local text generator.

    `generate` maps a batch of chat prompts to one reply string each; `from_checkpoint` builds
    one on its own frozen copy of a model. With `batched=False`, `generate` takes one prompt and
    returns one string.
    """

    name = "local"

    def __init__(self, generate: Callable, *, batched: bool = True):
        super().__init__()
        if not callable(generate):
            raise JudgeError("the local judge needs a callable `generate` (e.g. the sampler)")
        self.generate, self.batched = generate, batched
        self.model: Any = None  # the frozen judge model, when loaded by `from_checkpoint`

    @classmethod
    def from_checkpoint(cls, cfg: JudgeConfig) -> LocalJudge:
        """Load `cfg.checkpoint` as a model of its own and decode with it, `concurrency`
        prompts per batch. The model is never trained and never shares the policy's arrays, so
        it scores step 100 with the weights it scored step 1 with."""
        if not cfg.checkpoint:
            raise JudgeError(
                "judge.kind='local' needs judge.checkpoint (an HF folder, a .gguf file or an "
                "embedded alias): the judge is a frozen model of its own, never the policy"
            )
        from agemem_jax.models import load_checkpoint  # lazy: the rule judge needs no JAX
        from agemem_jax.sampler import generate

        try:
            model, tokenizer = load_checkpoint(cfg.checkpoint, cfg.dtype)
        except Exception as e:  # missing, truncated or foreign files all fail in their own way
            raise JudgeError(
                f"judge.checkpoint {cfg.checkpoint!r} cannot be loaded: {type(e).__name__}: {e}"
            ) from e

        def complete(prompts: list[list[dict[str, str]]]) -> list[str]:
            replies: list[str] = []
            for start in range(0, len(prompts), cfg.concurrency):
                outs = generate(
                    model,
                    tokenizer,
                    prompts[start : start + cfg.concurrency],
                    cfg.max_tokens,
                    temperature=cfg.temperature,
                )
                replies += [o.text or "" for o in outs]
            return replies

        judge = cls(complete)
        judge.model = model  # kept for inspection (tests check it is not the policy's)
        return judge

    def _complete(self, prompts):
        if self.batched:
            return [str(r) for r in self.generate(prompts)]
        return [str(self.generate(p)) for p in prompts]


class HttpJudge(LLMJudge):
    """A judge on any OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp, hosted APIs).

    POSTs `{base_url}/chat/completions`. The key is read from the environment variable named
    `api_key_env` (no header when it is unset, as local servers need none). Connection errors,
    timeouts, HTTP 429 and 5xx, and replies that are not a chat completion (garbage, truncated
    JSON) are retried `max_retries` times with exponential backoff, or after the server's
    `Retry-After`; other 4xx fail at once, whatever `on_failure` says (a refused request is a
    config error that no retry heals). Each attempt's socket operations time out after
    `timeout`, and the whole request, retries and waits included, after `deadline` seconds of
    wall clock: a watchdog shuts the socket, so a server that drips one byte at a time cannot
    hold a call past it. Replies are read up to `MAX_REPLY_BYTES`. The first hard failure marks the
    endpoint dead for the rest of the batch, so it stops with one message instead of waiting
    out every remaining request. With `on_failure="raise"` that message is raised and later
    calls fail at once; with `"count"` the batch's unanswered requests come back as None and
    the next batch tries the endpoint again. Requests run on at most `concurrency` threads, and
    replies are cached by (model, prompt, sampling settings), in memory and, with `cache_path`,
    in a JSONL file that later runs reuse.
    """

    name = "http"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 30.0,
        deadline: float = 120.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        concurrency: int = 4,
        temperature: float = 0.0,
        max_tokens: int = 16,
        cache_path: str | os.PathLike | None = None,
        on_failure: str = "raise",
    ):
        super().__init__()
        if not base_url or not model:
            raise JudgeError("the http judge needs `base_url` and `model`")
        if timeout <= 0 or deadline <= 0 or max_retries < 0 or concurrency < 1:
            raise JudgeError(
                "http judge: need timeout > 0, deadline > 0, max_retries >= 0, concurrency >= 1"
            )
        if on_failure not in FAILURE_POLICIES:
            raise JudgeError(f"on_failure={on_failure!r}; choose one of {list(FAILURE_POLICIES)}")
        self.on_failure = on_failure
        self.url = base_url.rstrip("/") + "/chat/completions"
        u = urllib.parse.urlsplit(self.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise JudgeError(f"judge.base_url={base_url!r} is not an http(s) URL")
        # A server on this machine is never reached through a proxy from the environment.
        host = u.hostname
        local = host == "localhost" or host == "::1" or host.startswith("127.")
        proxy = None if local else urllib.request.getproxies().get(u.scheme)
        if proxy and urllib.request.proxy_bypass(host):
            proxy = None
        self._route = _Route(u, urllib.parse.urlsplit(proxy) if proxy else None)
        self.model, self.api_key_env = model, api_key_env
        self.timeout, self.deadline = float(timeout), float(deadline)
        self.max_retries = int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.concurrency = int(concurrency)
        self.temperature, self.max_tokens = float(temperature), int(max_tokens)
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._lock = threading.Lock()
        self._dead: str | None = None
        self._dead_type: type[JudgeError] = JudgeUnavailable
        self._cache: dict[str, str] = {}
        self.cache_path = Path(cache_path) if cache_path else None
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self._cache[row["key"]] = row["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from a killed run: skip it

    def _body(self, messages) -> dict:
        return {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _key(self, messages) -> str:
        blob = json.dumps(self._body(messages), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _fail(self, message: str, error: type[JudgeError] = JudgeUnavailable) -> JudgeError:
        with self._lock:
            if self._dead is None:
                self._dead, self._dead_type = message, error
        return self._dead_type(self._dead)

    def _raise_if_dead(self) -> None:
        if self._dead:
            raise self._dead_type(self._dead)

    def _post(self, messages) -> str:
        data = json.dumps(self._body(messages)).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        deadline = time.monotonic() + self.deadline
        last, wait, attempts = "", 0.0, 0
        for attempt in range(self.max_retries + 1):
            self._raise_if_dead()
            if attempt:
                wait = wait or min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                if time.monotonic() + wait >= deadline:
                    last += f"; no time left to retry within the {self.deadline:g}s deadline"
                    break
                self.stats["retries"] += 1
                time.sleep(wait)
            attempts, wait = attempts + 1, 0.0
            try:
                with self._slots:
                    status, reply_headers, payload = self._route.post(
                        data, headers, self.timeout, deadline
                    )
                self.stats["requests"] += 1
            except (http.client.HTTPException, OSError, _ReplyTooLarge) as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if status == 429 or status >= 500:
                last = f"HTTP {status} {payload[:200].decode(errors='replace')!r}"
                wait = _retry_after(reply_headers.get("Retry-After"))
                continue
            if status >= 300:
                last = f"HTTP {status} {payload[:200].decode(errors='replace')!r}"
                raise self._fail(
                    f"judge endpoint {self.url} rejected the request: {last}", JudgeError
                )
            try:
                content = json.loads(payload)["choices"][0]["message"]["content"]
                if content is not None and not isinstance(content, str):
                    raise TypeError(f"content is a {type(content).__name__}")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError,
                    TypeError) as e:  # fmt: skip
                self.stats["bad_replies"] += 1
                last = f"sent no chat completion ({type(e).__name__}): {payload[:200]!r}"
                continue
            return content or ""
        raise self._fail(
            f"judge endpoint {self.url} unreachable after {attempts} attempts "
            f"(timeout {self.timeout:g}s each) in a {self.deadline:g}s deadline; last error: {last}"
        )

    def _complete(self, prompts):
        if self.on_failure == "count" and self._dead_type is JudgeUnavailable:
            self._dead = None  # each batch gives a flaky endpoint a new chance
        self._raise_if_dead()
        keys = [self._key(p) for p in prompts]
        missing = {k: p for k, p in zip(keys, prompts, strict=True) if k not in self._cache}
        self.stats["cache_hits"] += len(keys) - len(missing)
        failed: set[str] = set()
        if missing:
            pool = cf.ThreadPoolExecutor(max_workers=min(self.concurrency, len(missing)))
            futures = {pool.submit(self._post, p): k for k, p in missing.items()}
            try:
                for fut in cf.as_completed(futures):
                    try:
                        self._store(futures[fut], fut.result())
                    except JudgeUnavailable:
                        if self.on_failure == "raise":
                            raise
                        failed.add(futures[fut])
            finally:
                # On failure, queued requests are dropped; running ones see `_dead` and stop.
                pool.shutdown(wait=True, cancel_futures=True)
        return [None if k in failed else self._cache[k] for k in keys]

    def _store(self, key: str, reply: str) -> None:
        with self._lock:
            self._cache[key] = reply
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a") as f:
                    f.write(json.dumps({"key": key, "reply": reply}) + "\n")


MAX_REPLY_BYTES = 1 << 20  # a judge reply is one number; more than this is not a reply


class _ReplyTooLarge(Exception):
    pass


def _retry_after(value: str | None) -> float:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date); 0 if none."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return 0.0


class _Route:
    """One POST to the endpoint, directly or through the environment's proxy, with a wall-clock
    deadline that no slow server can stretch: a watchdog timer shuts the socket down at the
    deadline, which wakes a blocked connect or read at once."""

    def __init__(self, url: urllib.parse.SplitResult, proxy: urllib.parse.SplitResult | None):
        self.url, self.proxy = url, proxy

    def post(self, body: bytes, headers: dict[str, str], timeout: float, deadline: float):
        """(status, headers, body) of one attempt; raises OSError subclasses on failure."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request deadline passed")
        u, p = self.url, self.proxy
        target = u.path + (f"?{u.query}" if u.query else "")
        via = p or u
        cls = http.client.HTTPSConnection if via.scheme == "https" else http.client.HTTPConnection
        conn = cls(via.hostname or "", via.port, timeout=min(timeout, remaining))
        if p is not None and u.scheme == "https":
            conn.set_tunnel(u.hostname or "", u.port)
        elif p is not None:
            target = urllib.parse.urlunsplit(u)
        fired = threading.Event()

        def abort():
            fired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(remaining, abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request("POST", target, body=body, headers=headers)
            resp = conn.getresponse()
            chunks, size = [], 0
            while chunk := resp.read1(65536):
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise _ReplyTooLarge(f"reply longer than {MAX_REPLY_BYTES} bytes")
                chunks.append(chunk)
                if fired.is_set():
                    break
            if fired.is_set() or time.monotonic() >= deadline:
                raise TimeoutError(f"no complete reply within the deadline ({size} bytes read)")
            return resp.status, resp.headers, b"".join(chunks)
        except (OSError, http.client.HTTPException):
            if fired.is_set():  # the watchdog cut the socket mid-reply: a timeout, whatever broke
                raise TimeoutError("no complete reply within the deadline") from None
            raise
        finally:
            watchdog.cancel()
            conn.close()


# ---------------------------------------------------------------------------------------------


def make_judge(
    cfg: JudgeConfig | Mapping | str | None = None, generate: Callable | None = None, **overrides
) -> Judge:
    """The judge `cfg` describes (a `JudgeConfig`, a mapping or ConfigDict, or a kind name).

    `make_judge("rule")`, `make_judge({"kind": "local", "checkpoint": "smollm2-135m-instruct"})`,
    `make_judge({"kind": "http", "base_url": ..., "model": ...})`. `overrides` win over `cfg`.
    `generate` replaces the local judge's own model with any batch text generator (tests); it is
    never the policy's sampler, which would make the judge drift with training.
    """
    if isinstance(cfg, str):
        cfg = {"kind": cfg}
    try:
        c = build(JudgeConfig, cfg, **overrides)
    except ValueError as e:  # an unknown key: a typo in a judge flag must not pass silently
        raise JudgeError(str(e)) from None
    if c.kind == "rule":
        return RuleJudge()
    if c.kind == "local":
        return LocalJudge(generate) if generate is not None else LocalJudge.from_checkpoint(c)
    return HttpJudge(
        c.base_url,
        c.model,
        api_key_env=c.api_key_env,
        timeout=c.timeout,
        deadline=c.deadline,
        max_retries=c.max_retries,
        backoff=c.backoff,
        max_backoff=c.max_backoff,
        concurrency=c.concurrency,
        temperature=c.temperature,
        max_tokens=c.max_tokens,
        cache_path=c.cache_path or None,
        on_failure=c.on_failure,
    )
