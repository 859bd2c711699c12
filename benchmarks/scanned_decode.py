"""Sampling a model kept in the training layout (scanned layers): stacked cache against a
per-layer copy of the weights (`sampling.unroll_layers`). Prints one JSON line.

    python benchmarks/scanned_decode.py [--batch 8] [--prompt-min 700] [--prompt-max 1100]
        [--new-tokens 48] [--repeats 2]

Training presets scan their layers (`model.scan_layers`: compile time flat in depth), and a
rollout samples from the trainer's own model. A scanned decoder keeps its KV cache stacked
`[layers, ...]`, so each decode step slices every layer out and stacks it back; with
`unroll_layers` the session copies the weights once into one module per layer and updates each
layer's cache in place. Both sessions run the same model on the same prompts (seeded random
ids of the given lengths, the shape of an episode's context), sampling at temperature 1 with
no EOS, so every row decodes exactly `--new-tokens` tokens. Each is warmed once (compilation),
then timed `--repeats` times, alternating, best kept. Keys:
  stacked_prefill_s, unrolled_prefill_s   `start()`: every row's prompt into the cache
  stacked_step_ms, unrolled_step_ms       one decode step of the whole batch
  decode_speedup                          stacked_step_ms / unrolled_step_ms
  stacked_compile_s, unrolled_compile_s   first round minus a timed one (prefill and decode
                                          programs compiled, the weight copy made)
  same_tokens                             whether both sessions sampled the same tokens
"""

from __future__ import annotations

import argparse
import json
import os
import time

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
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    # The learning run's model settings (configs/hotpotqa_grpo.py, smollm2_cpu).
    model, tok = load_checkpoint(
        MODEL, scan_layers=True, remat_policy="full", attention_impl="blockwise"
    )
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(args.prompt_min, args.prompt_max + 1, args.batch)
    prompts = [rng.integers(100, model.cfg.vocab_size, int(n)).tolist() for n in lengths]
    sampling = SamplingParams(temperature=1.0)
    common = dict(batch_size=args.batch, max_len=4096, eos_ids=(), seed=args.seed, slot_step=256)
    sessions = {
        name: SamplerSession(model, tok, unroll_layers=unroll, **common)
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
        "mean_prompt_tokens": float(np.mean(lengths)),
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
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
