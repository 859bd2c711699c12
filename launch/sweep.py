"""Expand a sweep definition into named runs and run them, or write their cluster commands.

    python launch/sweep.py --sweep=configs/sweeps/reward_x_tools.py:tiny --dir=runs/rxt
    python launch/sweep.py --sweep=... --dir=... --parallel=2       # two runs at a time
    python launch/sweep.py --sweep=... --dir=... --dry_run          # print the commands only
    python launch/sweep.py --sweep=... --dir=... --mode=slurm       # write an sbatch array
    python launch/sweep.py --sweep=... --dir=... --mode=tpu         # write a TPU-pod script

Re-running the same command resumes: a run whose metrics files mark every stage done is
skipped (training itself resumes from its last checkpoint). A run that fails is retried
`--retries` times (default once), then reported; the exit status is 1 if any run failed.
Each run's output goes to `<dir>/<run>/run.log`; `<dir>/sweep.json` lists the runs.
"""

from __future__ import annotations

import sys

from absl import flags

from agemem_jax import cli, sweeps

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep definition file[:arg] with get_sweep().")
_DIR = flags.DEFINE_string("dir", None, "Sweep directory: one workdir per run under it.")
_MODE = flags.DEFINE_enum("mode", "local", ["local", "slurm", "tpu"], "Where the runs go.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Local runs at a time.")
_RETRIES = flags.DEFINE_integer("retries", 1, "Local retries of a failed run before reporting it.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print each run's commands; run nothing.")
_NICE = flags.DEFINE_integer("nice", 0, "Local runs start under `nice -n` this (0: not niced).")
_PYTHON = flags.DEFINE_string("python", sys.executable, "The interpreter the runs use.")
_ONLY = flags.DEFINE_string("only", "", "Run only runs whose name contains this.")
flags.mark_flags_as_required(["sweep", "dir"])


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    spec_path, _, arg = cli.required(_SWEEP).partition(":")
    status = sweeps.launch(
        sweeps.load(spec_path, arg or None),
        cli.required(_DIR),
        mode=_MODE.value,
        parallel=_PARALLEL.value,
        retries=_RETRIES.value,
        nice=_NICE.value,
        dry_run=_DRY_RUN.value,
        only=_ONLY.value,
        python=_PYTHON.value,
        echo=lambda line: print(line, flush=True),
    )
    sys.exit(status)


if __name__ == "__main__":
    cli.run(main)
