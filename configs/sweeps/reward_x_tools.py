"""Reward setting x tool ablation: Answer-Only / All-Returns x full / LT-only tools (spec 8).

    python launch/sweep.py --sweep=configs/sweeps/reward_x_tools.py:tiny --dir=runs/rxt
    python launch/sweep.py --sweep=configs/sweeps/reward_x_tools.py:smollm2 --dir=runs/rxt_s

Each run trains with GRPO, then evaluates its exported policy greedily (Table 4 of the report
reads the evaluations, Fig. 5 the training curves).

Args:
  tiny     the random tiny decoder (`tiny_cpu`): two GRPO steps per run, seconds each; it tests
           the machinery and learns nothing.
  smollm2  the embedded SmolLM2-135M-Instruct (`smollm2_cpu`), two steps, 4 evaluation tasks.
  paper    Qwen3-4B on a TPU slice with the paper's ~100 steps and all three tool settings.
"""

from agemem_jax import sweeps


def get_sweep(arg: str | None = None) -> sweeps.Sweep:
    arg = arg or "tiny"
    tools = ("full", "lt_only")
    if arg == "tiny":
        preset, train_base = "tiny_cpu", {"train.steps": 2, "grpo.group_size": 2}
        eval_base = {"sampling.temperature": 0.0, "data.limit": 2, "eval.batch_tasks": 2}
    elif arg == "smollm2":
        preset, train_base = "smollm2_cpu", {}
        eval_base = {"sampling.temperature": 0.0, "data.limit": 4}
    elif arg == "paper":
        preset, train_base, eval_base = "qwen3_4b_tpu", {}, {"sampling.temperature": 0.0}
        tools = ("full", "lt_only", "lt_rag")
    else:
        raise ValueError(f"unknown sweep arg {arg!r}: tiny, smollm2, paper")
    config = f"configs/hotpotqa_grpo.py:{preset}"
    return sweeps.Sweep(
        name=f"reward_x_tools_{arg}",
        train=config,
        eval=config,
        train_base=train_base,
        eval_base=eval_base,
        points=sweeps.product(sweeps.reward_variants(), sweeps.tool_ablations(tools)),
    )
