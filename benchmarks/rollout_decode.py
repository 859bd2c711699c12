"""Rollout decoding on the learning run's model settings; two JSON lines.

    python benchmarks/rollout_decode.py [--batch 8] [--prompt-min 700] [--prompt-max 1100]
        [--new-tokens 48] [--budget-min 16] [--budget-max 192] [--repeats 2]
        [--lines scanned_decode,compact_rows]

Both lines run SmolLM2-135M as the smollm2_cpu preset trains it (scanned layers, full remat,
blockwise attention) on seeded random prompts of the given lengths (an episode's context),
sampling at temperature 1 with no EOS. Each session is warmed once (compilation), then timed
`--repeats` times, alternating, best kept.

`scanned_decode`: a scanned decoder keeps its KV cache stacked `[layers, ...]`, so each decode
step slices every layer out and stacks it back; with `unroll_layers` the session copies the
weights once into one module per layer and updates each layer's cache in place. Every row
decodes exactly `--new-tokens` tokens. Keys:
  stacked_prefill_s, unrolled_prefill_s   `start()`: every row's prompt into the cache
  stacked_step_ms, unrolled_step_ms       one decode step of the whole batch
  decode_speedup                          stacked_step_ms / unrolled_step_ms
  stacked_compile_s, unrolled_compile_s   first round minus a timed one (prefill and decode
                                          programs compiled, the weight copy made)
  same_tokens                             whether both sessions sampled the same tokens

`compact_rows`: the rows of one turn stop at different lengths (each row's budget is drawn from
[--budget-min, --budget-max], like actions). Lockstep, stopped rows spin until the longest row
ends; with `compact_rows` the rows still running go on in a batch of the next power of two once
at most half the batch runs. Unrolled sessions both. Keys:
  lockstep_decode_s, compact_decode_s     the turn's decode
  speedup                                 lockstep_decode_s / compact_decode_s
  lockstep_utilization, compact_utilization  kept tokens / decode row-steps
  compact_compile_s                       first round minus a timed one, compacted session
  same_tokens                             whether both sampled the same tokens
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import jax
import numpy as np

from agemem_jax.models import load_checkpoint
from agemem_jax.sampler import SamplerSession, SamplingParams

MODEL = "smollm2-135m-instruct"


def main():
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-min", type=int, default=700)
    ap.add_argument("--prompt-max", type=int, default=1100)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--budget-min", type=int, default=16)
    ap.add_argument("--budget-max", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lines", default="scanned_decode,compact_rows", help="which lines to run")
    args = ap.parse_args()
    lines = args.lines.split(",")
    unknown = set(lines) - {"scanned_decode", "compact_rows"}
    if unknown:
        raise SystemExit(f"--lines: unknown {sorted(unknown)}; choose scanned_decode, compact_rows")
    # The learning run's model settings (configs/hotpotqa_grpo.py, smollm2_cpu).
    model, tok = load_checkpoint(
        MODEL, scan_layers=True, remat_policy="full", attention_impl="blockwise"
    )
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(args.prompt_min, args.prompt_max + 1, args.batch)
    prompts = [rng.integers(100, model.cfg.vocab_size, int(n)).tolist() for n in lengths]
    if "scanned_decode" in lines:
        print(json.dumps(scanned(model, tok, prompts, args)), flush=True)
    if "compact_rows" in lines:
        print(json.dumps(compaction(model, tok, prompts, rng, args)), flush=True)


def scanned(model, tok, prompts, args) -> dict:
    """Exactly `--new-tokens` per row: a stacked-cache session against an unrolled one."""
    sampling = SamplingParams(temperature=1.0)
    common: dict[str, Any] = dict(
        batch_size=args.batch, max_len=4096, eos_ids=(), seed=args.seed, slot_step=256
    )
    sessions = {
        name: SamplerSession(model, tok, unroll_layers=unroll, compact_rows=False, **common)
        for name, unroll in (("stacked", False), ("unrolled", True))
    }
    best: dict[str, dict[str, float]] = {n: {"prefill": 1e9, "decode": 1e9} for n in sessions}
    tokens: dict[str, list] = {}
    first: dict[str, float] = {}
    for rep in range(args.repeats + 1):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.start(prompts)
            jax.block_until_ready(s._cache)
            t1 = time.perf_counter()
            outs = s.decode(args.new_tokens, sampling)
            t2 = time.perf_counter()
            tokens[name] = [o.tokens for o in outs if o is not None]
            if not rep:  # the first round compiles
                first[name] = t2 - t0
            else:
                best[name]["prefill"] = min(best[name]["prefill"], t1 - t0)
                best[name]["decode"] = min(best[name]["decode"], t2 - t1)
    step = {n: best[n]["decode"] / args.new_tokens * 1e3 for n in sessions}
    line = {
        "bench": "scanned_decode",
        "batch": args.batch,
        "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
        "new_tokens": args.new_tokens,
        "stacked_prefill_s": round(best["stacked"]["prefill"], 2),
        "unrolled_prefill_s": round(best["unrolled"]["prefill"], 2),
        "stacked_step_ms": round(step["stacked"], 1),
        "unrolled_step_ms": round(step["unrolled"], 1),
        "decode_speedup": round(step["stacked"] / step["unrolled"], 3),
        "stacked_compile_s": round(first["stacked"] - sum(best["stacked"].values()), 1),
        "unrolled_compile_s": round(first["unrolled"] - sum(best["unrolled"].values()), 1),
        "same_tokens": tokens["stacked"] == tokens["unrolled"],
        "load": round(os.getloadavg()[0], 1),
    }
    return line


def compaction(model, tok, prompts, rng, args) -> dict:
    """One turn with ragged per-row budgets: lockstep against compacted rows."""
    drawn = rng.integers(args.budget_min, args.budget_max + 1, args.batch)
    budgets = {r: int(n) for r, n in enumerate(drawn)}
    common: dict[str, Any] = dict(
        batch_size=args.batch, max_len=4096, eos_ids=(), seed=args.seed, slot_step=256
    )
    sessions = {
        name: SamplerSession(model, tok, unroll_layers=True, compact_rows=compact, **common)
        for name, compact in (("lockstep", False), ("compact", True))
    }
    best = dict.fromkeys(sessions, 1e9)
    first, tokens, util = {}, {}, {}
    for rep in range(args.repeats + 1):
        for name, s in sessions.items():
            s.start(prompts)
            jax.block_until_ready(s._cache)
            before = dict(s.stats)
            t0 = time.perf_counter()
            outs = s.decode(budgets, SamplingParams(temperature=1.0))
            sec = time.perf_counter() - t0
            kept = s.stats["decode_kept_tokens"] - before["decode_kept_tokens"]
            util[name] = kept / (s.stats["decode_row_steps"] - before["decode_row_steps"])
            tokens[name] = [o.tokens for o in outs if o is not None]
            if not rep:
                first[name] = sec
            else:
                best[name] = min(best[name], sec)
    return {
        "bench": "compact_rows",
        "batch": args.batch,
        "budgets": sorted(budgets.values()),
        "lockstep_decode_s": round(best["lockstep"], 2),
        "compact_decode_s": round(best["compact"], 2),
        "speedup": round(best["lockstep"] / best["compact"], 3),
        "lockstep_utilization": round(util["lockstep"], 3),
        "compact_utilization": round(util["compact"], 3),
        "compact_compile_s": round(first["compact"] - best["compact"], 1),
        "same_tokens": tokens["lockstep"] == tokens["compact"],
        "load": round(os.getloadavg()[0], 1),
    }


if __name__ == "__main__":
    main()
