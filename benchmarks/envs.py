"""Per-step latency of each benchmark wrapper, with its oracle and random scores.

    python benchmarks/envs.py [--benches pddl,babyai,alfworld,sciworld] [--tasks 10]

For each benchmark, the first `--tasks` tasks of its eval config (`configs/eval/<bench>.py`)
are played straight through the `TextEnv` interface, once by the benchmark's oracle and once by
the random policy (seed 0). One JSON line per benchmark:
  bench            benchmark name
  tasks            tasks played
  metric           success_rate or progress_rate
  oracle           mean benchmark metric of the oracle
  random           mean benchmark metric of the random policy
  make_ms          median wall time of building a task's environment (`envs.make`: parsing
                   and grounding, or taking a simulator from the pool)
  reset_ms         median wall time of `env.reset()` (the first includes loading the task)
  step_ms          median wall time of `env.step(action)` over every oracle and random step
  step_p90_ms      its 90th percentile
  oracle_ms        median time the oracle takes to choose an action (planner or walkthrough)
  decode_ratio     step_ms / the time the embedded model takes to decode one 32-token action
                   at batch 1, measured in the same run (--no-model skips it): below 1, the
                   environment is not what an episode waits on

These are the wrapper's own costs; the episode runner adds the protocol and memory tools.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from agemem_jax import envs
from agemem_jax.config_lib import from_file
from agemem_jax.envs.base import TextEnv


def play_timed(env: TextEnv, choose, resets: list, steps: list, choices: list) -> float:
    """Play one episode, appending the reset's, each choice's and each step's seconds;
    returns the episode's benchmark metric."""
    t = time.perf_counter()
    env.reset()
    resets.append(time.perf_counter() - t)
    while not env.done:
        t = time.perf_counter()
        action = choose(env)
        choices.append(time.perf_counter() - t)
        t = time.perf_counter()
        env.step(action)
        steps.append(time.perf_counter() - t)
    return env.metric_value


def decode_seconds(new_tokens: int = 32) -> float:
    """Seconds for the embedded model to decode one `new_tokens`-token action at batch 1."""
    from agemem_jax.models import load_checkpoint
    from agemem_jax.sampler import SamplerSession

    model, tokenizer = load_checkpoint("smollm2-135m-instruct")
    session = SamplerSession(model, tokenizer, batch_size=1, eos_ids=())
    prompt = tokenizer.encode("You are in a kitchen. Your task is to heat an egg.")
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        session.start([prompt])
        session.decode(new_tokens)
        best = min(best, time.perf_counter() - t)
    return best


def measure(bench: str, n_tasks: int) -> dict:
    specs = envs.tasks(bench, from_file(f"configs/eval/{bench}.py", "oracle").env)[:n_tasks]
    makes, resets, steps, choices, oracle, random_ = [], [], [], [], [], []
    policy = envs.RandomPolicy(seed=0)
    for spec in specs:
        t = time.perf_counter()
        env = envs.make(bench, spec)
        makes.append(time.perf_counter() - t)
        with env:
            oracle.append(play_timed(env, envs.oracle_policy, resets, steps, choices))
            random_.append(play_timed(env, policy, resets, steps, []))
    ms = lambda xs, q=50: round(float(np.percentile(xs, q)) * 1e3, 2)
    return dict(
        bench=bench,
        tasks=len(specs),
        metric=envs.env_class(bench).metric,
        oracle=round(float(np.mean(oracle)), 3),
        random=round(float(np.mean(random_)), 3),
        make_ms=ms(makes),
        reset_ms=ms(resets),
        step_ms=ms(steps),
        step_p90_ms=ms(steps, 90),
        oracle_ms=ms(choices),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benches", default="pddl,babyai,alfworld,sciworld")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--no-model", action="store_true", help="skip the decode reference")
    args = parser.parse_args()
    decode_s = None if args.no_model else decode_seconds()
    for bench in args.benches.split(","):
        line = measure(bench, args.tasks)
        if decode_s is not None:
            line["decode_ratio"] = round(line["step_ms"] / 1e3 / decode_s, 4)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
