"""GRPO update benchmark; prints one JSON line per attention path.

    python benchmarks/update.py [--model smollm2-135m-instruct|tiny] [--rows 8] [--repeats 2]
    python benchmarks/update.py --attention dense,blockwise --scan-layers --remat full \
        --prompt-min 600 --prompt-max 1800 --action-max 192 --tokens-per-micro 4096 --rows 6

Synthetic step rows (seeded; prompt and action lengths drawn from the ranges given) go through
the real update: packing, the reference forward (β > 0), forward + backward with chunked
log-probs, micro-batch accumulation and AdamW. Keys:
  trained_tok_s        non-padding packed positions (prompt + action) per second of update
  action_tok_s         loss-carrying (policy) tokens per second
  achieved_gflops      useful model FLOPs per second: policy forward + backward (6 N per token),
                       reference forward (2 N), causal attention within each step row; padding,
                       masked attention and remat recomputation are not counted
  roof_gflops          a jitted f32 matmul measured in the same run; roof_fraction = the ratio
  padding_waste        fraction of computed positions that are padding
  compile_s            first update (compilation included) minus a steady one
  forward_s            one reference forward (log-probs, no gradient) of the same packed batch
  attention_impl       the model's attention path; with --attention dense,blockwise one line per
                       path on the same rows, then a line `update_attention` with the
                       dense / blockwise ratios of update_s and forward_s (blockwise skips the
                       key tiles that are fully masked: above the diagonal and across segments)
  remat, peak_rss_gb   the model's remat policy; with --remat full,none one line per policy on the
                       same rows (give the leaner policy first: peak RSS is the process's so
                       far), then `update_remat` lines with the first policy's update time over
                       each other's (update_speedup > 1: the other policy is faster)
  grpo_step            with --grpo-step PRESET: one real GRPO step of that preset of
                       configs/hotpotqa_grpo.py (episodes + reward + update): rollout and update
                       seconds and their shares of the step, and decode_utilization (kept
                       tokens over decode row-steps)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from agemem_jax.models import load_checkpoint
from agemem_jax.models.qwen.model import Decoder, ModelConfig
from agemem_jax.packing import StepRow, pack
from agemem_jax.train_step import Trainer

TINY = ModelConfig.tiny(vocab_size=512)


def matmul_roof(n: int = 1024, repeats: int = 10) -> float:
    """Best GFLOP/s of a jitted f32 n x n matmul."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matmul per token (the embedding gather does not)."""
    d, f, h, kv, hd = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
    )
    per_layer = d * hd * (2 * h + 2 * kv) + 3 * d * f
    return cfg.num_layers * per_layer + d * cfg.vocab_size


def useful_flops(cfg: ModelConfig, rows: list[StepRow], kl: bool) -> float:
    n = matmul_params(cfg)
    passes = 3 + (1 if kl else 0)  # forward, backward (2x), reference forward
    tokens = sum(len(r.prompt_ids) + len(r.action_ids) - 1 for r in rows)
    # Causal attention: a query at position p does QK^T and PV over p + 1 keys, per layer.
    ctx = sum(n * (n + 1) / 2 for n in (len(r.prompt_ids) + len(r.action_ids) - 1 for r in rows))
    attn = 4 * cfg.num_heads * cfg.head_dim * cfg.num_layers * ctx
    return passes * (2 * n * tokens + attn)


def synthetic_rows(cfg: ModelConfig, args, rng: np.random.Generator) -> list[StepRow]:
    rows = []
    for _ in range(args.rows):
        p = int(rng.integers(args.prompt_min, args.prompt_max + 1))
        a = int(rng.integers(args.action_min, args.action_max + 1))
        rows.append(
            StepRow(
                prompt_ids=rng.integers(0, cfg.vocab_size, p).tolist(),
                action_ids=rng.integers(0, cfg.vocab_size, a).tolist(),
                old_logprobs=(-2.0 + 0.1 * rng.standard_normal(a)).tolist(),
                advantage=float(rng.standard_normal()),
            )
        )
    return rows


def grpo_step_share(preset: str) -> dict:
    """Time one GRPO step of a preset (the second, so compilation is excluded where possible)."""
    import tempfile

    from agemem_jax import grpo
    from agemem_jax.config_lib import from_file

    config = from_file("configs/hotpotqa_grpo.py", preset)
    config.train.update(steps=2, save_every=100, export=False)
    with tempfile.TemporaryDirectory() as tmp:
        history = grpo.train(config, tmp, progress=False)
    m = history[-1]
    rollout, update = m["rollout_seconds"], m["update_seconds"]
    return {
        "preset": preset,
        "rollout_s": round(rollout, 2),
        "update_s": round(update, 2),
        "rollout_share": round(rollout / (rollout + update), 3),
        "update_share": round(update / (rollout + update), 3),
        "step_rows": m["step_rows"],
        "tokens_sampled": m["tokens_sampled"],
        "trained_tokens": m["trained_tokens"],
        "padding_waste": round(m["padding_waste"], 3),
        # Kept tokens / decode row-steps: rows that end their turn early spin until the
        # longest row of the batch ends.
        "decode_utilization": round(m["decode_utilization"], 3),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="alias/path, or 'tiny'")
    ap.add_argument("--rows", type=int, default=8, help="step rows in the rollout batch")
    ap.add_argument("--prompt-min", type=int, default=128)
    ap.add_argument("--prompt-max", type=int, default=512)
    ap.add_argument("--action-min", type=int, default=16)
    ap.add_argument("--action-max", type=int, default=96)
    ap.add_argument("--tokens-per-micro", type=int, default=2048)
    ap.add_argument("--logprob-chunk", type=int, default=256)
    ap.add_argument("--kl-beta", type=float, default=0.1)
    ap.add_argument("--scan-layers", action="store_true")
    ap.add_argument("--remat", default="none", help="comma list of model.remat_policy")
    ap.add_argument("--repeats", type=int, default=2, help="timed updates after the first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grpo-step", default="", help="also time one GRPO step of this preset")
    ap.add_argument("--attention", default="dense", help="comma list of model.attention_impl")
    args = ap.parse_args()

    roof = matmul_roof()
    step_share = grpo_step_share(args.grpo_step) if args.grpo_step else None
    remats = args.remat.split(",")
    lines = [
        run(args, impl, remat, roof, step_share)
        for impl in args.attention.split(",")
        for remat in remats
    ]
    by_impl = {line["attention_impl"]: line for line in lines if line["remat"] == remats[0]}
    if {"dense", "blockwise"} <= set(by_impl):
        d, b = by_impl["dense"], by_impl["blockwise"]
        print(
            json.dumps(
                {
                    "bench": "update_attention",
                    "update_speedup": round(d["update_s"] / b["update_s"], 3),
                    "forward_speedup": round(d["forward_s"] / b["forward_s"], 3),
                    "dense_update_s": d["update_s"],
                    "blockwise_update_s": b["update_s"],
                    "dense_forward_s": d["forward_s"],
                    "blockwise_forward_s": b["forward_s"],
                    "micro_batch_shapes": b["micro_batch_shapes"],
                }
            )
        )
    for impl in args.attention.split(","):
        same = {line["remat"]: line for line in lines if line["attention_impl"] == impl}
        for remat, line in same.items():
            if remat != remats[0]:
                base = same[remats[0]]
                print(
                    json.dumps(
                        {
                            "bench": "update_remat",
                            "attention_impl": impl,
                            "baseline": remats[0],
                            "remat": remat,
                            # > 1: `remat` is faster than the baseline policy.
                            "update_speedup": round(base["update_s"] / line["update_s"], 3),
                            "baseline_update_s": base["update_s"],
                            "update_s": line["update_s"],
                            "baseline_peak_rss_gb": base["peak_rss_gb"],
                            "peak_rss_gb": line["peak_rss_gb"],
                        }
                    )
                )


def run(args, impl: str, remat: str, roof: float, step_share: dict | None) -> dict:
    """Time the update (and one forward) with attention path `impl` and remat policy `remat`;
    print and return its line."""
    if args.model == "tiny":
        tiny = dataclasses.replace(
            TINY, scan_layers=args.scan_layers, attention_impl=impl, remat_policy=remat
        )
        model = Decoder(tiny, rngs=nnx.Rngs(0))
    else:
        model, _ = load_checkpoint(
            args.model, scan_layers=args.scan_layers, attention_impl=impl, remat_policy=remat
        )
    cfg = model.cfg
    rows = synthetic_rows(cfg, args, np.random.default_rng(args.seed))
    trainer = Trainer(
        model,
        loss=dict(kl_beta=args.kl_beta),
        optim=dict(learning_rate=1e-6, warmup_steps=0, schedule="constant"),
        packing=dict(tokens_per_micro=args.tokens_per_micro),
        update=dict(logprob_chunk=args.logprob_chunk),
    )
    packed = pack(rows, trainer.packing_cfg)

    def timed_update() -> float:
        t = time.perf_counter()
        trainer.step(rows)
        jax.block_until_ready(trainer.params)
        return time.perf_counter() - t

    first = timed_update()
    times = [timed_update() for _ in range(args.repeats)]
    sec = float(np.median(times))
    flops = useful_flops(cfg, rows, args.kl_beta > 0)
    trainer.logprobs(packed, reference=True)  # compiled once before timing
    t = time.perf_counter()
    jax.block_until_ready(trainer.logprobs(packed, reference=True))
    forward = time.perf_counter() - t
    line = {
        "grpo_step": step_share,
        "attention_impl": impl,
        "remat": remat,
        # The process's peak RSS so far: runs are in order, so a later line's peak covers
        # the earlier ones too unless it grew.
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "forward_s": round(forward, 3),
        "bench": "update",
        "model": args.model,
        "params_m": round(matmul_params(cfg) / 1e6, 1),
        "rows": len(rows),
        "trained_tokens": packed.real_tokens,
        "action_tokens": packed.loss_tokens,
        "packed_positions": packed.padded_tokens,
        "padding_waste": round(packed.padding_waste, 4),
        "micro_batches": len(packed.micro_batches),
        "micro_batch_shapes": sorted(set(packed.shapes)),
        "update_s": round(sec, 3),
        "compile_s": round(first - sec, 2),
        "trained_tok_s": round(packed.real_tokens / sec, 1),
        "action_tok_s": round(packed.loss_tokens / sec, 1),
        "achieved_gflops": round(flops / sec / 1e9, 2),
        "roof_gflops": round(roof, 2),
        "roof_fraction": round(flops / sec / 1e9 / roof, 3),
        "kl_beta": args.kl_beta,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    print(json.dumps(line), flush=True)
    return line


if __name__ == "__main__":
    main()
