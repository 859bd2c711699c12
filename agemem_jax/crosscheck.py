"""The official memory packages (mem0ai 1.0.x, langmem) run against our OpenAI-compatible server,
and the agreement of what they store with what our re-implementations store.

Both sides see the same HotpotQA stage-1 conversations and the same backbone (every LLM and
embedding call goes through the server), so where they store different memories the difference
lies in the pipelines, not in the model. Agreement is the embedding-similarity match rate of the
stored entries: an entry matches when the most similar entry on the other side has cosine
similarity >= `threshold` under MiniLM; the rate is the matched entries of both sides over all
entries (1.0 when neither side stores anything).

The re-implementations are taken by name from `agemem_jax.baselines` (make_system / ingest_all /
memories).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from agemem_jax import baselines
from agemem_jax.baselines.base import LLMReply

OFFICIAL = ("mem0", "langmem")


class CrosscheckError(RuntimeError):
    """A package or module the cross-check needs is missing."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where the server is and the model ids it serves."""

    url: str  # http://host:port/v1
    model: str
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_dims: int = 384
    api_key: str = "none"
    max_tokens: int = 512  # per LLM call of every pipeline
    parallel: int = 8  # conversations (and requests) in flight at once: the server's rows


def stage1_conversations(n: int, t1: int = 4, seed: int = 0, path=None) -> list[list[str]]:
    """The stage-1 user messages of the first `n` HotpotQA tasks of the shared sample."""
    from agemem_jax.data.hotpotqa import SHARED_SAMPLE, load_hotpotqa, make_tasks

    records = load_hotpotqa(path or SHARED_SAMPLE, limit=n, hub=False)
    return [list(t.conversation) for t in make_tasks(records, t1=t1, t2=1, seed=seed)]


# ---------------------------------------------------------------------------- official packages
def _per_conversation(fn, conversations: Sequence[Sequence[str]], parallel: int) -> list:
    """`fn(i, conversation)` for every conversation, `parallel` at a time: each is an
    independent client, so the server batches their requests into one decode like any other
    concurrent clients (one at a time, a 135M model spends most of a step on one row)."""
    with cf.ThreadPoolExecutor(max(1, parallel)) as pool:
        return list(pool.map(fn, range(len(conversations)), conversations))


def run_mem0(ep: Endpoint, conversations: Sequence[Sequence[str]]) -> list[list[str]]:
    """mem0ai's `Memory.add` (fact extraction, then ADD/UPDATE/DELETE decisions) per
    conversation, on an in-process FAISS store; returns each conversation's stored memories."""
    os.environ["MEM0_TELEMETRY"] = "False"  # read when mem0 is imported
    os.environ.setdefault("MEM0_DIR", tempfile.mkdtemp(prefix="mem0-home-"))
    try:
        from mem0 import Memory
    except ImportError as e:
        raise CrosscheckError(f"mem0ai is not installed (pip install '.[baselines]'): {e}") from e

    def one(i: int, conv: Sequence[str]) -> list[str]:
        with tempfile.TemporaryDirectory(prefix="mem0-") as tmp:
            memory = Memory.from_config({
                "llm": {"provider": "openai", "config": {
                    "model": ep.model, "openai_base_url": ep.url, "api_key": ep.api_key,
                    "temperature": 0.0, "max_tokens": ep.max_tokens}},
                "embedder": {"provider": "openai", "config": {
                    "model": ep.embedding_model, "openai_base_url": ep.url,
                    "api_key": ep.api_key, "embedding_dims": ep.embedding_dims}},
                "vector_store": {"provider": "faiss", "config": {
                    "collection_name": f"c{i}", "path": os.path.join(tmp, "faiss"),
                    "embedding_model_dims": ep.embedding_dims}},
                "history_db_path": os.path.join(tmp, "history.db"),
            })  # fmt: skip
            memory.add([{"role": "user", "content": m} for m in conv], user_id=f"c{i}")
            found = memory.get_all(user_id=f"c{i}")
            rows = found.get("results", []) if isinstance(found, dict) else found
            return [str(r["memory"]) for r in rows]

    return _per_conversation(one, conversations, ep.parallel)


def run_langmem(ep: Endpoint, conversations: Sequence[Sequence[str]]) -> list[list[str]]:
    """langmem's memory manager (extraction by tool calling, through trustcall) per
    conversation; returns each conversation's extracted memories."""
    try:
        from langchain_openai import ChatOpenAI
        from langmem import create_memory_manager
    except ImportError as e:
        raise CrosscheckError(f"langmem is not installed (pip install '.[baselines]'): {e}") from e
    llm = ChatOpenAI(model=ep.model, base_url=ep.url, api_key=ep.api_key,  # type: ignore[arg-type]
                     temperature=0.0, max_completion_tokens=ep.max_tokens, max_retries=0)  # fmt: skip
    manager = create_memory_manager(llm)

    def one(_: int, conv: Sequence[str]) -> list[str]:
        state: Any = {"messages": [{"role": "user", "content": m} for m in conv]}
        return [_langmem_text(m) for m in manager.invoke(state)]

    return _per_conversation(one, conversations, ep.parallel)


def _langmem_text(item: Any) -> str:
    content = getattr(item, "content", item)
    return str(getattr(content, "content", content))


OFFICIAL_RUNNERS = {"mem0": run_mem0, "langmem": run_langmem}


# ---------------------------------------------------------------------------- re-implementations
class ServerLLM:
    """The re-implementations' `LLM` interface, answered by the server (requests in parallel,
    so the server batches them like any other clients)."""

    def __init__(self, ep: Endpoint):
        import openai

        self.ep = ep
        self.client = openai.OpenAI(base_url=ep.url, api_key=ep.api_key, max_retries=0,
                                    timeout=600)  # fmt: skip
        self.parallel = ep.parallel

    def complete(self, requests: Sequence[Any]) -> list[Any]:
        def one(req):
            messages: Any = [dict(m) for m in req.messages]
            r = self.client.chat.completions.create(
                model=self.ep.model, messages=messages, temperature=float(req.temperature),
                max_tokens=min(int(req.max_new_tokens), self.ep.max_tokens),
            )  # fmt: skip
            usage = r.usage
            return LLMReply(r.choices[0].message.content or "",
                                 usage.prompt_tokens if usage else 0,
                                 usage.completion_tokens if usage else 0)  # fmt: skip

        with cf.ThreadPoolExecutor(self.parallel) as pool:
            return list(pool.map(one, requests))


def run_reimplementation(name: str, ep: Endpoint, conversations, encoder) -> list[list[str]]:
    """Our re-implementation `name` on the same conversations, its LLM calls through the server."""
    llm = ServerLLM(ep)
    systems = [baselines.make_system(name, baselines.BaselinesConfig(), encoder, "conversation")
               for _ in conversations]  # fmt: skip
    baselines.ingest_all(llm, systems, [[("user", m) for m in c] for c in conversations])
    return [list(s.memories()) for s in systems]


# ---------------------------------------------------------------------------- agreement
def agreement(a: Sequence[str], b: Sequence[str], encoder, threshold: float = 0.7) -> dict:
    """Match rate of two stored-entry lists (see the module docstring), with its parts."""
    if not a and not b:
        return dict(match_rate=1.0, a_matched=0, b_matched=0, a_entries=0, b_entries=0,
                    mean_best_cos=None)  # fmt: skip
    if not a or not b:
        return dict(match_rate=0.0, a_matched=0, b_matched=0, a_entries=len(a),
                    b_entries=len(b), mean_best_cos=None)  # fmt: skip
    ea, eb = encoder.encode(list(a)), encoder.encode(list(b))
    sim = np.asarray(ea) @ np.asarray(eb).T
    best_a, best_b = sim.max(1), sim.max(0)
    a_hit, b_hit = int((best_a >= threshold).sum()), int((best_b >= threshold).sum())
    return dict(
        match_rate=(a_hit + b_hit) / (len(a) + len(b)),
        a_matched=a_hit, b_matched=b_hit, a_entries=len(a), b_entries=len(b),
        mean_best_cos=float(np.concatenate([best_a, best_b]).mean()),
    )  # fmt: skip
