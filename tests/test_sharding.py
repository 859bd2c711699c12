"""Sharded parameters on an 8-device CPU mesh give the unsharded logits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import save_tiny_hf

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from agemem_jax import sharding as shd
    from agemem_jax.models import load_checkpoint

    path, shape, scan = sys.argv[1], tuple(int(s) for s in sys.argv[2].split(",")), sys.argv[3]
    assert jax.device_count() == 8, jax.device_count()
    mesh = shd.make_mesh(shape)
    ref, _ = load_checkpoint(path, scan_layers=scan == "1")
    model, _ = load_checkpoint(path, mesh=mesh, rules="train", scan_layers=scan == "1")
    # Every weight is placed as its logical axes say; embed is split over fsdp.
    emb = model.embed.value
    assert emb.sharding.spec == shd.logical_spec(("vocab", "embed"), shd.TRAIN_RULES, emb.shape, mesh)
    assert len({d for d in emb.sharding.device_set}) == 8
    ids = np.random.default_rng(0).integers(4, model.cfg.vocab_size, (8, 16))
    mask = np.ones_like(ids); mask[1, :5] = 0
    x = jax.device_put(jnp.asarray(ids), shd.batch_sharding(mesh, "train", 2))
    m = jax.device_put(jnp.asarray(mask), shd.batch_sharding(mesh, "train", 2))
    got = np.asarray(jax.jit(lambda a, b: model(a, b))(x, m))
    want = np.asarray(ref(jnp.asarray(ids), jnp.asarray(mask)))
    err = np.abs(got - want)[mask.astype(bool)].max()
    assert err < 1e-5, err
    print("OK", err)
    """
)


@pytest.mark.parametrize("shape,scan", [("2,2,2", "0"), ("1,2,4", "1"), ("8,1,1", "0")])
def test_sharded_forward_matches_unsharded(tmp_path, shape, scan):
    save_tiny_hf("qwen3", tmp_path)
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), shape, scan],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "OK" in out.stdout
