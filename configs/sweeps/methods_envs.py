"""Every method of the harness on the four interactive benchmarks, prompted (no RL).

    python launch/sweep.py --sweep=configs/sweeps/methods_envs.py:short --dir=runs/menv

With `configs/sweeps/hotpotqa_methods.py` this fills the prompted rows of Table 2 and the
memory-system cost table. Each benchmark's `smollm2_cpu` preset drives the embedded
SmolLM2-135M-Instruct (greedy); the memory system ingests every observation and its retrieval
for the latest one is in the agent's prompt.

Args:
  full   (default) 3 episodes of each benchmark at AgentBoard's 30-step limit.
  short  2 episodes of at most 2 environment steps each (each step: up to 2 memory turns, then
         the action). On a shared 2-core CPU at nice 19 a run takes 1.5-18 minutes (the LLM-heavy
         baselines longest). It checks that every system runs end to end inside an environment
         episode, not how well it does.
"""

from agemem_jax import methods, sweeps

BENCHMARKS = ("alfworld", "sciworld", "pddl", "babyai")
SHORT = {"data.limit": 2, "episode.max_env_steps": 2}


def get_sweep(arg: str | None = None) -> sweeps.Sweep:
    if arg not in (None, "full", "short"):
        raise ValueError(f"unknown sweep arg {arg!r}: full, short")
    points = sweeps.product(
        sweeps.benchmark_axis(BENCHMARKS, "smollm2_cpu"), sweeps.method_axis(methods.METHODS)
    )
    return sweeps.Sweep(
        name=f"methods_envs_{arg or 'full'}",
        points=points,
        base=SHORT if arg == "short" else {},
    )
