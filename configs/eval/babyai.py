"""BabyAI (text layer over minigrid's levels); success rate.

    python experiments/eval.py --config=configs/eval/babyai.py:oracle --workdir=runs/babyai
    python experiments/eval.py --config=configs/eval/babyai.py:smollm2_cpu --workdir=runs/babyai

Tasks: the default level suite. Presets: oracle (the benchmark's expert through our protocol), junk (the
robustness floor), smollm2_cpu (the embedded model, 3 tasks).
"""

from agemem_jax.config_lib import env_eval_config


def get_config(arg: str | None = None):
    return env_eval_config("babyai", dict(num_per_level=3, seed=0), arg)
