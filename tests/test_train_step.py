"""The packed, sharded GRPO/SFT update on a tiny random Qwen3-config decoder."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from agemem_jax import rl_loss
from agemem_jax.dataclass_config import build
from agemem_jax.models.qwen.model import Decoder, ModelConfig
from agemem_jax.optim import OptimConfig, make_optimizer
from agemem_jax.packing import StepRow, pack
from agemem_jax.train_step import Trainer, chunked_logprobs

ROOT = Path(__file__).resolve().parents[1]

CFG = ModelConfig.tiny(vocab_size=96)
CONSTANT_LR = dict(warmup_steps=0, schedule="constant")


def tiny_model(seed: int = 0, **changes) -> Decoder:
    return Decoder(dataclasses.replace(CFG, **changes), rngs=nnx.Rngs(seed))


def random_rows(n: int, seed: int = 0, max_prompt: int = 40, max_action: int = 12):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        p, a = int(rng.integers(3, max_prompt)), int(rng.integers(1, max_action))
        rows.append(
            StepRow(
                prompt_ids=rng.integers(0, CFG.vocab_size, p).tolist(),
                action_ids=rng.integers(0, CFG.vocab_size, a).tolist(),
                old_logprobs=(-4.5 + 0.3 * rng.standard_normal(a)).tolist(),
                advantage=float(rng.standard_normal()),
                action_mask=(rng.random(a) > 0.15).tolist(),
            )
        )
    return rows


def action_logprobs_alone(model: Decoder, rows: list[StepRow], length: int = 64):
    """Reference: every row on its own (right-padded, unpacked) through the plain forward."""
    ids = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        tokens = [*row.prompt_ids, *row.action_ids]
        ids[i, : len(tokens)] = tokens
    logp = jax.jit(lambda x: jax.nn.log_softmax(model(x).astype(jnp.float32), axis=-1))(ids)
    picked = np.take_along_axis(np.asarray(logp[:, :-1]), ids[:, 1:, None], axis=-1)[..., 0]
    return [
        picked[i, len(r.prompt_ids) - 1 : len(r.prompt_ids) + len(r.action_ids) - 1]
        for i, r in enumerate(rows)
    ]


# ------------------------------------------------------------------ log-probs
@pytest.mark.parametrize("tied", [False, True])
def test_chunked_logprobs_match_full_softmax_values_and_gradients(tied):
    model = tiny_model(tie_word_embeddings=tied)
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 48, CFG.hidden_size)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 48)))

    def full(h):
        logits = model.logits(h).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
        return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0], ent

    want, want_ent = full(hidden)
    want_grad = jax.grad(lambda h: full(h)[0].sum())(hidden)
    for chunk in (16, 20, 512):  # 20 -> blocks of gcd(48, 20) = 4; 512 -> one block

        @jax.jit
        def chunked(h, c=chunk):
            fn = lambda h: chunked_logprobs(model, h, targets, c)
            (logp, ent), vjp = jax.vjp(fn, h)
            return logp, ent, vjp((jnp.ones_like(logp), jnp.zeros_like(ent)))[0]

        logp, ent, grad = chunked(hidden)
        np.testing.assert_allclose(logp, want, atol=1e-5)
        np.testing.assert_allclose(ent, want_ent, atol=1e-5)
        np.testing.assert_allclose(grad, want_grad, atol=1e-5)


def test_packed_rows_give_each_rows_own_logprobs():
    model = tiny_model()
    rows = random_rows(12, seed=1)
    trainer = Trainer(tiny_model(), loss=dict(kl_beta=0.0), packing=dict(min_row_len=64))
    packed = pack(rows, trainer.packing_cfg)
    # Several step rows share a packed row, so segment isolation and position resets matter.
    assert max(int(mb.segment_ids.max()) for mb in packed.micro_batches) >= 3
    got = packed.action_values(trainer.logprobs(packed))
    for lp, want in zip(got, action_logprobs_alone(model, rows), strict=True):
        if lp is not None:
            np.testing.assert_allclose(lp, want, atol=2e-5)


# ------------------------------------------------------------------ accumulation
def test_micro_batch_accumulation_equals_one_big_batch():
    rows = random_rows(16, seed=2)
    one = Trainer(tiny_model(), packing=dict(tokens_per_micro=4096, min_row_len=64))
    many = Trainer(tiny_model(), packing=dict(tokens_per_micro=128, min_row_len=64))
    p_one, p_many = pack(rows, one.packing_cfg), pack(rows, many.packing_cfg)
    assert len(p_one.micro_batches) == 1 and len(p_many.micro_batches) >= 3
    g_one, loss_one = one.gradients(p_one)
    g_many, loss_many = many.gradients(p_many)
    assert loss_many == pytest.approx(loss_one, rel=1e-5)
    for a, b in zip(jax.tree.leaves(g_many), jax.tree.leaves(g_one), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(jnp.abs(b).max()) + 1e-12)
    # The update itself: one optimizer step from either packing lands on the same params.
    m_one, m_many = one.update_packed(p_one), many.update_packed(p_many)
    assert float(m_many["loss"]) == pytest.approx(float(m_one["loss"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(many.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))


def test_default_sampling_update_is_bit_identical_to_the_uncorrected_loss(monkeypatch):
    """Rows without sampler log-probs (μ = π_old) give exactly the loss and gradients of a
    trainer whose loss has no importance weight at all; tempered rows are reweighted."""
    rows = random_rows(8, seed=4)
    packed = pack(rows, min_row_len=64)
    g_tis, loss_tis = Trainer(tiny_model()).gradients(packed)
    metrics = Trainer(tiny_model()).step(rows)
    assert metrics["is_weight_mean"] == 1.0 and metrics["is_truncated_fraction"] == 0.0

    plain = rl_loss.grpo_loss
    monkeypatch.setattr(rl_loss, "grpo_loss", lambda *a, sampler_logp=None, **k: plain(*a, **k))
    g_plain, loss_plain = Trainer(tiny_model()).gradients(packed)
    monkeypatch.undo()
    assert loss_tis == loss_plain
    for a, b in zip(jax.tree.leaves(g_tis), jax.tree.leaves(g_plain), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()

    # μ twice as likely as π_old on every token: weight 1/2, nothing truncated.
    tempered = [
        dataclasses.replace(r, sampler_logprobs=[lp + np.log(2.0) for lp in r.old_logprobs])
        for r in rows
    ]
    m = Trainer(tiny_model()).step(tempered)
    assert m["is_weight_mean"] == pytest.approx(0.5, rel=1e-5)
    assert m["is_truncated_fraction"] == 0.0


@pytest.mark.parametrize(
    "aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
)
def test_prefix_chains_change_compute_not_the_loss(aggregation):
    """Rows of a growing context packed as one chain give the same loss and gradients."""
    rng = np.random.default_rng(5)
    rows = []
    for traj in range(3):
        context = rng.integers(0, CFG.vocab_size, 6).tolist()
        for _ in range(4):
            a = int(rng.integers(1, 5))
            rows.append(
                StepRow(
                    list(context),
                    rng.integers(0, CFG.vocab_size, a).tolist(),
                    (-4.5 + 0.3 * rng.standard_normal(a)).tolist(),
                    advantage=float(traj - 1),
                )
            )
            context += rows[-1].action_ids + rng.integers(0, CFG.vocab_size, 3).tolist()
    loss = dict(aggregation=aggregation)
    merged = Trainer(tiny_model(), loss=loss, packing=dict(min_row_len=64))
    alone = Trainer(tiny_model(), loss=loss, packing=dict(min_row_len=64, merge_prefixes=False))
    p_merged, p_alone = pack(rows, merged.packing_cfg), pack(rows, alone.packing_cfg)
    assert p_merged.real_tokens < 0.6 * p_alone.real_tokens
    g_merged, loss_merged = merged.gradients(p_merged)
    g_alone, loss_alone = alone.gradients(p_alone)
    assert loss_merged == pytest.approx(loss_alone, rel=1e-5)
    for a, b in zip(jax.tree.leaves(g_merged), jax.tree.leaves(g_alone), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(jnp.abs(b).max()) + 1e-12)


# ------------------------------------------------------------------ learning
def _policy_rows(trainer: Trainer, prompt, good, bad):
    """On-policy rows: π_old is the trainer's own log-probs, as a fresh rollout would give."""
    rows = [
        StepRow(prompt, good, None, advantage=1.0),
        StepRow(prompt, bad, None, advantage=-1.0),
    ]
    packed = pack(rows, trainer.packing_cfg)
    lps = packed.action_values(trainer.logprobs(packed))
    for row, lp in zip(rows, lps, strict=True):
        row.old_logprobs = lp.tolist()
    return rows, [float(lp.sum()) for lp in lps]


@pytest.mark.parametrize("lr", [3e-3, 0.0])
def test_grpo_steps_move_logprobs_with_the_advantage(lr):
    prompt, good, bad = [5, 17, 33, 2, 8], [40, 41, 42], [60, 61]
    trainer = Trainer(tiny_model(), optim=dict(learning_rate=lr, **CONSTANT_LR))
    before = jax.tree.map(np.asarray, trainer.params)
    rows, (good0, bad0) = _policy_rows(trainer, prompt, good, bad)
    ref_packed = pack(rows, trainer.packing_cfg)
    ref0 = trainer.logprobs(ref_packed, reference=True)
    history = [(good0, bad0)]
    for _ in range(4 if lr else 2):
        metrics = trainer.step(rows)
        assert abs(metrics["logprob_gap"]) < 1e-5  # on-policy: trainer == "sampler"
        rows, lps = _policy_rows(trainer, prompt, good, bad)
        history.append(tuple(lps))
    good_lp, bad_lp = np.array(history).T
    if lr > 0:
        assert np.all(np.diff(good_lp) > 0), good_lp  # positive advantage: more likely
        # Negative advantage: less likely, until the KL to the reference (β = 0.1) holds it.
        assert bad_lp[1] < bad_lp[0] and bad_lp[-1] < bad_lp[0] - 1.0, bad_lp
        assert metrics["kl"] > 0
    else:
        assert np.all(good_lp == good0) and np.all(bad_lp == bad0)
        for a, b in zip(jax.tree.leaves(trainer.params), jax.tree.leaves(before), strict=True):
            np.testing.assert_array_equal(a, b)
    # The reference policy is frozen whatever the updates did.
    for a, b in zip(trainer.logprobs(ref_packed, reference=True), ref0, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sft_loss_is_masked_nll_and_decreases():
    rows = random_rows(6, seed=3)
    trainer = Trainer(
        tiny_model(), loss=dict(kl_beta=0.0), optim=dict(learning_rate=1e-2, **CONSTANT_LR)
    )
    packed = pack(rows, trainer.packing_cfg)
    lps = packed.action_values(trainer.logprobs(packed))
    masked = np.concatenate(
        [lp[np.asarray(r.action_mask)] for r, lp in zip(rows, lps, strict=True) if lp is not None]
    )
    losses = [trainer.sft_step(rows)["loss"] for _ in range(5)]
    assert losses[0] == pytest.approx(-masked.mean(), rel=1e-5)  # only policy tokens count
    assert np.all(np.diff(losses) < 0), losses


def test_trainer_input_errors():
    trainer = Trainer(tiny_model(), loss=dict(kl_beta=0.0))
    assert trainer.ref_params is None  # β = 0 keeps no reference copy
    packed = pack(random_rows(2), trainer.packing_cfg)
    with pytest.raises(ValueError, match="no reference"):
        trainer.logprobs(packed, reference=True)
    with pytest.raises(ValueError, match="no step rows"):
        trainer.step([])
    with pytest.raises(ValueError, match="kind"):
        trainer.gradients(packed, kind="ppo")
    with pytest.raises(ValueError, match="unknown setting"):
        Trainer(tiny_model(), update=dict(epoch=2))


# ------------------------------------------------------------------ optimizer
def test_schedules_follow_config():
    _, cos = make_optimizer(learning_rate=1e-3, warmup_steps=10, total_steps=110)
    assert float(cos(0)) == 0 and float(cos(5)) == pytest.approx(5e-4)
    assert float(cos(10)) == pytest.approx(1e-3) and float(cos(110)) == pytest.approx(1e-4)
    assert float(cos(60)) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-4)  # cosine midpoint
    _, const = make_optimizer(learning_rate=1e-3, schedule="constant", warmup_steps=4)
    assert float(const(2)) == pytest.approx(5e-4) and float(const(1000)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="linear")


def test_adamw_clips_global_norm_and_decays_only_matrices():
    params = {"w": jnp.ones((2, 2)), "scale": jnp.ones(2)}
    tx, _ = make_optimizer(
        learning_rate=0.1, schedule="constant", warmup_steps=0, weight_decay=0.5, max_grad_norm=1.0
    )
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, state, params)
    assert np.allclose(updates["w"], -0.1 * 0.5) and np.all(updates["scale"] == 0)
    tx_clip, _ = make_optimizer(
        learning_rate=1.0, schedule="constant", warmup_steps=0, b1=0.0, max_grad_norm=1.0
    )
    # With b1 = 0 Adam's first moment is the (clipped) gradient itself.
    huge = {"w": jnp.full((2, 2), 100.0), "scale": jnp.zeros(2)}
    _, st = tx_clip.update(huge, tx_clip.init(params), params)
    mu = st[1][0].mu
    assert float(optax.global_norm(mu)) == pytest.approx(1.0, rel=1e-6)
    assert float(build(OptimConfig, ml_collections.ConfigDict({"b2": 0.95})).b2) == 0.95


# ------------------------------------------------------------------ sharding
SHARDED = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from jax.sharding import Mesh
    from agemem_jax import sharding as shd
    from agemem_jax.packing import pack
    sys.path.insert(0, "tests")
    from test_train_step import random_rows, tiny_model
    from agemem_jax.train_step import Trainer

    assert jax.device_count() == 8, jax.device_count()
    rows = random_rows(24, seed=4)
    kw = dict(
        optim=dict(learning_rate=1e-5, warmup_steps=0, schedule="constant"),
        packing=dict(tokens_per_micro=256, min_row_len=64),
        update=dict(num_minibatches=2, logprob_chunk=32),
    )
    init = jax.tree.leaves(jax.tree.map(np.asarray, __import__("flax").nnx.state(tiny_model())))
    out = {}
    for shape in [(1, 1, 1), (2, 2, 2), (8, 1, 1)]:
        devs = np.asarray(jax.devices()[: int(np.prod(shape))]).reshape(shape)
        tr = Trainer(tiny_model(), mesh=Mesh(devs, shd.MESH_AXES), **kw)
        emb = tr.params["embed"].value
        assert len(emb.sharding.device_set) == int(np.prod(shape))
        grads, loss = tr.gradients(pack(rows, tr.packing_cfg))
        metrics = [tr.step(rows) for _ in range(2)]
        out[shape] = (loss, jax.tree.leaves(jax.tree.map(np.asarray, grads)), metrics,
                      jax.tree.leaves(jax.tree.map(np.asarray, tr.params)))
    loss0, grads0, metrics0, params0 = out[(1, 1, 1)]
    moved = max(float(np.abs(p - q).max() / np.abs(q).max()) for p, q in zip(params0, init))
    assert moved > 1e-4, moved  # the update is large against the tolerance below
    for shape in [(2, 2, 2), (8, 1, 1)]:
        loss, grads, metrics, params = out[shape]
        assert abs(loss - loss0) <= 1e-5 * abs(loss0), (shape, loss, loss0)
        for m, m0 in zip(metrics, metrics0):
            for k in ("loss", "kl", "grad_norm", "entropy"):
                assert abs(m[k] - m0[k]) <= 1e-5 * abs(m0[k]) + 1e-9, (shape, k, m[k], m0[k])
        g_err = max(float(np.linalg.norm(g - h) / np.linalg.norm(h)) for g, h in zip(grads, grads0))
        p_err = max(float(np.abs(p - q).max() / np.abs(q).max()) for p, q in zip(params, params0))
        assert g_err <= 1e-5 and p_err <= 1e-5, (shape, g_err, p_err)
        print("OK", shape, g_err, p_err)
    """
)


def test_sharded_update_matches_single_device():
    """(2,2,2) and (8,1,1) meshes of 8 fake CPU devices reproduce the 1-device update."""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", SHARDED], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.count("OK") == 2, out.stdout
