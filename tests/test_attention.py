"""Training-forward attention implementations against the dense reference."""

from __future__ import annotations

import dataclasses
import logging

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from agemem_jax.models.qwen import model as qwen
from agemem_jax.models.qwen.model import Decoder, ModelConfig
from agemem_jax.packing import StepRow, pack
from agemem_jax.train_step import Trainer

CFG = ModelConfig.tiny(vocab_size=96)


def model(**changes) -> Decoder:
    return Decoder(dataclasses.replace(CFG, **changes), rngs=nnx.Rngs(0))


def packed_rows():
    """Step rows of a few trajectories: chains with shared prefixes, packed into 256-long rows
    with many segments, so tiles off the diagonal are mostly masked."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(5):
        ctx = rng.integers(0, CFG.vocab_size, int(rng.integers(10, 40))).tolist()
        for _ in range(3):
            a = int(rng.integers(2, 12))
            act = rng.integers(0, CFG.vocab_size, a).tolist()
            lp = (-4.5 + 0.3 * rng.standard_normal(a)).tolist()
            rows.append(StepRow(list(ctx), act, lp, float(rng.standard_normal())))
            ctx = ctx + act + rng.integers(0, CFG.vocab_size, 6).tolist()
    return pack(rows, min_row_len=256, tokens_per_micro=512)


def test_blockwise_equals_dense_on_packed_rows_values_and_gradients():
    packed = packed_rows()
    mb = packed.micro_batches[0]
    assert mb.shape == (2, 256) and mb.segment_ids.max() > 2
    dense = Trainer(model(), loss=dict(kl_beta=0.1))
    tiled = Trainer(model(attention_impl="blockwise", attention_block=64), loss=dict(kl_beta=0.1))
    g_dense, loss_dense = dense.gradients(packed)
    g_tiled, loss_tiled = tiled.gradients(packed)
    assert loss_tiled == pytest.approx(loss_dense, rel=1e-5, abs=1e-6)
    for (path, x), (_, y) in zip(
        nnx.to_flat_state(g_dense), nnx.to_flat_state(g_tiled), strict=True
    ):
        x, y = np.asarray(x.value), np.asarray(y.value)
        np.testing.assert_allclose(y, x, atol=1e-5 * np.abs(x).max() + 1e-9, err_msg=str(path))


def test_tiles_fully_masked_are_skipped():
    """The predicate blockwise attention branches on: the upper triangle and tiles between
    different segments (or of padding keys only) are not computed."""
    seg = np.repeat([1, 2, 2, 3], 32)[None]  # segments over tiles 0 | 1-2 | 3, block 32
    valid = np.ones((1, 128), bool)
    tiles = np.asarray(qwen.visible_tiles(jnp.asarray(seg), jnp.asarray(valid), 32))
    want = np.eye(4, dtype=bool)
    want[2, 1] = True  # segment 2 spans tiles 1 and 2
    np.testing.assert_array_equal(tiles, want)
    valid[0, 96:] = False  # tile 3 is padding: its diagonal tile has no visible key either
    tiles = np.asarray(qwen.visible_tiles(jnp.asarray(seg), jnp.asarray(valid), 32))
    assert not tiles[3].any() and tiles[:3].sum() == 4


@pytest.mark.parametrize("impl", ["cudnn", "splash"])
def test_fused_kernel_off_its_backend_falls_back_to_dense(impl, caplog):
    qwen._WARNED.clear()
    ids = jnp.asarray(np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 64)))
    seg = jnp.asarray(np.repeat([[1, 2]], 32, axis=1))
    ref = model()(ids, segment_ids=seg)
    with caplog.at_level(logging.WARNING):
        out = model(attention_impl=impl)(ids, segment_ids=seg)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    assert any(f"attention_impl='{impl}'" in r.getMessage() for r in caplog.records)


def test_unknown_attention_impl_is_refused():
    with pytest.raises(ValueError, match="attention_impl"):
        model(attention_impl="flash")


def test_blockwise_backward_keeps_no_score_matrix():
    """The gradient of blockwise attention at T=2048 needs less scratch memory than one
    [H, T, T] f32 score matrix (what the dense backward keeps, and what differentiating the
    tile scans would keep for every tile): its backward recomputes tiles from the saved
    log-sum-exp."""
    import jax

    b, t, h, kvh, d = 1, 2048, 4, 2, 32
    q = jax.ShapeDtypeStruct((b, t, h, d), jnp.float32)
    kv = jax.ShapeDtypeStruct((b, t, kvh, d), jnp.float32)
    seg = jax.ShapeDtypeStruct((b, t), jnp.int32)
    valid = jax.ShapeDtypeStruct((b, t), jnp.bool_)
    loss = lambda q, k, v, s, m: qwen.blockwise_attention(q, k, v, s, m, 128).sum()

    def layers(q, k, v, s, m):  # inside a scan over layers, as the scanned decoder runs it
        body = lambda c, w: (c + qwen.blockwise_attention(q * w, k, v, s, m, 128), None)
        return jax.lax.scan(body, jnp.zeros_like(q), jnp.ones(2))[0].sum()

    scores = h * t * t * 4
    for fn in (loss, layers):
        grad = jax.jit(jax.grad(fn, argnums=(0, 1, 2))).lower(q, kv, kv, seg, valid).compile()
        assert grad.memory_analysis().temp_size_in_bytes < scores / 2, fn
