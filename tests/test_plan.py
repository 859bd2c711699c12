"""experiments/plan.py: its per-device bytes agree with real arrays and a real compiled update."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import make_tiny_tokenizer

from agemem_jax import grpo
from agemem_jax.config_lib import from_file
from agemem_jax.models.qwen.model import KVCache
from agemem_jax.packing import PackedBatch

ROOT = Path(__file__).resolve().parents[1]
SMALL = {  # a small model at small sizes: compiles in seconds
    "packing.max_row_len": 256, "packing.min_row_len": 128, "packing.tokens_per_micro": 512,
    "memory.t_max": 192, "sampling.max_new_tokens": 64, "model.vocab_size": 128,
    "grpo.tasks_per_step": 2, "grpo.group_size": 2,
}  # fmt: skip


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    make_tiny_tokenizer(128).save_pretrained(d)
    return d


def _plan(tok: Path, topology: str, *extra: str) -> tuple[str, dict]:
    flags = [f"--config.{k}={v}" for k, v in SMALL.items()] + list(extra)
    out = subprocess.run(
        [sys.executable, "experiments/plan.py", "--config=configs/hotpotqa_grpo.py:tiny_cpu",
         f"--config.model.tokenizer={tok}", f"--topology={topology}", *flags],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(ln[5:]) for ln in out.stdout.splitlines() if ln.startswith("JSON ")]
    assert len(rows) == 1 and rows[0]["topology"] == topology
    return out.stdout, rows[0]


def _nbytes(tree) -> int:
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


@pytest.mark.slow  # compiles a real update beside the plan's: minutes on 2 cores
def test_plan_matches_real_arrays_and_compiled_update(tok):
    text, plan = _plan(tok, "1xH100")  # one device, like this test process
    assert "1xH100" in text and " yes " in text
    config = from_file("configs/hotpotqa_grpo.py", "tiny_cpu")
    config.model.tokenizer = str(tok)
    for key, value in SMALL.items():
        block, field = key.split(".")
        config[block][field] = value
    s = grpo.build(config)
    t = s.trainer
    # Parameters, reference copy and optimizer state: the real arrays' bytes.
    assert plan["params"] == _nbytes(t.params)
    assert plan["reference"] == (_nbytes(t.ref_params) if t.ref_params is not None else 0)
    assert plan["optimizer"] == _nbytes(t.opt_state)
    # The f32 gradient accumulator: one f32 per parameter, plus a few scalar sums.
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(t.params))
    assert 0 <= plan["grads"] - 4 * n_params < 1024
    # Activations: the real micro-batch program at the same shape, compiled from real arrays.
    rows, row_len = plan["micro_rows"], plan["row_len"]
    zeros = {f: np.zeros((rows, row_len), np.int32 if f in ("input_ids", "targets", "positions",
             "segment_ids", "loss_ids") else np.float32) for f in PackedBatch._fields}  # fmt: skip
    batch = t._put(PackedBatch(**zeros))
    acc = t.program("rl_zero")()
    compiled = t.program("rl_micro").lower(t.params, t.frozen, t.ref_params, acc, batch).compile()
    assert plan["activations"] == compiled.memory_analysis().temp_size_in_bytes
    # KV cache at the rollout batch: the real cache of B*K rows over T_max + response slots.
    cache = KVCache.zeros(t.model.cfg, plan["rollout_rows_per_device"], plan["kv_slots"])
    assert plan["kv_cache"] == _nbytes(cache)
    assert plan["kv_slots"] == SMALL["memory.t_max"] + SMALL["sampling.max_new_tokens"]
    assert plan["rollout_rows_per_device"] == 4  # B*K rows on the one device
    assert plan["peak"] == max(plan["train_peak"], plan["rollout_peak"]) > plan["activations"]


def test_plan_rejects_unknown_topology(tok):
    out = subprocess.run(
        [sys.executable, "experiments/plan.py", "--config=configs/hotpotqa_grpo.py:tiny_cpu",
         "--topology=v9-1"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "unknown topology" in out.stderr


def test_activations_split_across_devices(tok):
    """On 8 devices each holds one row of the micro-batch, on 1 device two: per-device
    activations must be smaller on 8 (replicated activations would be four times larger)."""
    fsdp = "--config.mesh.shape=(1,-1,1)"
    _, one = _plan(tok, "1xH100", fsdp)
    _, eight = _plan(tok, "8xH100", fsdp)
    assert eight["micro_rows"] == 8 and one["micro_rows"] == 2
    assert eight["activations"] < one["activations"]
