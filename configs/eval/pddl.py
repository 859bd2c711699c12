"""PDDL (AgentBoard: barman, blockworld, gripper, tyreworld); progress rate.

    python experiments/eval.py --config=configs/eval/pddl.py:oracle --workdir=runs/pddl
    python experiments/eval.py --config=configs/eval/pddl.py:smollm2_cpu --workdir=runs/pddl

Tasks: the 60 AgentBoard problems from ../shared/data (env.source=generated: our generators). Presets: oracle (the benchmark's expert through our protocol), random (the
robustness floor), smollm2_cpu (the embedded model, 3 tasks).
"""

import ml_collections as mlc

from agemem_jax.config_lib import base_config


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    preset = arg or "oracle"
    c = base_config()
    c.bench = "pddl"
    c.env.update(dict(source="agentboard", num_per_domain=3))
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
