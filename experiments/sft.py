"""Cold-start SFT on the scripted expert's trajectories (exports workdir/export).

    python experiments/sft.py --config=configs/hotpotqa_grpo.py:smollm2_cpu --workdir=/tmp/sft
Then train with --config.model.checkpoint=/tmp/sft/export.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from agemem_jax import cli, distributed, grpo

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the exported policy.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if cli.printed_config(config):
        return
    workdir = cli.workdir(cli.required(_WORKDIR))
    distributed.initialize(config.get("multihost"))
    grpo.sft(config, workdir)


if __name__ == "__main__":
    cli.run(main)
