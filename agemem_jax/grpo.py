"""The step-wise GRPO training loop (spec section 5) and the cold-start SFT that precedes it.

One GRPO step: B tasks x K rollouts run as three-stage episodes with the current parameters
(π_old); each trajectory gets its composite reward; group advantages are broadcast to every
step; each step becomes one training row (its prompt ids and its action ids with the sampler's
raw log-probs); the trainer runs its epochs/minibatches over the packed rows.

The loop state is the step; the data cursor, the sampler seed and the minibatch shuffle are all
derived from it (and the optimizer update count), so a run killed anywhere resumes from its
last checkpoint to exactly the same parameters and metrics. SIGTERM (preemption) saves first.

Several processes (hosts) split the rollouts: each runs an equal, contiguous share of the B
tasks, all K rollouts of each. Keeping a group on one host means its advantages (mean and
std over the group's K rewards) need nothing from another host; splitting groups would save
nothing, since rollout cost is per episode, and would add an exchange of rewards before any
row could be built. A host's share is a function of the step and the process index alone,
and its sampler rows draw by their row in the whole B·K batch (`first_row`), so the rollouts
are those one process would run, and a resume replays them exactly. The step rows of every
host then feed the one sharded update (`Trainer.step`, a global batch made of every host's
block); rollout metrics are reduced over hosts; only process 0 writes metrics and exports,
while every process takes part in the (collective) checkpoint saves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from tqdm import tqdm

from agemem_jax import builders, faults, methods, models, rl_loss
from agemem_jax.chat import ChatFormat
from agemem_jax.checkpointing import Checkpointer
from agemem_jax.data import Task
from agemem_jax.dataclass_config import build as build_block
from agemem_jax.distributed import allgather_ints, allgather_json, host_share, is_main, local_mesh
from agemem_jax.episodes import EpisodeRunner, Trajectory, summarize
from agemem_jax.judges import Judge
from agemem_jax.metrics_log import MetricsWriter, write_config
from agemem_jax.optim import OptimConfig
from agemem_jax.packing import PackingConfig, StepRow
from agemem_jax.rewards import RewardConfig, score
from agemem_jax.rl_loss import LossConfig
from agemem_jax.rollout import ModelStack
from agemem_jax.sampler import SamplingConfig
from agemem_jax.sharding import MeshConfig
from agemem_jax.train_step import Trainer, UpdateConfig


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """Rollout groups and the objective: the `grpo` config block (spec section 5)."""

    tasks_per_step: int = 2  # B: tasks per GRPO step (ours)
    group_size: int = 8  # K: rollouts per task (spec)
    advantage_eps: float = 1e-6  # ε in A = (r - mean) / (std + ε)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)

    def __post_init__(self):
        if self.tasks_per_step < 1 or self.group_size < 2:
            raise ValueError("grpo needs tasks_per_step >= 1 and group_size >= 2 (a group's std)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The loop around the update: the `train` config block."""

    steps: int = 100  # GRPO steps (the paper trains ~100)
    save_every: int = 10  # checkpoint interval in steps (the last step always saves)
    keep_checkpoints: int = 3  # newest checkpoints kept
    export: bool = True  # write the final policy as an HF folder (workdir/export)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """The cold-start SFT on the scripted expert's trajectories: the `sft` config block."""

    steps: int = 0  # SFT updates; 0 = no warm start
    rows_per_step: int = 32  # at least this many step rows: whole expert trajectories are taken
    learning_rate: float = 5e-5  # ours: the warm start moves much further than RL steps do
    save_every: int = 10  # checkpoint interval in updates (the last one always saves)
    keep_checkpoints: int = 2  # newest SFT checkpoints kept (workdir/sft_checkpoints)


def step_seed(seed: int, step: int) -> int:
    """The sampler seed of a step: a function of the step alone, so resuming replays it."""
    return (int(seed) * 1_000_003 + int(step)) % (2**31 - 1)


def rows_from(trajectories: Sequence[Trajectory], advantages: np.ndarray) -> list[StepRow]:
    """Every step of trajectory i becomes a row carrying A_i (all three stages)."""
    rows = []
    for traj, adv in zip(trajectories, np.asarray(advantages).reshape(-1), strict=True):
        for s in traj.steps:
            rows.append(
                StepRow(s.prompt_ids, s.action_ids, s.logprobs, float(adv),
                        sampler_logprobs=s.sampler_logprobs)
            )  # fmt: skip
    return rows


def _total(traj: Trajectory) -> float:
    if traj.reward is None:
        raise RuntimeError("a trajectory reached the update unscored")
    return traj.reward.total


def rollout_metrics(trajs: Sequence[Trajectory], group_size: int) -> dict[str, Any]:
    rewards = np.asarray([_total(t) for t in trajs], np.float64)
    m = summarize(trajs)
    comps = m.pop("reward_components", {})
    calls = m.pop("tool_calls_by_name", {})
    known = rewards[np.isfinite(rewards)]  # NaN: a judge failure left the reward unknown
    return {
        "reward_mean": float(known.mean()) if known.size else float("nan"),
        "reward_std": float(known.std()) if known.size else float("nan"),
        "reward_group_std": float(rewards.reshape(-1, group_size).std(axis=1, ddof=1).mean()),
        "reward": {k: v for k, v in comps.items() if k != "total"},
        "tool_calls": calls,
        **{k: v for k, v in m.items() if k in ("judge_score", "memory_quality", "prompt_tokens",
                                               "format_error_rate", "answered_rate",
                                               "judge_failures", "unscored_episodes")},
    }  # fmt: skip


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step (then it saves and exits)."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            self.requested = True
            logging.warning("SIGTERM: saving a checkpoint after this step, then stopping")

        try:
            self._old = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (e.g. inside some test runners)
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


@dataclasses.dataclass
class Setup:
    """Everything one GRPO run holds, built once from its config by `build`."""

    trainer: Trainer
    stack: ModelStack
    runner: EpisodeRunner
    tasks: list[Task]
    judge: Judge
    reward_cfg: RewardConfig
    grpo: GRPOConfig
    train: TrainConfig
    seed: int


def _trainer(model, config, loss, learning_rate: float | None = None) -> Trainer:
    """The update for `model` under `config`'s optimizer, packing, update and mesh blocks."""
    optim = build_block(OptimConfig, config.optim)
    if learning_rate is not None:
        optim = dataclasses.replace(optim, learning_rate=learning_rate)
    mesh = build_block(MeshConfig, config.mesh)
    return Trainer(
        model,
        loss=loss,
        optim=optim,
        packing=build_block(PackingConfig, config.packing),
        update=build_block(UpdateConfig, config.trainer),
        mesh=mesh.shape,
        rules=mesh.train_rules,
    )


def build(config) -> Setup:
    # First, so bad settings fail before the model loads.
    methods.require_trainable(config.method)
    judge = builders.judge(config.judge)
    sampling = build_block(SamplingConfig, config.sampling)
    if sampling.params.greedy:
        raise ValueError(
            "GRPO cannot train on greedy rollouts (sampling.temperature=0): the sampler's "
            "distribution is a point mass, so no importance weight can relate it to π_old; "
            "sample with temperature > 0 (non-default temperature/top-k/top-p are corrected)"
        )
    g = build_block(GRPOConfig, config.grpo)
    host_share(g.tasks_per_step, "tasks per step (grpo.tasks_per_step)")  # fails before loading
    model, tokenizer = models.load(config.model, seed=config.seed)
    trainer = _trainer(model, config, g.loss)
    mesh = trainer.mesh if trainer.mesh.size > 1 else None
    if trainer.hosts > 1:  # each host samples its own rollouts on its own devices
        mesh = local_mesh(build_block(MeshConfig, config.mesh).shape)
        mesh = mesh if mesh.size > 1 else None
    stack = ModelStack(
        trainer.model,
        tokenizer,
        sampling,
        max_len=config.memory.t_max + sampling.max_new_tokens,
        mesh=mesh,
    )
    summarize_fn = builders.summarizer(config.summarizer, stack.complete)
    runner = builders.runner(stack.chat, config, summarize_fn)
    tasks = builders.tasks(config.data, runner.cfg)
    if not tasks:
        raise ValueError("the dataset gave no tasks")
    return Setup(
        trainer, stack, runner, tasks, judge, builders.reward_config(config.reward), g,
        build_block(TrainConfig, config.train), int(config.seed),
    )  # fmt: skip


def train(config, workdir: str | Path, progress: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) GRPO; returns the metrics of the steps run in this call."""
    workdir = Path(workdir)
    s = build(config)
    t = s.train
    ckpt = Checkpointer(workdir, keep=t.keep_checkpoints, save_every=t.save_every)
    writer = MetricsWriter(workdir)
    write_config(workdir, config)
    start = _resume(ckpt, s.trainer)
    writer.truncate_after(start)  # also when no checkpoint survived: lines past it are redone
    history = []
    stop = False
    bar = tqdm(
        range(start, t.steps), initial=start, total=t.steps, desc="grpo",
        disable=not (progress and is_main()),
    )  # fmt: skip
    # On an exception too (a judge that stops answering, say), the checkpoint being written
    # finishes, so the run resumes from it.
    with _Preemption() as preempt, _closing(ckpt, writer):
        for step in bar:
            metrics = grpo_step(s, step)
            # A SIGTERM reaching one host stops them all at the same step (saves are collective).
            stop = bool(allgather_ints([preempt.requested]).max())
            history.append(metrics)
            writer.write(step + 1, metrics)
            faults.point("metrics")
            logging.info(
                "step %d reward %.4f kl %.4g loss %.4g rollout %.1fs update %.1fs",
                step + 1, metrics["reward_mean"], metrics.get("kl", float("nan")),
                metrics["loss"], metrics["rollout_seconds"], metrics["update_seconds"],
            )  # fmt: skip
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}")
            loop = {"step": step + 1, "num_updates": s.trainer.num_updates}
            ckpt.save(
                step + 1, s.trainer.params, s.trainer.opt_state, loop, config.to_dict(),
                force=stop or step + 1 == t.steps,
            )  # fmt: skip
            faults.point("checkpoint")  # the save is still being written in the background
            if stop:
                break
    if t.export and s.trainer.num_updates and not stop:
        model = s.trainer.host_model()  # collective: every process gathers, process 0 writes
        if is_main():
            export(model, s.stack.tokenizer, workdir / "export")
    return history


@contextlib.contextmanager
def _closing(*resources):
    try:
        yield
    finally:
        for r in resources:
            r.close()


def _resume(ckpt: Checkpointer, trainer: Trainer) -> int:
    """Restore the newest complete checkpoint into `trainer`; the step it holds (0: none)."""
    latest = ckpt.latest_step()
    if latest is None:
        return 0
    params, opt_state, loop = ckpt.restore(latest, trainer.params, trainer.opt_state)
    trainer.params, trainer.opt_state = params, opt_state
    trainer.num_updates = int(loop["num_updates"])
    logging.info("resumed from step %d of %s", int(loop["step"]), ckpt.dir)
    return int(loop["step"])


def export(model, tokenizer, out: Path) -> Path:
    """Write the HF folder next to `out` and rename it into place, so `out` is never half
    written: a run killed while exporting leaves the previous export (or none) and a temp
    folder that the next export replaces."""
    from agemem_jax.models import save_checkpoint

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tokenizer, tmp)
    faults.point("export")
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    return out


def grpo_step(s: Setup, step: int) -> dict[str, Any]:
    g = s.grpo
    b, k = g.tasks_per_step, g.group_size
    cursor = (step * b) % len(s.tasks)
    batch = [s.tasks[(cursor + i) % len(s.tasks)] for i in range(b)]
    lo, hi = host_share(b, "tasks per step (grpo.tasks_per_step)")  # this host's whole groups
    t0 = time.perf_counter()
    s.stack.set_model(s.trainer.host_model())
    trajs = s.runner.run(
        batch[lo:hi], s.stack.policy, group_size=k, seed=step_seed(s.seed, step), first_row=lo * k
    )
    faults.point("rollout")
    score(trajs, s.judge, s.runner.cfg, s.reward_cfg)
    rollout_s = time.perf_counter() - t0
    logging.info("step %d: this host ran groups %d..%d of %d (%d episodes)",
                 step + 1, lo, hi - 1, b, len(trajs))  # fmt: skip
    rewards = np.asarray([_total(tr) for tr in trajs], np.float64).reshape(hi - lo, k)
    adv = rl_loss.group_advantages(rewards, eps=g.advantage_eps, unknown="zero")
    rows = rows_from(trajs, adv)
    update = s.trainer.step(rows)  # collective: every host's rows in one sharded update
    faults.point("update")
    calls = Counter(c.name for tr in trajs for c in tr.calls())
    local = {
        "rewards": rewards.reshape(-1).tolist(),
        "episodes": len(trajs),
        "steps": sum(len(tr.steps) for tr in trajs),
        "metrics": rollout_metrics(trajs, k),
        "tokens_sampled": int(sum(len(st.action_ids) for tr in trajs for st in tr.steps)),
        "step_rows": len(rows),
        "tool_calls_total": sum(calls.values()),
        "sampler": dict(s.stack.policy.stats),
        "rollout_seconds": rollout_s,
    }
    out = reduce_host_rollouts(allgather_json(local), k)
    # The share of decode row-steps that kept a token, over every host's rows.
    sampler = out["sampler"]
    out["decode_utilization"] = sampler.get("decode_kept_tokens", 0) / max(
        sampler.get("decode_row_steps", 0), 1
    )
    out.update(update)
    out["step"] = step + 1
    return out


# How each rollout count combines over hosts; every other metric is a mean (module docstring).
_SUMMED = ("judge_failures", "unscored_episodes", "tokens_sampled", "step_rows", "tool_calls_total")
_PER_STEP = ("prompt_tokens", "format_error_rate")  # means over steps, weighted by step count


def reduce_host_rollouts(parts: Sequence[dict[str, Any]], group_size: int) -> dict[str, Any]:
    """One step's rollout metrics from every host's local record (`grpo_step`), in host order.

    The reward statistics are recomputed from all rewards (host order is group order); counts
    are summed; per-step means are weighted by steps, per-episode means by episodes; the
    rollout time is the slowest host's. With one host these are its own metrics. A mean that
    skips unknown (NaN) values is combined by episodes, so with judge failures it is the mean
    of the host means, not of all known values.
    """
    out: dict[str, Any]
    if len(parts) == 1:
        p = parts[0]
        out = dict(p["metrics"])
        out.update({k: p[k] for k in _SUMMED if k in p}, sampler=p["sampler"])
        out["rollout_seconds"] = p["rollout_seconds"]
        return out
    rewards = np.asarray([r for p in parts for r in p["rewards"]], np.float64)
    known = rewards[np.isfinite(rewards)]
    episodes = np.asarray([p["episodes"] for p in parts], np.float64)
    steps = np.asarray([p["steps"] for p in parts], np.float64)

    def mean(values: list, weights: np.ndarray) -> Any:
        if isinstance(values[0], dict):
            return {key: mean([v[key] for v in values], weights) for key in values[0]}
        return float(np.sum(np.asarray(values, np.float64) * weights) / max(weights.sum(), 1))

    out = {}
    for key in parts[0]["metrics"]:
        values = [p["metrics"][key] for p in parts]
        if key in _SUMMED:
            out[key] = sum(values)
        else:
            out[key] = mean(values, steps if key in _PER_STEP else episodes)
    out.update({k: sum(p[k] for p in parts) for k in _SUMMED if k in parts[0]})
    out.update(
        reward_mean=float(known.mean()) if known.size else float("nan"),
        reward_std=float(known.std()) if known.size else float("nan"),
        reward_group_std=float(rewards.reshape(-1, group_size).std(axis=1, ddof=1).mean()),
        sampler={key: sum(p["sampler"][key] for p in parts) for key in parts[0]["sampler"]},
        rollout_seconds=max(p["rollout_seconds"] for p in parts),
    )
    return out


# --------------------------------------------------------------------------- cold start
def sft(config, workdir: str | Path, progress: bool = True) -> list[dict[str, Any]]:
    """Supervised warm start on the scripted expert's trajectories, token-in/token-out.

    The expert's turns are rendered with the policy's own tokenizer and context machinery, so
    the rows are exactly what the policy will see and emit in RL. Exports the result as an HF
    folder (`workdir/export`), which the RL config then loads as its checkpoint.
    """
    methods.require_trainable(config.method)
    workdir = Path(workdir)
    model, tokenizer = models.load(config.model, seed=config.seed)

    chat = ChatFormat(tokenizer)
    runner = builders.runner(chat, config, builders.summarizer("extractive"))
    tasks = builders.tasks(config.data, runner.cfg)
    expert = builders.policy(config, name="scripted")  # the method's tools only
    trajs = runner.run(tasks, expert)
    # Whole trajectories, rows in order, so the rows of a growing context pack as one chain.
    episodes = [[StepRow(st.prompt_ids, st.action_ids) for st in tr.steps] for tr in trajs]
    episodes = [e for e in episodes if e]
    if not episodes:
        raise ValueError("the scripted expert produced no steps to learn from")
    sft_cfg = build_block(SFTConfig, config.sft)
    trainer = _trainer(model, config, LossConfig(kl_beta=0.0), sft_cfg.learning_rate)
    ckpt = Checkpointer(
        workdir, keep=sft_cfg.keep_checkpoints, save_every=sft_cfg.save_every,
        name="sft_checkpoints",
    )  # fmt: skip
    start = _resume(ckpt, trainer)
    writer = MetricsWriter(workdir, "sft_metrics.jsonl", tensorboard=False)
    writer.truncate_after(start)
    rng = np.random.default_rng(config.seed)
    order: list[int] = []  # trajectories left in this epoch's shuffled order

    def next_batch() -> list[StepRow]:
        nonlocal order
        batch: list[StepRow] = []
        while len(batch) < sft_cfg.rows_per_step:
            if not order:
                order = rng.permutation(len(episodes)).tolist()
            batch += episodes[order.pop()]
        return batch

    for _ in range(start):  # a resumed run replays the batch order up to its checkpoint
        next_batch()
    history = []
    for step in tqdm(range(start, sft_cfg.steps), desc="sft", disable=not progress):
        m = trainer.sft_step(next_batch())
        faults.point("update")
        m["step"] = step + 1
        writer.write(step + 1, m)
        history.append(m)
        logging.info("sft step %d loss %.4f", step + 1, m["loss"])
        loop = {"step": step + 1, "num_updates": trainer.num_updates}
        ckpt.save(
            step + 1, trainer.params, trainer.opt_state, loop, config.to_dict(),
            force=step + 1 == sft_cfg.steps,
        )  # fmt: skip
        faults.point("checkpoint")
    ckpt.close()
    writer.close()
    if is_main():
        export(trainer.model, tokenizer, workdir / "export")
    return history
