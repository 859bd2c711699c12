"""Evaluation on three-stage HotpotQA-style episodes (spec sections 4, 6, 8).

    python experiments/eval.py --config=configs/hotpotqa.py:synthetic_cpu --workdir=/tmp/ev
    python experiments/eval.py --config=configs/hotpotqa.py:smollm2_cpu --workdir=/tmp/ev \\
        --config.policy=scripted --config.data.limit=20

Presets:
  synthetic_cpu  procedural multi-hop data (offline, seeded), scripted expert, rule judge.
  hotpotqa_cpu   the shared HotpotQA dev sample, scripted expert, rule judge.
  smollm2_cpu    the embedded SmolLM2-135M-Instruct as the policy on the shared sample.
"""

import ml_collections as mlc

from agemem_jax.config_lib import base_config
from agemem_jax.data import SHARED_SAMPLE


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    preset = arg or "synthetic_cpu"
    c = base_config()
    # Evaluation is greedy and, on CPU, short: 256 tokens hold every action of the protocol.
    c.sampling.update(temperature=0.0, max_new_tokens=256)
    if preset == "synthetic_cpu":
        c.data.source = "synthetic"
    elif preset == "hotpotqa_cpu":
        c.data.source, c.data.path, c.data.limit = "hotpotqa", str(SHARED_SAMPLE), 60
    elif preset == "smollm2_cpu":
        c.policy = "model"
        c.data.source, c.data.path, c.data.limit = "hotpotqa", str(SHARED_SAMPLE), 20
        c.summarizer = "policy"
    else:
        raise ValueError(f"unknown preset {preset!r}: synthetic_cpu, hotpotqa_cpu, smollm2_cpu")
    return c
