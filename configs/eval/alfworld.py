"""ALFWorld (household tasks, 6 types); success rate.

    python experiments/eval.py --config=configs/eval/alfworld.py:oracle --workdir=runs/alfworld
    python experiments/eval.py --config=configs/eval/alfworld.py:smollm2_cpu --workdir=runs/alfworld

Tasks: offline generated games; official games with env.source=official. Presets: oracle (the benchmark's expert through our protocol), junk (the
robustness floor), smollm2_cpu (the embedded model, 3 tasks).
"""

from agemem_jax.config_lib import env_eval_config


def get_config(arg: str | None = None):
    return env_eval_config("alfworld", dict(source="generated", num_tasks=30, seed=0), arg)
