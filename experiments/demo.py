"""The main job on the embedded default model, end to end, sized for a 2-core CPU.

    python experiments/demo.py --workdir=runs/demo      (what `make demo` runs)

1. Evaluation of the prompted base checkpoint (AgeMem-noRL: same tools, no training).
2. Cold-start SFT of SmolLM2-135M-Instruct on the scripted expert's trajectories.
3. Evaluation of the SFT policy, on the same held-out procedural tasks.
4. A short step-wise GRPO run from the SFT policy.
5. Evaluation of the SFT+GRPO policy (AgeMem) on the same held-out tasks.
The SFT warm start is training, so its row is "SFT", not noRL. Prints a table (J, MQ, TN, TC,
reward) and writes `reward_curve.png` and `summary.json`.
At this scale the numbers say whether the pipeline runs, not what the method achieves: for
that, see the learning run (`configs/learn_cpu.py`), whose paired results with confidence
intervals are committed in docs/results/learning_cpu.md.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from agemem_jax import cli, distributed, grpo
from agemem_jax.evaluate import evaluate
from agemem_jax.metrics_log import read_jsonl

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/hotpotqa_grpo.py:smollm2_cpu", "Training config (the demo's sizes)."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where every stage writes.")
_EVAL_TASKS = flags.DEFINE_integer("eval_tasks", 3, "Held-out tasks per evaluation.")

COLUMNS = (
    ("J", "judge_score"),
    ("MQ", "memory_quality"),
    ("TN", "prompt_tokens"),
    ("TC", "tool_calls"),
    ("reward", "reward"),
    ("format err", "format_error_rate"),
)


def eval_config(config, checkpoint: str, n_tasks: int):
    """Greedy evaluation of `checkpoint` on tasks the training never saw (another data seed)."""
    c = copy.deepcopy(config)
    c.model.checkpoint = checkpoint
    c.model.random = ""
    c.policy = "model"
    c.sampling.temperature = 0.0
    c.data.seed = config.data.seed + 1
    c.data.limit = n_tasks
    c.eval.batch_tasks = n_tasks
    return c


def table(rows: dict[str, dict]) -> str:
    head = f"{'policy':<22}" + "".join(f"{name:>12}" for name, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for policy, m in rows.items():
        lines.append(f"{policy:<22}" + "".join(f"{m[key]:>12.3f}" for _, key in COLUMNS))
    return "\n".join(lines)


def plot(grpo_metrics: list[dict], sft_metrics: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [m["step"] for m in grpo_metrics]
    a.plot(steps, [m["reward_mean"] for m in grpo_metrics], marker="o", label="mean reward")
    a.fill_between(
        steps,
        [m["reward_mean"] - m["reward_std"] for m in grpo_metrics],
        [m["reward_mean"] + m["reward_std"] for m in grpo_metrics],
        alpha=0.2,
    )
    a.set(xlabel="GRPO step", ylabel="R(τ)", title="GRPO reward")
    a.legend()
    b.plot([m["step"] for m in sft_metrics], [m["loss"] for m in sft_metrics], marker="o")
    b.set(xlabel="SFT step", ylabel="cross-entropy", title="Cold-start SFT")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    wd = cli.workdir(_WORKDIR.value)
    distributed.initialize(config.get("multihost"))
    t0 = time.time()
    seconds = {}

    logging.info("1/5 evaluating the prompted base checkpoint (noRL)")
    base = evaluate(
        eval_config(config, config.model.checkpoint, _EVAL_TASKS.value), wd / "eval_norl"
    )
    seconds["eval_norl"] = time.time() - t0

    logging.info("2/5 cold-start SFT")
    t = time.time()
    grpo.sft(config, wd / "sft")
    sft_export = str(wd / "sft" / "export")
    seconds["sft"] = time.time() - t

    logging.info("3/5 evaluating the SFT policy")
    t = time.time()
    before = evaluate(eval_config(config, sft_export, _EVAL_TASKS.value), wd / "eval_sft")
    seconds["eval_sft"] = time.time() - t

    logging.info("4/5 GRPO from the SFT policy")
    t = time.time()
    rl = copy.deepcopy(config)
    rl.model.checkpoint = sft_export
    rl.train.export = True
    grpo.train(rl, wd / "grpo")
    seconds["grpo"] = time.time() - t

    logging.info("5/5 evaluating the SFT+GRPO policy")
    t = time.time()
    after = evaluate(
        eval_config(config, str(wd / "grpo" / "export"), _EVAL_TASKS.value), wd / "eval_rl"
    )
    seconds["eval_rl"] = time.time() - t
    seconds["total"] = time.time() - t0

    grpo_metrics = read_jsonl(wd / "grpo" / "metrics.jsonl")
    plot(grpo_metrics, read_jsonl(wd / "sft" / "sft_metrics.jsonl"), wd / "reward_curve.png")
    rows = {"prompted base (noRL)": base, "SFT": before, "SFT+GRPO": after}
    summary = {
        "table": rows,
        "seconds": seconds,
        "grpo_reward": [m["reward_mean"] for m in grpo_metrics],
    }
    (wd / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(table(rows))
    print(f"\nreward curve: {wd / 'reward_curve.png'}   total {seconds['total'] / 60:.1f} min")
    print(
        f"{len(grpo_metrics)} GRPO steps say whether the pipeline runs, not whether RL helps; "
        "a longer run's paired results with 95% intervals: docs/results/learning_cpu.md"
    )


if __name__ == "__main__":
    cli.run(main)
