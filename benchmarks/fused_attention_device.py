"""Fused attention on an accelerator: bf16 parity against the f32 reference, and update time.

    python benchmarks/fused_attention_device.py [--impl auto|cudnn|splash] [--seq 8192]

Meant for one GPU (cuDNN through `jax.nn.dot_product_attention`) or one TPU (splash attention);
`auto` picks by backend. Prints one JSON line per check:
  parity       SmolLM2-135M (embedded GGUF) forward on a packed 2 x 1024 batch with segments:
               bf16 with the fused kernel vs f32 dense (the reference path, same device);
               max and mean abs difference of the log-probs of the targets on real positions,
               and the same for bf16 dense (the floor bf16 alone sets)
  update       one GRPO update step (reference forward, policy forward + backward, AdamW) on one
               packed row of `--seq` tokens (many step rows as segments), bf16, scanned layers,
               remat `dots_no_batch`: seconds per step with dense / blockwise / fused attention
               (first call excluded), or `oom`
On a CPU-only machine the fused kernels fall back to dense (the script says so and exits).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jax
import numpy as np

from agemem_jax.models import load_checkpoint
from agemem_jax.packing import StepRow, pack
from agemem_jax.train_step import Trainer

MODEL = "smollm2-135m-instruct"


def segmented_rows(vocab: int, total: int, seed: int = 0) -> list[StepRow]:
    """Step rows whose lengths fill about `total` packed positions."""
    rng = np.random.default_rng(seed)
    rows, used = [], 0
    while used < total - 300:
        p, a = int(rng.integers(100, 600)), int(rng.integers(20, 200))
        if used + p + a > total:
            break
        used += p + a - 1
        rows.append(
            StepRow(
                rng.integers(0, vocab, p).tolist(),
                rng.integers(0, vocab, a).tolist(),
                (-3.0 + 0.1 * rng.standard_normal(a)).tolist(),
                float(rng.standard_normal()),
            )
        )
    return rows


def parity(impl: str) -> dict:
    rows = segmented_rows(49_152, 2 * 1024)
    out = {}
    for name, dtype, attn in (("f32_dense", "float32", "dense"), ("bf16_dense", "bfloat16",
                              "dense"), ("bf16_fused", "bfloat16", impl)):  # fmt: skip
        model, _ = load_checkpoint(MODEL, dtype, attention_impl=attn)
        trainer = Trainer(model, loss=dict(kl_beta=0.0))
        packed = pack(rows, trainer.packing_cfg, tokens_per_micro=2048, min_row_len=1024)
        out[name] = (trainer.logprobs(packed)[0], packed.micro_batches[0].segment_ids > 0)
    ref, real = out["f32_dense"]
    line: dict[str, Any] = {"check": "parity", "impl": impl, "backend": jax.default_backend()}
    for name in ("bf16_dense", "bf16_fused"):
        diff = np.abs(out[name][0] - ref)[real]
        line[f"{name}_max_abs"] = float(diff.max())
        line[f"{name}_mean_abs"] = float(diff.mean())
    return line


def update_time(impl: str, seq: int) -> dict:
    line: dict = {"check": "update", "seq": seq, "backend": jax.default_backend()}
    for attn in ("dense", "blockwise", impl):
        model, _ = load_checkpoint(
            MODEL, "bfloat16", scan_layers=True, remat_policy="dots_no_batch",
            attention_impl=attn, attention_block=512,
        )  # fmt: skip
        rows = segmented_rows(model.cfg.vocab_size, seq)
        trainer = Trainer(
            model, loss=dict(kl_beta=0.1),
            packing=dict(tokens_per_micro=seq, min_row_len=seq, max_row_len=seq),
        )  # fmt: skip
        try:
            trainer.step(rows)
            jax.block_until_ready(trainer.params)
            t = time.perf_counter()
            trainer.step(rows)
            jax.block_until_ready(trainer.params)
            line[f"{attn}_s"] = round(time.perf_counter() - t, 3)
        except Exception as e:  # report an out-of-memory instead of dying
            line[f"{attn}_s"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
        del trainer, model
    return line


def main():
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--impl", default="auto")
    ap.add_argument("--seq", type=int, default=8192)
    args = ap.parse_args()
    backend = jax.default_backend()
    impl = args.impl
    if impl == "auto":
        impl = {"gpu": "cudnn", "tpu": "splash"}.get(backend, "")
    if not impl or backend == "cpu":
        print(json.dumps({"check": "skipped", "backend": backend, "reason": "no accelerator"}))
        return
    print(json.dumps(parity(impl)), flush=True)
    print(json.dumps(update_time(impl, args.seq)), flush=True)


if __name__ == "__main__":
    main()
