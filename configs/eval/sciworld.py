"""ScienceWorld (science experiments); success rate from the native score.

    python experiments/eval.py --config=configs/eval/sciworld.py:oracle --workdir=runs/sciworld
    python experiments/eval.py --config=configs/eval/sciworld.py:smollm2_cpu --workdir=runs/sciworld

Tasks: one variation per task type of the test split. Presets: oracle (the benchmark's expert through our protocol), junk (the
robustness floor), smollm2_cpu (the embedded model, 3 tasks).
"""

from agemem_jax.config_lib import env_eval_config


def get_config(arg: str | None = None):
    return env_eval_config("sciworld", dict(num_per_task=1, split="test"), arg)
