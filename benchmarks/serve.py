"""Load test of the OpenAI-compatible server on loopback; prints JSON lines.

    python benchmarks/serve.py [--model smollm2-135m-instruct|tiny] [--clients 32]
        [--requests 4] [--rows 8] [--chunk 16]

`--clients` threads each send `--requests` chat requests through the official `openai` client,
all at once (batched), then the same requests go one at a time (sequential). Lengths are mixed:
request i asks for one of 8/16/32/64 tokens. Every request has its own seed, so its text is the
same whichever row it lands in and whatever else is running; both runs must agree request by
request, which checks that nothing was lost, duplicated or crossed between rows.

First line (the headline):
  ratio           batched / sequential throughput (completion tokens per second)
  batched_tok_s, sequential_tok_s
  p50_ms, p99_ms  request latency in the batched run (submit to full response)
  seq_p50_ms      request latency one at a time
  requests, completion_tokens, lost, duplicated, identical (fraction of requests whose text
                  matches between the two runs)
Second line, the cost of structured output (host-side grammar mask, one token per engine turn):
  free_tok_s      one request, free decoding, tokens per second
  json_tok_s      one request under a JSON-schema grammar, tokens per second
  mask_ms         mean time to compute one grammar mask on the host
  json_ratio      json_tok_s / free_tok_s
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import time
from typing import Any

import numpy as np

LENGTHS = (8, 16, 32, 64)
TOPICS = ["Paris", "the Nile", "a film from 1999", "memory", "the band Queen", "tea", "rain",
          "a bicycle"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=16)
    args = ap.parse_args()

    import openai

    from agemem_jax.models import LoadConfig, load
    from agemem_jax.serving.api import BackgroundServer, build_server, create_app
    from agemem_jax.serving.engine import ServeConfig

    load_cfg = LoadConfig(random="tiny") if args.model == "tiny" else LoadConfig(args.model)
    model, tokenizer = load(load_cfg)
    cfg = ServeConfig(max_rows=args.rows, decode_chunk=args.chunk, model_name="m")
    server = build_server(model, tokenizer, cfg, "m", max_len=1024)

    jobs: list[dict[str, Any]] = [
        dict(tag=f"{c}-{k}", max_tokens=LENGTHS[(c + k) % len(LENGTHS)], seed=1000 * c + k,
             messages=[{"role": "user",
                        "content": f"Request {c}-{k}. Tell me about {TOPICS[(c * 3 + k) % 8]}."}])
        for c in range(args.clients) for k in range(args.requests)
    ]  # fmt: skip

    with BackgroundServer(create_app(server)) as url:
        # Untyped: the requests are plain dicts, as a client in any language would send.
        client: Any = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)

        def one(job):
            t = time.perf_counter()
            r = client.chat.completions.create(
                model="m", messages=job["messages"], max_tokens=job["max_tokens"],
                temperature=1.0, seed=job["seed"],
            )  # fmt: skip
            return job["tag"], r, time.perf_counter() - t

        for job in jobs[: args.rows]:  # warm-up: compile the programs both runs use
            one(job)
        with cf.ThreadPoolExecutor(args.rows) as pool:
            list(pool.map(one, jobs[: args.rows]))

        def client_loop(c):
            return [one(j) for j in jobs[c * args.requests : (c + 1) * args.requests]]

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(args.clients) as pool:
            batched = [x for xs in pool.map(client_loop, range(args.clients)) for x in xs]
        t_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        sequential = [one(j) for j in jobs]
        t_seq = time.perf_counter() - t0

        tags = [tag for tag, _, _ in batched]
        b_text = {tag: r.choices[0].message.content for tag, r, _ in batched}
        s_text = {tag: r.choices[0].message.content for tag, r, _ in sequential}
        tokens = sum(r.usage.completion_tokens for _, r, _ in batched)
        s_tokens = sum(r.usage.completion_tokens for _, r, _ in sequential)
        lat = np.array([dt for _, _, dt in batched]) * 1000
        s_lat = np.array([dt for _, _, dt in sequential]) * 1000
        want = {j["tag"] for j in jobs}
        print(json.dumps(dict(
            bench="serve_load", model=args.model, rows=args.rows, chunk=args.chunk,
            clients=args.clients, requests=len(batched), completion_tokens=tokens,
            ratio=round((tokens / t_batched) / (s_tokens / t_seq), 3),
            batched_tok_s=round(tokens / t_batched, 1),
            sequential_tok_s=round(s_tokens / t_seq, 1),
            p50_ms=round(float(np.percentile(lat, 50)), 1),
            p99_ms=round(float(np.percentile(lat, 99)), 1),
            seq_p50_ms=round(float(np.percentile(s_lat, 50)), 1),
            lost=len(want - set(tags)), duplicated=len(tags) - len(set(tags)),
            identical=round(float(np.mean([b_text[t] == s_text.get(t) for t in b_text])), 3),
        )), flush=True)  # fmt: skip

        # Structured output against free decoding, one request at a time.
        schema = {"type": "object", "properties": {"facts": {"type": "array",
                  "items": {"type": "string"}}}, "required": ["facts"]}  # fmt: skip
        msgs = [{"role": "user", "content": "List facts about Paris as JSON."}]
        fmt = {"type": "json_schema", "json_schema": {"name": "f", "schema": schema}}
        for _ in range(2):  # the first round compiles
            t0 = time.perf_counter()
            free = client.chat.completions.create(model="m", messages=msgs, max_tokens=64,
                                                  temperature=1.0, seed=5)  # fmt: skip
            t_free = time.perf_counter() - t0
            t0 = time.perf_counter()
            js = client.chat.completions.create(model="m", messages=msgs, max_tokens=64,
                                                temperature=1.0, seed=5, response_format=fmt)  # fmt: skip
            t_json = time.perf_counter() - t0
        from agemem_jax.serving.grammar import Constraint, json_schema_grammar

        con = Constraint(json_schema_grammar(schema), tokenizer, server.session.cfg.vocab_size,
                         server.session.eos_ids)  # fmt: skip
        t0 = time.perf_counter()
        for _ in range(50):
            con.mask()
        mask_ms = (time.perf_counter() - t0) / 50 * 1000
        free_tok_s = free.usage.completion_tokens / t_free
        json_tok_s = js.usage.completion_tokens / t_json
        print(json.dumps(dict(
            bench="serve_structured", model=args.model,
            free_tok_s=round(free_tok_s, 1), json_tok_s=round(json_tok_s, 1),
            json_ratio=round(json_tok_s / free_tok_s, 3), mask_ms=round(mask_ms, 3),
            json_tokens=js.usage.completion_tokens, json_finish=js.choices[0].finish_reason,
        )), flush=True)  # fmt: skip
    server.engine.close()


if __name__ == "__main__":
    main()
