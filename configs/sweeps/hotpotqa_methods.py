"""Every method of the harness on HotpotQA, prompted (no RL): the noRL rows of Tables 2-3.

    python launch/sweep.py --sweep=configs/sweeps/hotpotqa_methods.py --dir=runs/methods \\
        --nice=10

The embedded SmolLM2-135M-Instruct drives each method on the shared HotpotQA dev sample
(`configs/eval/hotpotqa.py:smollm2_cpu`), 5 episodes each (`get_sweep("N")` for N). Methods
registered later in `agemem_jax.methods` join by name.
"""

from agemem_jax import methods, sweeps


def get_sweep(arg: str | None = None) -> sweeps.Sweep:
    episodes = int(arg or 5)
    return sweeps.Sweep(
        name="hotpotqa_methods",
        eval="configs/eval/hotpotqa.py:smollm2_cpu",
        base={"data.limit": episodes},
        points=sweeps.method_axis(methods.METHODS),
    )
