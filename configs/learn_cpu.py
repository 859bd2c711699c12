"""The learning run on this 2-core CPU: does step-wise GRPO move held-out results? (spec §5, §10)

    python experiments/learn.py --config=configs/learn_cpu.py --workdir=runs/learn_cpu
    python experiments/learning_report.py --workdir=runs/learn_cpu \\
        --out=docs/results/learning_cpu.md

One cold-start SFT of SmolLM2-135M-Instruct, then one GRPO run per reward variant
(`learn.variants`: All-Returns and Answer-Only) from that SFT policy, each evaluated greedily
with the SFT policy on the same held-out tasks: `learn.procedural_tasks` procedural tasks of a
data seed the training never draws, and the shared HotpotQA sample. Every stage resumes where
it stopped (GRPO from its last orbax checkpoint), so the run may span sessions.

A try of other GRPO settings from the same SFT policy gets its own workdir and links the
first one's SFT stage and SFT evaluations, e.g. the preventive part gated on context pressure:

    python experiments/learn.py --config=configs/learn_cpu.py --workdir=runs/learn_cpu_gated \\
        --config.learn.sft_from=runs/learn_cpu --config.learn.variants=all_returns \\
        --config.reward.preventive_min_fill=0.5

Presets:
  (none)    the learning run: the demo's episode shape at K=8.
  tiny_cpu  a random tiny model with a handful of steps and tasks: a test of the driver.
"""

from typing import Any

import ml_collections as mlc

from agemem_jax import config_lib, dataclass_config
from agemem_jax.learning import LearnConfig


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    # The embedded model at the demo's fidelity (compact prompts, short episodes, SFT warm start).
    c: Any = config_lib.from_file("configs/hotpotqa_grpo.py", "smollm2_cpu")
    c.learn = dataclass_config.block(LearnConfig)
    # Training draws tasks from data seed 0; evaluation draws from learn.procedural_seed.
    c.data.limit = 400
    # K=8 (spec) keeps a group's reward std informative; B=1 task per step keeps a step short.
    c.grpo.update(tasks_per_step=1, group_size=8)
    # One step is ~8 episodes x ~5 actions: a rollout at batch 8 plus an update of ~8 packed
    # rows of 2048 positions, an estimated 10-12 minutes here, so 10 steps keep one variant
    # within 2 hours. The run resumes with a larger train.steps if the measured steps are faster.
    c.train.update(steps=10, save_every=2, keep_checkpoints=2)
    c.optim.update(learning_rate=2e-5, warmup_steps=0, schedule="constant")
    # Greedy evaluation decodes 24 episodes as one batch, so 48 tasks take 2 batches: the SFT
    # policy's 48 procedural tasks took 1527 s here (learn.json). Not compared with batch 8.
    c.eval.batch_tasks = 24
    if arg == "tiny_cpu":
        c.model.update(random="tiny", tokenizer="smollm2-135m-instruct", scan_layers=False,
                       remat_policy="none")  # fmt: skip
        c.encoder = "hash"
        c.sampling.max_new_tokens = 16
        c.memory.t_max = 2048
        c.data.limit = 4
        c.grpo.group_size = 2
        c.train.update(steps=1, save_every=1)
        c.sft.update(steps=1, rows_per_step=2)
        c.optim.learning_rate = 1e-3
        c.learn.update(procedural_tasks=2, hotpotqa_tasks=2, bootstrap_samples=200)
        c.eval.batch_tasks = 2
    elif arg:
        raise ValueError(f"unknown preset {arg!r}: (none), tiny_cpu")
    return c
