"""Step-wise GRPO objective: group advantages, the per-token PPO-clip surrogate, KL to the
reference policy, and loss aggregation (spec section 5).

Every loss returns `(numerator, denominator, stats)` instead of a mean. The denominator never
depends on the parameters, so summing numerators (and their gradients) and denominators over
micro-batches and dividing once gives exactly the gradient of the whole batch. `stats` are sums
too; `finalize_stats` turns accumulated sums into the logged means.

Token arrays are `[rows, T]` and aligned with the *prediction* position: `logp[r, t]` is the
log-prob of the token the model predicts at t (the packed batch's `targets`). `loss_ids`
(1..n per row, 0 = no loss) say which step row a loss token belongs to, so several step rows
can share one packed row, or one chain of prefix-sharing positions (`agemem_jax.packing`).

Sampler correction. π_old is the raw model's log-prob at temperature 1, but a rollout drawn with
another temperature, top-k or top-p comes from a different distribution μ. Truncated importance
sampling reweights each token's surrogate by w = min(π_old/μ, C) (`tis_weights`), which moves
the expectation from μ back to π_old up to the cap. Where μ is π_old itself (the default 1/1/0
sampling) the packed μ log-probs equal π_old's, so w is exactly 1 and the loss is unchanged.
Two limits remain: tokens μ cannot draw (outside top-k/top-p) get no gradient however π_old
weighs them, and greedy decoding (μ a point mass) cannot be corrected at all, so GRPO refuses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Everything about the GRPO objective a researcher may sweep.

    The spec fixes β = 0.1 and the frozen initial policy as reference; clipping, estimator and
    aggregation are ours. The default aggregation, `seq_mean_token_mean`, is the spec's
    "mean over experiences" with each step row's tokens averaged, as in the GRPO paper.
    """

    clip_eps_low: float = 0.2  # PPO clip: ratio >= 1 - this for negative advantages
    clip_eps_high: float = 0.2  # PPO clip: ratio <= 1 + this for positive advantages
    log_ratio_clamp: float = 20.0  # |log π_θ/π_old| bound before exp: no inf ratio, no NaN grad
    kl_beta: float = 0.1  # β of the KL to the frozen initial policy (spec); 0 = no reference
    kl_estimator: str = "k3"  # k1 | k2 | k3 (k3: unbiased and non-negative)
    kl_clamp: float = 10.0  # bound on the per-token KL estimate (and its log-ratio)
    aggregation: str = "seq_mean_token_mean"  # token_mean | seq_mean_token_mean | ..._sum_norm
    # seq_mean_token_sum_norm divides each row's token sum by this constant (max response length)
    # rather than by its own length, so long and short actions weigh per token alike.
    token_sum_norm: float = 2048.0
    # C of the truncated importance weight min(π_old/μ, C) between sampler μ and π_old; >= 1 so
    # on-distribution tokens (weight 1) are never scaled down.
    tis_cap: float = 2.0

    def __post_init__(self):
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator={self.kl_estimator!r}; choose one of {KL_ESTIMATORS}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}; choose one of {AGGREGATIONS}")
        if self.clip_eps_low < 0 or self.clip_eps_high < 0 or self.clip_eps_low >= 1:
            raise ValueError(
                f"clip range needs 0 <= eps_low < 1 and eps_high >= 0, "
                f"got {self.clip_eps_low}, {self.clip_eps_high}"
            )
        if self.kl_beta < 0:
            raise ValueError(f"kl_beta={self.kl_beta} must be >= 0")
        if self.token_sum_norm <= 0 or self.log_ratio_clamp <= 0 or self.kl_clamp <= 0:
            raise ValueError("token_sum_norm, log_ratio_clamp and kl_clamp must be > 0")
        if not self.tis_cap >= 1:
            raise ValueError(f"tis_cap={self.tis_cap} must be >= 1")


# ---------------------------------------------------------------- advantages (host side)
def group_advantages(
    rewards,
    group_ids=None,
    *,
    group_size: int | None = None,
    eps: float = 1e-6,
    unknown: str = "raise",
) -> np.ndarray:
    """A = (r − mean_G) / (std_G + eps), std with ddof = 1 (spec section 5).

    `rewards` is `[B, K]` (one row per task), or flat `[N]` with either `group_ids` `[N]` (any
    order, ragged groups allowed) or `group_size` (consecutive groups of that size). A group of
    one has no sample std, which is an error rather than a silent NaN.

    A NaN reward is unknown (the judge failed on it). `unknown="raise"` refuses it;
    `unknown="zero"` (`[B, K]` only) gives it advantage 0 and normalizes its group over the
    known rewards, and a group with fewer than two known rewards gets 0 throughout **(ours)**:
    an episode whose reward is unknown pushes the policy neither way.
    """
    r = np.asarray(rewards, np.float64)
    if unknown not in ("raise", "zero"):
        raise ValueError(f"unknown={unknown!r}; choose 'raise' or 'zero'")
    if np.any(np.isinf(r)) or (unknown == "raise" and np.any(np.isnan(r))):
        raise ValueError("rewards contain NaN or inf")
    if np.any(np.isnan(r)):
        if r.ndim != 2 or group_ids is not None or group_size is not None:
            raise ValueError("unknown (NaN) rewards are handled for [B, K] rewards only")
        adv = np.zeros(r.shape, np.float32)
        for b, row in enumerate(r):
            known = ~np.isnan(row)
            if known.sum() >= 2:
                adv[b, known] = group_advantages(row[known][None], eps=eps)[0]
        return adv
    if r.ndim == 2:
        if group_ids is not None or group_size is not None:
            raise ValueError("[B, K] rewards already define groups; pass no group_ids/group_size")
        if r.shape[1] < 2:
            raise ValueError(f"groups need K >= 2 rollouts for a sample std, got K={r.shape[1]}")
        mean = r.mean(axis=1, keepdims=True)
        std = r.std(axis=1, ddof=1, keepdims=True)
        return ((r - mean) / (std + eps)).astype(np.float32)
    if r.ndim != 1:
        raise ValueError(f"rewards must be [B, K] or [N], got shape {r.shape}")
    if (group_ids is None) == (group_size is None):
        raise ValueError("flat rewards need exactly one of group_ids or group_size")
    if group_size is not None:
        if group_size < 2 or len(r) % group_size:
            raise ValueError(f"{len(r)} rewards do not split into groups of size {group_size} >= 2")
        return group_advantages(r.reshape(-1, group_size), eps=eps).reshape(-1)
    gid = np.asarray(group_ids)
    if gid.shape != r.shape:
        raise ValueError(f"group_ids shape {gid.shape} != rewards shape {r.shape}")
    _, inv, counts = np.unique(gid, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError("every group needs >= 2 rollouts for a sample std")
    sums = np.bincount(inv, weights=r)
    mean = sums / counts
    var = np.bincount(inv, weights=(r - mean[inv]) ** 2) / (counts - 1)
    return ((r - mean[inv]) / (np.sqrt(var)[inv] + eps)).astype(np.float32)


def broadcast_to_steps(traj_advantages, step_traj) -> np.ndarray:
    """Every step of trajectory k gets A_k, in all three stages. `step_traj[i]` is step i's
    trajectory index."""
    adv = np.asarray(traj_advantages, np.float32)
    idx = np.asarray(step_traj, np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(adv)):
        raise ValueError(f"step_traj indexes outside [0, {len(adv)})")
    return adv[idx]


# ---------------------------------------------------------------- per-token terms
def kl_estimate(logp: Array, ref_logp: Array, estimator: str = "k3", clamp: float = 10.0) -> Array:
    """Per-token estimate of KL(π_θ ‖ π_ref) from the sampled token's log-probs.

    k1 = log π_θ/π_ref (unbiased, high variance), k2 = ½ (log π_θ/π_ref)², k3 = π_ref/π_θ − 1 −
    log π_ref/π_θ (unbiased, always ≥ 0, low variance). The log-ratio is clamped before `exp` and
    the estimate after, so one off-policy token cannot blow up the loss.
    """
    log_ratio = jnp.clip(logp - ref_logp, -clamp, clamp)
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio**2
    elif estimator == "k3":
        kl = jnp.exp(-log_ratio) - 1.0 + log_ratio
    else:
        raise ValueError(f"kl estimator {estimator!r}; choose one of {KL_ESTIMATORS}")
    return jnp.clip(kl, -clamp, clamp)


def ppo_clip_terms(
    logp: Array, old_logp: Array, advantages: Array, cfg: LossConfig
) -> tuple[Array, Array, Array]:
    """Per-token −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A), the clip-active flag, and ρ."""
    log_ratio = jnp.clip(logp - old_logp, -cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high) * advantages
    loss = -jnp.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).astype(jnp.float32), ratio


def tis_weights(old_logp: Array, sampler_logp: Array, cap: float) -> tuple[Array, Array]:
    """Per-token truncated importance weight min(π_old/μ, cap) and the truncated flag.

    exp(0) is exactly 1, so tokens whose μ log-prob equals π_old's weigh exactly 1.
    """
    raw = jnp.exp(jax.lax.stop_gradient(old_logp - sampler_logp))
    return jnp.minimum(raw, cap), (raw > cap).astype(jnp.float32)


# ---------------------------------------------------------------- aggregation
def _step_row_token_counts(mask: Array, loss_ids: Array) -> tuple[Array, Array]:
    """Loss tokens of each token's step row, broadcast back to tokens, and the number of step
    rows with at least one loss token. Step rows are numbered 1..n within a packed row."""
    rows, t = mask.shape
    gid = (jnp.arange(rows)[:, None] * (t + 1) + loss_ids).reshape(-1)
    counts = jax.ops.segment_sum(mask.reshape(-1), gid, num_segments=rows * (t + 1))
    n_seqs = jnp.sum((counts > 0).astype(jnp.float32))
    return counts[gid].reshape(rows, t), n_seqs


def aggregate(
    per_token: Array,
    mask: Array,
    loss_ids: Array | None,
    mode: str,
    token_sum_norm: float = 2048.0,
) -> tuple[Array, Array]:
    """(numerator, denominator) of the aggregated loss, so that the loss is num / den.

    token_mean:              Σ_t m·ℓ / Σ_t m               (every token weighs the same)
    seq_mean_token_mean:     Σ_s (Σ_{t∈s} m·ℓ / n_s) / S    (every step row weighs the same)
    seq_mean_token_sum_norm: Σ_s (Σ_{t∈s} m·ℓ / C) / S      (Dr. GRPO style, C constant)
    """
    mask = mask.astype(jnp.float32)
    if loss_ids is None:  # one step row per packed row
        loss_ids = jnp.ones(mask.shape, jnp.int32)
    if mode == "token_mean":
        return jnp.sum(per_token * mask), jnp.sum(mask)
    counts, n_seqs = _step_row_token_counts(mask, loss_ids)
    if mode == "seq_mean_token_mean":
        weights = mask / jnp.maximum(counts, 1.0)
    elif mode == "seq_mean_token_sum_norm":
        weights = mask / token_sum_norm
    else:
        raise ValueError(f"aggregation {mode!r}; choose one of {AGGREGATIONS}")
    return jnp.sum(per_token * weights), n_seqs


# ---------------------------------------------------------------- losses
def grpo_loss(
    logp: Array,
    old_logp: Array,
    ref_logp: Array | None,
    advantages: Array,
    mask: Array,
    loss_ids: Array | None,
    cfg: LossConfig,
    entropy: Array | None = None,
    sampler_logp: Array | None = None,
) -> tuple[Array, Array, dict[str, Array]]:
    """Per-token PPO-clip surrogate plus β·KL(π_θ ‖ π_ref), aggregated by `cfg.aggregation`.

    With `sampler_logp` (log μ of the sampled tokens), the surrogate of each token is weighted by
    `tis_weights` (module docstring). The KL term is left unweighted **(ours)**: it regularizes
    toward π_ref on whatever tokens were drawn and needs no unbiased gradient.
    Returns (numerator, denominator, stats); stats are token sums for `finalize_stats`.
    """
    mask = mask.astype(jnp.float32)
    pg, clip_active, ratio = ppo_clip_terms(logp, old_logp, advantages, cfg)
    stats = {}
    if sampler_logp is not None:
        is_weight, truncated = tis_weights(old_logp, sampler_logp, cfg.tis_cap)
        pg = pg * is_weight
        stats["is_weight_sum"] = jnp.sum(is_weight * mask)
        stats["is_truncated_sum"] = jnp.sum(truncated * mask)
    per_token = pg
    if ref_logp is not None and cfg.kl_beta > 0:
        kl = kl_estimate(logp, ref_logp, cfg.kl_estimator, cfg.kl_clamp)
        per_token = per_token + cfg.kl_beta * kl
        stats["kl_sum"] = jnp.sum(jax.lax.stop_gradient(kl) * mask)
    num, den = aggregate(per_token, mask, loss_ids, cfg.aggregation, cfg.token_sum_norm)
    gap = jax.lax.stop_gradient(logp - old_logp)
    stats.update(
        tokens=jnp.sum(mask),
        pg_loss_sum=jnp.sum(jax.lax.stop_gradient(pg) * mask),
        clip_sum=jnp.sum(clip_active * mask),
        ratio_sum=jnp.sum(jax.lax.stop_gradient(ratio) * mask),
        # Trainer minus sampler log-prob of the same token: measured at π_old this is pure
        # numerical mismatch (kernels, dtype, batching); it grows with every update afterwards.
        logprob_gap_sum=jnp.sum(gap * mask),
        logprob_abs_gap_sum=jnp.sum(jnp.abs(gap) * mask),
    )
    if entropy is not None:
        stats["entropy_sum"] = jnp.sum(jax.lax.stop_gradient(entropy) * mask)
    return num, den, stats


def sft_loss(
    logp: Array,
    mask: Array,
    loss_ids: Array | None,
    aggregation: str = "token_mean",
    token_sum_norm: float = 2048.0,
    entropy: Array | None = None,
) -> tuple[Array, Array, dict[str, Array]]:
    """Cross-entropy on the masked (policy) tokens, as (numerator, denominator, stats)."""
    mask = mask.astype(jnp.float32)
    num, den = aggregate(-logp, mask, loss_ids, aggregation, token_sum_norm)
    stats = {
        "tokens": jnp.sum(mask),
        "nll_sum": jnp.sum(jax.lax.stop_gradient(-logp) * mask),
    }
    if entropy is not None:
        stats["entropy_sum"] = jnp.sum(jax.lax.stop_gradient(entropy) * mask)
    return num, den, stats


def finalize_stats(stats: Mapping[str, Any]) -> dict[str, float]:
    """Accumulated token sums -> per-token means with the names the metrics log uses."""
    n = max(float(stats["tokens"]), 1.0)
    names = {
        "kl_sum": "kl",
        "pg_loss_sum": "pg_loss",
        "clip_sum": "clip_fraction",
        "ratio_sum": "ratio_mean",
        "logprob_gap_sum": "logprob_gap",
        "logprob_abs_gap_sum": "logprob_abs_gap",
        "entropy_sum": "entropy",
        "nll_sum": "nll",
        "is_weight_sum": "is_weight_mean",
        "is_truncated_sum": "is_truncated_fraction",
    }
    out = {"tokens": float(stats["tokens"])}
    for key, name in names.items():
        if key in stats:
            out[name] = float(stats[key]) / n
    return out
