"""Every method of the harness on HotpotQA, prompted (no RL): the noRL rows of Tables 2-3.

    python launch/sweep.py --sweep=configs/sweeps/hotpotqa_methods.py --dir=runs/methods
    python launch/sweep.py --sweep=configs/sweeps/hotpotqa_methods.py:short --dir=runs/m --nice=10

The embedded SmolLM2-135M-Instruct drives each method on the shared HotpotQA dev sample
(`configs/eval/hotpotqa.py:smollm2_cpu`, greedy), 5 episodes each. Methods registered later in
`agemem_jax.methods` join by name.

Args:
  full   (default) the preset's episode shape: T1 = T2 = T3 = 4, 3 actions per turn, 256 tokens.
  short  a shape a shared 2-core CPU finishes in minutes: T1 = T2 = T3 = 2, 2 actions per turn,
         160 new tokens (every supporting fact still arrives in stage 1).
"""

from agemem_jax import methods, sweeps

SHORT = {
    "episode.t1": 2,
    "episode.t2": 2,
    "episode.t3": 2,
    "episode.max_actions_per_turn": 2,
    "sampling.max_new_tokens": 160,
}


def get_sweep(arg: str | None = None) -> sweeps.Sweep:
    if arg not in (None, "full", "short"):
        raise ValueError(f"unknown sweep arg {arg!r}: full, short")
    base = {"data.limit": 5} | (SHORT if arg == "short" else {})
    return sweeps.Sweep(
        name=f"hotpotqa_methods_{arg or 'full'}",
        eval="configs/eval/hotpotqa.py:smollm2_cpu",
        base=base,
        points=sweeps.method_axis(methods.METHODS),
    )
