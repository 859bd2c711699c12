"""Evaluate a policy on AgeMem episodes.

    python experiments/eval.py --config=configs/hotpotqa.py:synthetic_cpu --workdir=/tmp/ev
    python experiments/eval.py --config=configs/hotpotqa.py:hotpotqa_cpu --workdir=/tmp/ev \\
        --config.policy=random --config.data.limit=10
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from agemem_jax import cli, distributed
from agemem_jax.evaluate import evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics and trajectories go.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if cli.printed_config(config):
        return
    workdir = cli.workdir(cli.required(_WORKDIR))
    distributed.initialize(config.get("multihost"))
    metrics = evaluate(config, workdir)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}))


if __name__ == "__main__":
    cli.run(main)
