"""Memory environment benchmark; prints one JSON line.

    python benchmarks/memory.py [--sizes 1000,10000,100000] [--queries 200]

Keys:
  add_p50_ms, search_p50_ms, search_p99_ms  {store size: ms}, embeddings precomputed so the
                                            store is measured, not the encoder
  search_filtered_p50_ms                    {size: ms}, metadata_filter matching 1/16 of entries
  fork_write_ms                             {size: ms}, snapshot + restore + the first write,
                                            which pays the copy-on-write copy
  encoder_sent_s                            MiniLM sentences per second (batch of 512, uncached)
  tool_step_ms                              median full step (append sampled ids, parse,
                                            execute, render) at a 4k-token context, over
                                            Retrieve/Add/Filter/Summary turns
  tool_step_ms_by_tool                      the same, per tool
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from agemem_jax.chat import ChatFormat
from agemem_jax.encoder import HashEncoder, MiniLMEncoder
from agemem_jax.ltm import LongTermMemory
from agemem_jax.memory_env import MemoryEnv
from agemem_jax.protocol import format_turn

DIM = 384
WORDS = (
    "alice bob paris london river mountain memory agent answer question born city capital "
    "film director year team score market price energy science history music book library "
    "travel train station museum garden winter summer ocean island bridge tower road"
).split()


def _ms(ts: list[float], q: float = 50) -> float:
    return round(float(np.percentile(np.asarray(ts) * 1e3, q)), 3)


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sentence(rng: np.random.Generator, lo: int = 8, hi: int = 30) -> str:
    return " ".join(rng.choice(WORDS, rng.integers(lo, hi))) + f" {rng.integers(10**6)}."


def bench_store(size: int, queries: int, adds: int, rng: np.random.Generator) -> dict:
    x = _unit(rng, size)
    store = LongTermMemory(HashEncoder(DIM), seed=0)  # embeddings are given: never called

    def meta(i: int) -> dict:
        return {"tags": [f"t{i % 16}"], "group": i % 100}

    for i in range(size - adds):
        store.add(f"entry {i}", meta(i), embedding=x[i])
    add_t = []
    for i in range(size - adds, size):
        t = time.perf_counter()
        store.add(f"entry {i}", meta(i), embedding=x[i])
        add_t.append(time.perf_counter() - t)
    # Queries near stored entries, as real retrievals are.
    q = x[rng.integers(0, size, queries)] + 0.5 * _unit(rng, queries) / np.sqrt(DIM) * 8
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    store.search(None, 3, embedding=q[0])
    search_t, filt_t = [], []
    for v in q:
        t = time.perf_counter()
        store.search(None, 3, embedding=v)
        search_t.append(time.perf_counter() - t)
    for v in q[: queries // 2]:
        t = time.perf_counter()
        store.search(None, 3, {"tags": "t3"}, embedding=v)
        filt_t.append(time.perf_counter() - t)
    fork_t = []
    for i in range(5):
        t = time.perf_counter()
        snap = store.snapshot()
        store.restore(snap)
        store.add("fork write", embedding=x[i])
        fork_t.append(time.perf_counter() - t)
    return {
        "add": _ms(add_t),
        "search": _ms(search_t),
        "search_p99": _ms(search_t, 99),
        "filtered": _ms(filt_t),
        "fork": _ms(fork_t),
    }


def bench_encoder(enc: MiniLMEncoder, rng: np.random.Generator, n: int = 512) -> float:
    texts = [_sentence(rng) for _ in range(n)]
    enc.encode(texts)  # compiles the shape buckets these texts fall into
    enc.cache.clear()
    t = time.perf_counter()
    enc.encode(texts)
    return round(n / (time.perf_counter() - t), 1)


def bench_tool_step(enc: MiniLMEncoder, rng: np.random.Generator, steps: int) -> dict:
    from agemem_jax.models import resolve_path
    from agemem_jax.models.gguf_import import load_gguf_tokenizer

    chat = ChatFormat(load_gguf_tokenizer(resolve_path("smollm2-135m-instruct")))
    env = MemoryEnv(chat, encoder=enc, summarizer=lambda ms: f"{len(ms)} messages summarized.")
    env.reset_context()
    facts = [_sentence(rng) for _ in range(200)]
    for fact, vec in zip(facts, enc.encode(facts), strict=True):
        env.ltm.add(fact, embedding=vec)
    env.add_message("user", "What do we know about the capital and the river?", protected=True)
    while env.stm.prompt_tokens < 4096 - 60:
        env.add_message("user", _sentence(rng, 20, 40))
    snap = env.snapshot()
    # Warm up as a long episode would be: context messages cached, one-text shapes compiled.
    env.stm.filter("warm the encoder cache with the context messages")
    for n in (4, 20, 50, 100):
        enc.encode([" ".join(rng.choice(WORDS, n))])

    def turn(i: int) -> tuple[str, list[dict]]:
        name, args = [
            ("Retrieve_memory", {"query": _sentence(rng)}),
            ("Add_memory", {"content": _sentence(rng), "metadata": {"tags": ["bench"]}}),
            ("Filter_context", {"criteria": _sentence(rng)}),
            ("Summary_context", {"span": "4"}),
        ][i % 4]
        return name, [{"name": name, "arguments": args}]

    times: dict[str, list[float]] = {}
    tokens = []
    for i in range(steps + 4):
        env.restore(snap)
        name, calls = turn(i)
        ids = [*chat.encode(format_turn("Decide what to do next.", calls)), chat.im_end]
        tokens.append(env.stm.prompt_tokens)
        t = time.perf_counter()
        result = env.step(ids)
        env.stm.render()
        dt = time.perf_counter() - t
        assert json.loads(result.observations[0].text)["status"] == "ok", result.observations
        if i >= 4:  # the first round may still compile a shape
            times.setdefault(name, []).append(dt)
    every = [t for ts in times.values() for t in ts]
    return {
        "all": _ms(every),
        "by_tool": {k: _ms(v) for k, v in times.items()},
        "context_tokens": int(np.median(tokens)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--adds", type=int, default=200)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)

    stores = {n: bench_store(int(n), args.queries, args.adds, rng) for n in args.sizes.split(",")}
    enc = MiniLMEncoder()
    step = bench_tool_step(enc, rng, args.steps)
    out = {
        "add_p50_ms": {n: r["add"] for n, r in stores.items()},
        "search_p50_ms": {n: r["search"] for n, r in stores.items()},
        "search_p99_ms": {n: r["search_p99"] for n, r in stores.items()},
        "search_filtered_p50_ms": {n: r["filtered"] for n, r in stores.items()},
        "fork_write_ms": {n: r["fork"] for n, r in stores.items()},
        "encoder_sent_s": bench_encoder(enc, rng),
        "tool_step_ms": step["all"],
        "tool_step_ms_by_tool": step["by_tool"],
        "tool_step_context_tokens": step["context_tokens"],
        "faiss_search_threads": LongTermMemory(HashEncoder(DIM)).search_threads,
        "host": f"{platform.machine()} x{os.cpu_count()}",
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
