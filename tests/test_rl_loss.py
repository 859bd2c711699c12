"""GRPO objective: advantages, PPO clip, KL estimators, aggregation and exact accumulation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from agemem_jax import rl_loss
from agemem_jax.dataclass_config import build
from agemem_jax.rl_loss import LossConfig


# ---------------------------------------------------------------- advantages
def test_group_advantages_match_formula_with_sample_std():
    r = np.random.default_rng(0).normal(size=(3, 8))
    got = rl_loss.group_advantages(r, eps=1e-6)
    for b in range(3):
        mean, std = r[b].sum() / 8, np.sqrt(((r[b] - r[b].mean()) ** 2).sum() / 7)
        np.testing.assert_allclose(got[b], (r[b] - mean) / (std + 1e-6), rtol=1e-5)
    # Each group is centred and has unit sample std (up to eps).
    np.testing.assert_allclose(got.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(got.std(axis=1, ddof=1), 1, rtol=1e-4)


def test_group_advantages_flat_forms_agree():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(4, 5))
    want = rl_loss.group_advantages(r)
    np.testing.assert_allclose(rl_loss.group_advantages(r.reshape(-1), group_size=5), want.ravel())
    perm = rng.permutation(20)
    gid = np.repeat(np.arange(4), 5)[perm]
    got = rl_loss.group_advantages(r.reshape(-1)[perm], gid)
    np.testing.assert_allclose(got, want.ravel()[perm], rtol=1e-6)


def test_group_advantages_constant_group_is_zero_and_bad_input_errors():
    assert np.all(rl_loss.group_advantages(np.ones((2, 4))) == 0)
    with pytest.raises(ValueError, match="K >= 2"):
        rl_loss.group_advantages(np.ones((3, 1)))
    with pytest.raises(ValueError, match="NaN"):
        rl_loss.group_advantages([[0.0, np.nan]])
    with pytest.raises(ValueError, match="exactly one"):
        rl_loss.group_advantages([1.0, 2.0])
    with pytest.raises(ValueError, match=">= 2 rollouts"):
        rl_loss.group_advantages([1.0, 2.0, 3.0], [0, 0, 1])


def test_broadcast_to_steps_gives_every_step_its_trajectory_advantage():
    adv = np.array([0.5, -1.0, 2.0], np.float32)
    steps = [0, 0, 0, 1, 2, 2]
    np.testing.assert_array_equal(rl_loss.broadcast_to_steps(adv, steps), adv[steps])
    with pytest.raises(ValueError, match="outside"):
        rl_loss.broadcast_to_steps(adv, [3])


# ---------------------------------------------------------------- PPO clip
def _ppo_reference(logp, old, adv, lo, hi):
    out, active = np.zeros_like(logp), np.zeros_like(logp)
    for i in np.ndindex(logp.shape):
        ratio = np.exp(np.clip(logp[i] - old[i], -20, 20))
        clipped = min(max(ratio, 1 - lo), 1 + hi)
        out[i] = -min(ratio * adv[i], clipped * adv[i])
        active[i] = clipped * adv[i] < ratio * adv[i]
    return out, active


def test_ppo_clip_matches_reference_with_asymmetric_range():
    rng = np.random.default_rng(2)
    logp = rng.normal(-2, 0.5, (4, 16)).astype(np.float32)
    old = (logp + rng.normal(0, 0.4, logp.shape)).astype(np.float32)
    adv = rng.normal(size=logp.shape).astype(np.float32)
    cfg = LossConfig(clip_eps_low=0.1, clip_eps_high=0.3)
    loss, active, _ = rl_loss.ppo_clip_terms(logp, old, adv, cfg)
    want, want_active = _ppo_reference(logp, old, adv, 0.1, 0.3)
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(active), want_active)
    assert 0 < want_active.mean() < 1  # both branches exercised


def test_ppo_clip_gradient_vanishes_only_where_clip_binds():
    cfg = LossConfig(clip_eps_low=0.2, clip_eps_high=0.2)
    old = jnp.zeros(4)
    logp = jnp.log(jnp.array([1.5, 1.1, 0.5, 0.9]))  # ratios
    adv = jnp.array([1.0, 1.0, -1.0, -1.0])
    grad = jax.grad(lambda lp: rl_loss.ppo_clip_terms(lp, old, adv, cfg)[0].sum())(logp)
    # ratio 1.5 > 1.2 with A>0 and ratio 0.5 < 0.8 with A<0 are clipped: no gradient.
    np.testing.assert_allclose(grad, [0.0, -1.1, 0.0, 0.9], rtol=1e-5)


def test_log_ratio_is_clamped_before_exp():
    cfg = LossConfig(log_ratio_clamp=20.0)
    logp, old, adv = jnp.array([0.0, -1e4]), jnp.array([-1e4, 0.0]), jnp.array([-1.0, 1.0])
    loss, grad = jax.value_and_grad(lambda lp: rl_loss.ppo_clip_terms(lp, old, adv, cfg)[0].sum())(
        logp
    )
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert float(rl_loss.ppo_clip_terms(logp, old, adv, cfg)[2][0]) == pytest.approx(np.exp(20.0))


# ---------------------------------------------------------------- KL
def test_kl_estimators_formulas_and_k3_nonnegative():
    rng = np.random.default_rng(3)
    logp, ref = rng.normal(-2, 1, 64), rng.normal(-2, 1, 64)
    lr = logp - ref
    k1 = rl_loss.kl_estimate(logp, ref, "k1", clamp=100)
    k2 = rl_loss.kl_estimate(logp, ref, "k2", clamp=100)
    k3 = rl_loss.kl_estimate(logp, ref, "k3", clamp=100)
    np.testing.assert_allclose(k1, lr, rtol=1e-5)
    np.testing.assert_allclose(k2, 0.5 * lr**2, rtol=1e-5)
    np.testing.assert_allclose(k3, np.exp(-lr) - 1 + lr, rtol=1e-4)
    assert np.all(np.asarray(k3) >= 0)
    # Far-off tokens: the log-ratio is clamped to ±10 before exp, then the estimate to ≤ 10.
    far = rl_loss.kl_estimate(jnp.array([0.0, -50.0]), jnp.array([-50.0, 0.0]), "k3", clamp=10.0)
    np.testing.assert_allclose(far, [np.exp(-10.0) - 1 + 10, 10.0], rtol=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_estimators_recover_true_kl_on_samples(estimator):
    """KL(π‖π_ref) direction: tokens are sampled from π (the policy), as in training."""
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(6))
    q = rng.dirichlet(np.ones(6))
    exact = float(np.sum(p * np.log(p / q)))
    tokens = rng.choice(6, size=400_000, p=p)
    est = rl_loss.kl_estimate(np.log(p[tokens]), np.log(q[tokens]), estimator, clamp=100)
    assert float(np.mean(est)) == pytest.approx(exact, rel=0.03)


# ---------------------------------------------------------------- aggregation
def _seq_reference(per_token, mask, seg, mode, norm):
    """Explicit loops over step rows (segments of each packed row)."""
    seqs = []
    for r in range(per_token.shape[0]):
        for s in np.unique(seg[r][seg[r] > 0]):
            sel = (seg[r] == s) & (mask[r] > 0)
            if sel.any():
                seqs.append(per_token[r][sel])
    if mode == "token_mean":
        flat = np.concatenate(seqs)
        return flat.mean()
    if mode == "seq_mean_token_mean":
        return np.mean([s.mean() for s in seqs])
    return np.mean([s.sum() / norm for s in seqs])


def _random_packed(rng, rows=3, t=24):
    seg = np.zeros((rows, t), np.int32)
    for r in range(rows):
        cuts = np.sort(rng.choice(np.arange(2, t - 2), size=2, replace=False))
        seg[r, : cuts[0]], seg[r, cuts[0] : cuts[1]], seg[r, cuts[1] : t - 2] = 1, 2, 3
    mask = ((rng.random((rows, t)) < 0.6) & (seg > 0)).astype(np.float32)
    mask[0, seg[0] == 2] = 0  # a step row with no loss token must not count
    return rng.normal(size=(rows, t)).astype(np.float32), mask, seg


@pytest.mark.parametrize("mode", rl_loss.AGGREGATIONS)
def test_aggregation_matches_per_sequence_loops(mode):
    per_token, mask, seg = _random_packed(np.random.default_rng(5))
    num, den = rl_loss.aggregate(per_token, mask, seg, mode, token_sum_norm=7.0)
    want = _seq_reference(per_token, mask, seg, mode, 7.0)
    assert float(num / den) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("mode", rl_loss.AGGREGATIONS)
def test_two_micro_batches_accumulate_exactly_to_one_batch(mode):
    """Σnum/Σden over micro-batches equals the whole batch's loss, and so do the gradients."""
    rng = np.random.default_rng(6)
    logp, mask, seg = _random_packed(rng, rows=4)
    logp = logp - 3.0
    old = logp + rng.normal(0, 0.3, logp.shape).astype(np.float32)
    ref = logp + rng.normal(0, 0.3, logp.shape).astype(np.float32)
    adv = np.repeat(rng.normal(size=(4, 1)), logp.shape[1], axis=1).astype(np.float32)
    cfg = LossConfig(aggregation=mode, token_sum_norm=5.0)

    def parts(lp, sl):
        num, den, _ = rl_loss.grpo_loss(lp, old[sl], ref[sl], adv[sl], mask[sl], seg[sl], cfg)
        return num, den

    full = slice(0, 4)
    whole = lambda lp: (lambda n, d: n / d)(*parts(lp, full))
    loss_whole, grad_whole = jax.value_and_grad(whole)(logp)
    (n1, d1), (n2, d2) = parts(logp[:1], slice(0, 1)), parts(logp[1:], slice(1, 4))
    assert float((n1 + n2) / (d1 + d2)) == pytest.approx(float(loss_whole), rel=1e-6)
    # Mean of the two micro-batch losses is *not* the batch loss (the reason for num/den).
    assert abs(float((n1 / d1 + n2 / d2) / 2) - float(loss_whole)) > 1e-4
    g1 = jax.grad(lambda lp: parts(lp, slice(0, 1))[0])(logp[:1])
    g2 = jax.grad(lambda lp: parts(lp, slice(1, 4))[0])(logp[1:])
    np.testing.assert_allclose(
        np.concatenate([g1, g2]) / float(d1 + d2), grad_whole, rtol=1e-5, atol=1e-7
    )


def test_grpo_loss_with_identical_policies_is_minus_mean_advantage():
    """At π_θ = π_old = π_ref, every ratio is 1 and KL is 0: the loss is −mean A."""
    rng = np.random.default_rng(7)
    logp = rng.normal(-2, 1, (2, 10)).astype(np.float32)
    adv = rng.normal(size=(2, 10)).astype(np.float32)
    mask = np.ones((2, 10), np.float32)
    num, den, stats = rl_loss.grpo_loss(
        logp, logp, logp, adv, mask, None, LossConfig(aggregation="token_mean")
    )
    assert float(num / den) == pytest.approx(-adv.mean(), rel=1e-5)
    m = rl_loss.finalize_stats(stats)
    assert m["kl"] == 0 and m["clip_fraction"] == 0 and m["logprob_gap"] == 0
    assert m["ratio_mean"] == pytest.approx(1.0)


def test_kl_term_pulls_towards_reference():
    """With A = 0 the gradient step on the loss moves log π toward log π_ref."""
    logp, ref = jnp.array([[-1.0, -3.0]]), jnp.array([[-2.0, -2.0]])
    zero, mask = jnp.zeros((1, 2)), jnp.ones((1, 2))
    for est in rl_loss.KL_ESTIMATORS[1:]:  # k1's gradient is constant, not toward ref
        cfg = LossConfig(kl_estimator=est, aggregation="token_mean")
        g = jax.grad(lambda lp, c=cfg: rl_loss.grpo_loss(lp, lp, ref, zero, mask, None, c)[0])(logp)
        assert np.all(np.sign(-np.asarray(g)) == np.sign(np.asarray(ref - logp)))


def test_sft_loss_is_masked_mean_nll():
    logp = jnp.array([[-1.0, -2.0, -3.0, -4.0]])
    mask = jnp.array([[0.0, 1.0, 1.0, 0.0]])
    num, den, stats = rl_loss.sft_loss(logp, mask, None)
    assert float(num / den) == pytest.approx(2.5)
    assert rl_loss.finalize_stats(stats)["nll"] == pytest.approx(2.5)


def test_config_accepts_mappings_and_rejects_typos():
    cd = ml_collections.ConfigDict({"kl_beta": 0.05, "kl_estimator": "k2"})
    cfg = build(LossConfig, cd)
    assert cfg.kl_beta == 0.05 and cfg.kl_estimator == "k2" and cfg.clip_eps_low == 0.2
    assert build(LossConfig).kl_beta == 0.1 and build(LossConfig).kl_estimator == "k3"
    with pytest.raises(ValueError, match="unknown setting"):
        build(LossConfig, {"kl_coef": 0.1})
    with pytest.raises(ValueError, match="kl_estimator"):
        LossConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="aggregation"):
        LossConfig(aggregation="sum")


# ---------------------------------------------------------------- sampler correction (TIS)
def test_tis_weight_is_exactly_one_when_the_sampler_is_pi_old():
    """Default sampling packs μ = π_old: loss, gradient and stats are bit-identical to the loss
    without any correction."""
    rng = np.random.default_rng(8)
    logp, mask, seg = _random_packed(rng, rows=3)
    logp = logp - 3.0
    old = logp + rng.normal(0, 0.3, logp.shape).astype(np.float32)
    ref = logp + rng.normal(0, 0.3, logp.shape).astype(np.float32)
    adv = rng.normal(size=logp.shape).astype(np.float32)
    cfg = LossConfig()

    def loss(lp, sampler):
        num, den, stats = rl_loss.grpo_loss(lp, old, ref, adv, mask, seg, cfg, sampler_logp=sampler)
        return num / den, stats

    (plain, s0), g0 = jax.value_and_grad(loss, has_aux=True)(logp, None)
    (tis, s1), g1 = jax.value_and_grad(loss, has_aux=True)(logp, old)
    assert np.asarray(plain).tobytes() == np.asarray(tis).tobytes()
    assert np.asarray(g0).tobytes() == np.asarray(g1).tobytes()
    m = rl_loss.finalize_stats(s1)
    assert m["is_weight_mean"] == 1.0 and m["is_truncated_fraction"] == 0.0
    assert float(s0["pg_loss_sum"]) == float(s1["pg_loss_sum"])


def test_tis_hand_computed_with_truncation():
    """π_old = (.5, .2, .3), μ = (.5, .05, .6) on three tokens: raw weights (1, 4, 1/2), the cap
    C = 2 truncates the second. At π_θ = π_old every ratio is 1 and the surrogate is −w·A."""
    old = jnp.log(jnp.array([[0.5, 0.2, 0.3]]))
    mu = jnp.log(jnp.array([[0.5, 0.05, 0.6]]))
    adv = jnp.array([[1.0, -2.0, 0.5]])
    mask = jnp.ones((1, 3))
    cfg = LossConfig(aggregation="token_mean", kl_beta=0.0, tis_cap=2.0)

    def loss(lp):
        num, den, stats = rl_loss.grpo_loss(lp, old, None, adv, mask, None, cfg, sampler_logp=mu)
        return num / den, stats

    (value, stats), grad = jax.value_and_grad(loss, has_aux=True)(old)
    w = np.array([1.0, 2.0, 0.5])
    assert float(value) == pytest.approx(float(np.mean(-w * np.array([1.0, -2.0, 0.5]))), 1e-6)
    # d(−w·ρ·A)/d log π_θ = −w·A·ρ, ρ = 1, divided by the 3 tokens.
    np.testing.assert_allclose(grad, (-w * np.array([1.0, -2.0, 0.5]) / 3)[None], rtol=1e-6)
    m = rl_loss.finalize_stats(stats)
    assert m["is_weight_mean"] == pytest.approx(3.5 / 3, rel=1e-6)
    assert m["is_truncated_fraction"] == pytest.approx(1 / 3)
    # A larger cap lets the weight 4 through.
    big = dataclasses.replace(cfg, tis_cap=10.0)
    num, den, _ = rl_loss.grpo_loss(old, old, None, adv, mask, None, big, sampler_logp=mu)
    assert float(num / den) == pytest.approx((-1.0 + 8.0 - 0.25) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="tis_cap"):
        LossConfig(tis_cap=0.5)


def test_unknown_rewards_get_zero_advantage_and_leave_the_group_stats():
    nan = float("nan")
    r = np.array([[1.0, nan, 0.0, 2.0], [nan, nan, nan, 5.0], [0.0, 1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="NaN"):
        rl_loss.group_advantages(r)
    got = rl_loss.group_advantages(r, eps=0.0, unknown="zero")
    # Group 0 over {1, 0, 2}: mean 1, sample std 1.
    np.testing.assert_allclose(got[0], [0.0, 0.0, -1.0, 1.0], atol=1e-7)
    assert np.all(got[1] == 0)  # one known reward: nothing to compare it with
    np.testing.assert_array_equal(got[2], rl_loss.group_advantages(r[2:], eps=0.0)[0])
    with pytest.raises(ValueError, match="unknown"):
        rl_loss.group_advantages(r, unknown="drop")
