"""ScienceWorld (science experiments); success rate from the native score.

    python experiments/eval.py --config=configs/eval/sciworld.py:oracle --workdir=runs/sciworld
    python experiments/eval.py --config=configs/eval/sciworld.py:smollm2_cpu --workdir=runs/sciworld

Tasks: one variation per task type of the test split. Presets: oracle (the benchmark's expert through our protocol), random (the
robustness floor), smollm2_cpu (the embedded model, 3 tasks).
"""

import ml_collections as mlc

from agemem_jax.config_lib import base_config


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    preset = arg or "oracle"
    c = base_config()
    c.bench = "sciworld"
    c.env.update(dict(num_per_task=1, split="test"))
    c.data.limit = 10
    c.memory.prompt_style = "compact"
    c.episode.max_actions_per_turn = 2  # memory turns allowed before each environment action
    if preset in ("oracle", "random"):
        c.policy = preset
        c.encoder = "hash" if preset == "random" else "minilm"
    elif preset == "smollm2_cpu":
        c.policy = "model"
        c.data.limit = 3
        c.sampling.max_new_tokens = 64
    else:
        raise ValueError(f"unknown preset {preset!r}: oracle, random, smollm2_cpu")
    return c
