"""The paper's grids on accelerators, written for `--mode=slurm` / `--mode=tpu`.

    python launch/sweep.py --sweep=configs/sweeps/paper_grid.py:k_beta --dir=gs://B/kb --mode=tpu
    python launch/sweep.py --sweep=configs/sweeps/paper_grid.py:benchmarks --dir=/shared/bm \\
        --mode=slurm

Args:
  k_beta      GRPO with K in {4, 8} x β in {0, 0.1} (spec default K=8, β=0.1), then HotpotQA.
  weights     the product of the reward weights: w_task in {1/3, 1}, the others in {0, 1/3, 1}.
  benchmarks  methods x the five benchmarks, prompted (evaluation only), SmolLM2 on CPU.
"""

from agemem_jax import sweeps

BENCHMARKS = ("hotpotqa", "alfworld", "sciworld", "pddl", "babyai")
PROMPTED = ("agemem", "agemem_rag", "no_memory", "rag")


def get_sweep(arg: str | None = None) -> sweeps.Sweep:
    grpo = "configs/hotpotqa_grpo.py:qwen3_4b_tpu"
    if arg == "k_beta":
        points = sweeps.product(sweeps.group_sizes([4, 8]), sweeps.kl_betas([0.0, 0.1]))
        return sweeps.Sweep("k_beta", points, train=grpo, eval=grpo,
                            eval_base={"sampling.temperature": 0.0})  # fmt: skip
    if arg == "weights":
        points = sweeps.reward_weights([1 / 3, 1.0], [0.0, 1 / 3, 1.0], [0.0, 1 / 3, 1.0])
        return sweeps.Sweep("reward_weights", points, train=grpo, eval=grpo,
                            eval_base={"sampling.temperature": 0.0})  # fmt: skip
    if arg == "benchmarks":
        hotpotqa = [sweeps.Point(tags=(("bench", "hotpotqa"),),
                                 eval_config="configs/eval/hotpotqa.py:smollm2_cpu")]  # fmt: skip
        envs = sweeps.benchmark_axis(BENCHMARKS[1:], "smollm2_cpu")
        points = sweeps.product(sweeps.chain(hotpotqa, envs), sweeps.method_axis(PROMPTED))
        return sweeps.Sweep("benchmarks_x_methods", points)
    raise ValueError(f"unknown sweep arg {arg!r}: k_beta, weights, benchmarks")
