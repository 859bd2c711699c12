"""PDDL (AgentBoard: barman, blockworld, gripper, tyreworld); progress rate.

    python experiments/eval.py --config=configs/eval/pddl.py:oracle --workdir=runs/pddl
    python experiments/eval.py --config=configs/eval/pddl.py:smollm2_cpu --workdir=runs/pddl

Tasks: the 60 AgentBoard problems from ../shared/data (env.source=generated: our generators). Presets: oracle (the benchmark's expert through our protocol), junk (the
robustness floor), smollm2_cpu (the embedded model, 3 tasks).
"""

from agemem_jax.config_lib import env_eval_config


def get_config(arg: str | None = None):
    return env_eval_config("pddl", dict(source="agentboard", num_per_domain=3), arg)
