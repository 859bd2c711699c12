"""AdamW with linear warmup, a cosine or constant schedule, and global-norm clipping.

Every number is a config value. The spec fixes none of them (**ours**): defaults follow common
RL fine-tuning of LLMs (small peak LR, clip 1.0, mild weight decay on matrices only).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from agemem_jax.dataclass_config import build

SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule: the `optim` config block."""

    learning_rate: float = 1e-6  # peak learning rate
    schedule: str = "cosine"  # cosine | constant (both after a linear warmup)
    warmup_steps: int = 10  # optimizer updates of linear warmup from 0
    total_steps: int = 100  # optimizer updates the cosine decays over (spec: ~100 GRPO steps)
    final_lr_fraction: float = 0.1  # cosine ends at learning_rate · this
    b1: float = 0.9  # AdamW first-moment decay
    b2: float = 0.999  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator epsilon
    weight_decay: float = 0.01  # decoupled weight decay (matrices only unless decay_vectors)
    decay_vectors: bool = False  # decay norm scales and biases too (usually not wanted)
    max_grad_norm: float = 1.0  # 0 or less disables clipping

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}; choose one of {SCHEDULES}")
        if self.learning_rate < 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("learning_rate, weight_decay and warmup_steps must be >= 0")
        if self.schedule == "cosine" and self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"cosine schedule needs total_steps ({self.total_steps}) > warmup_steps "
                f"({self.warmup_steps})"
            )


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    lr = cfg.learning_rate
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=cfg.warmup_steps,
            decay_steps=cfg.total_steps,
            end_value=lr * cfg.final_lr_fraction,
        )
    if cfg.warmup_steps == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, cfg.warmup_steps), optax.constant_schedule(lr)],
        [cfg.warmup_steps],
    )


def make_optimizer(
    cfg: OptimConfig | Any = None, **overrides
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, learning-rate schedule). The schedule is returned so the trainer can log it."""
    cfg = build(OptimConfig, cfg, **overrides)
    schedule = make_schedule(cfg)

    def decay_mask(params):
        return jax.tree.map(lambda p: cfg.decay_vectors or p.ndim >= 2, params)

    adamw = optax.adamw(
        schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
    )
    if cfg.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw), schedule
    return adamw, schedule
