"""The learning run: SFT, one GRPO run per reward variant, and paired held-out evaluations.

    python experiments/learn.py --config=configs/learn_cpu.py --workdir=runs/learn_cpu
    python experiments/learn.py --config=configs/learn_cpu.py --workdir=runs/learn_cpu \\
        --config.learn.variants=all_returns          # one variant only

Stages, each skipped once `learn.json` records it done, so re-running the command resumes
(a GRPO run from its last checkpoint):
  sft                     cold-start SFT on the scripted expert (sft/export)
  eval_sft_<suite>        greedy evaluation of the SFT policy
  grpo_<variant>          GRPO from the SFT policy with the variant's reward
  eval_<variant>_<suite>  greedy evaluation of the GRPO policy on the same tasks
`config.reward` with the variant's overrides is the reward GRPO trains on; every evaluation
scores with the spec's reward (`RewardConfig`'s defaults), whatever the policy trained on, so
variants and tries are compared on one scale. A try of other GRPO settings from the same SFT
policy runs in its own workdir with `--config.learn.sft_from=<the first workdir>`, which links
that workdir's SFT stage and SFT evaluations instead of repeating them. Ends by writing `report.md` in the workdir
(`experiments/learning_report.py` writes it elsewhere, e.g. into docs/).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from agemem_jax import cli, distributed, grpo, learning
from agemem_jax.data import SHARED_SAMPLE
from agemem_jax.dataclass_config import block, build
from agemem_jax.evaluate import evaluate
from agemem_jax.rewards import RewardConfig

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/learn_cpu.py", "The learning run's config (training and `learn` block)."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where every stage writes; re-run to resume.")


def eval_config(config, checkpoint: str, suite: str, learn: learning.LearnConfig):
    """Greedy evaluation of `checkpoint` on `suite`, with the training's episode shape."""
    c = copy.deepcopy(config)
    c.model.update(checkpoint=checkpoint, random="", lora_rank=0)  # exports are merged
    c.policy = "model"
    c.reward = block(RewardConfig)  # one scale for every policy: the spec's reward
    c.sampling.temperature = 0.0
    if suite == "procedural":
        if learn.procedural_seed == config.data.seed:
            raise ValueError(
                f"learn.procedural_seed={learn.procedural_seed} is the training's data.seed: "
                "the held-out tasks would be training tasks"
            )
        c.data.update(source="synthetic", seed=learn.procedural_seed,
                      limit=learn.procedural_tasks)  # fmt: skip
    else:
        c.data.update(source="hotpotqa", path=learn.hotpotqa_path or str(SHARED_SAMPLE),
                      limit=learn.hotpotqa_tasks)  # fmt: skip
    return c


def suites(learn: learning.LearnConfig) -> list[str]:
    out = ["procedural"]
    if learn.hotpotqa_tasks:
        path = Path(learn.hotpotqa_path or SHARED_SAMPLE)
        if path.is_file():
            out.append("hotpotqa")
        else:
            logging.warning("no HotpotQA file at %s: the HotpotQA suite is skipped", path)
    return out


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


class Ledger:
    """`learn.json`: which stages finished, in how long, under which commands and commits."""

    def __init__(self, workdir: Path, learn: learning.LearnConfig, model: str):
        self.path = workdir / "learn.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault("seconds", {})
        self.data["learn"] = dataclasses.asdict(learn)  # what the report's bootstrap uses
        self.data["model"] = model
        cmd = " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])
        for key, value in (("commands", cmd), ("commits", _commit())):
            seen = self.data.setdefault(key, [])
            if value not in seen:
                seen.append(value)
        self.data["commit"] = self.data["commits"][-1]
        self._save()

    def done(self, stage: str) -> bool:
        return stage in self.data["seconds"] or stage in self.data.get("shared", {})

    def share(self, stage: str, source: Path) -> None:
        self.data.setdefault("shared", {})[stage] = str(source)
        self._save()

    def finish(self, stage: str, seconds: float, rerun: bool = False) -> None:
        if rerun:
            self.data.setdefault("reruns", {}).setdefault(stage, []).append(round(seconds, 1))
        else:
            self.data["seconds"][stage] = round(seconds, 1)
        self._save()

    def _save(self) -> None:
        if not distributed.is_main():
            return
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


def run_stage(ledger: Ledger, stage: str, fn, needs: Path | None = None) -> bool:
    """Run `fn` unless the ledger has `stage`; record it only if `fn` did not return False
    (a GRPO run that SIGTERM stopped early: the stage stays open and the next run resumes it).

    `needs` is what a finished stage leaves for later ones (an export, an evaluation). When the
    ledger says done but `needs` is gone (the ledger was copied onto a fresh machine without the
    weights), the stage runs again. Stages are seeded, so it rebuilds the policy up to the
    machine's floating-point differences. The ledger keeps the first wall time and lists the
    re-runs under `reruns`.
    """
    if ledger.done(stage) and (needs is None or needs.exists()):
        logging.info("%s: done before, skipped", stage)
        return True
    rerun = ledger.done(stage)
    if rerun:
        logging.warning("%s: done before, but %s is gone: running it again", stage, needs)
    logging.info("%s: starting", stage)
    t = time.time()
    if fn() is False:
        logging.warning("%s: stopped before its end; re-run the command to resume it", stage)
        return False
    ledger.finish(stage, time.time() - t, rerun=rerun)
    return True


# What a reused SFT evaluation must have been run with to pair with this run's evaluations.
_EVAL_SETTINGS = {"procedural": ("procedural_tasks", "procedural_seed"),
                  "hotpotqa": ("hotpotqa_tasks", "hotpotqa_path")}  # fmt: skip


def share_sft(source: Path, wd: Path, ledger: Ledger, suites: list[str]) -> None:
    """Link `source`'s SFT stage and SFT evaluations into `wd` (`learn.sft_from`)."""
    meta = source / "learn.json"
    if not meta.is_file():
        raise FileNotFoundError(f"learn.sft_from={source}: no learn.json there")
    theirs = json.loads(meta.read_text())
    ours = ledger.data["learn"]
    for stage in ["sft", *(f"eval_sft_{s}" for s in suites)]:
        done = stage in theirs.get("seconds", {}) or stage in theirs.get("shared", {})
        if not done or not (source / stage).is_dir():
            raise ValueError(f"learn.sft_from={source}: its {stage} stage has not finished")
        suite = stage.removeprefix("eval_sft_")
        for key in _EVAL_SETTINGS.get(suite, ()):
            if theirs.get("learn", {}).get(key) != ours[key]:
                raise ValueError(
                    f"learn.sft_from={source}: its {stage} ran with {key}="
                    f"{theirs.get('learn', {}).get(key)!r}, this run has {ours[key]!r}"
                )
        link, target = wd / stage, (source / stage).resolve()
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
        elif link.resolve() != target:
            raise ValueError(f"{link} exists and is not {target}: remove it or drop sft_from")
        ledger.share(stage, source)


def grpo_stage(config, workdir: Path) -> bool:
    """GRPO to its last step; False when it stopped early (no export is written then)."""
    grpo.train(config, workdir)
    return (workdir / "export").is_dir()


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if cli.printed_config(config):
        return
    learn = build(learning.LearnConfig, config.learn)
    wd = cli.workdir(cli.required(_WORKDIR))
    distributed.initialize(config.get("multihost"))
    ledger = Ledger(wd, learn, config.model.random or config.model.checkpoint)
    todo = suites(learn)
    if learn.sft_from:
        share_sft(Path(learn.sft_from), wd, ledger, todo)

    def results(policy: str, suite: str) -> Path:
        return learning.eval_dir(wd, policy, suite) / "eval" / "trajectories.jsonl"

    run_stage(ledger, "sft", lambda: grpo.sft(config, wd / "sft"), wd / "sft" / "export")
    policies = {"sft": str(wd / "sft" / "export")}
    for suite in todo:
        c = eval_config(config, policies["sft"], suite, learn)
        run_stage(ledger, f"eval_sft_{suite}", lambda c=c, s=suite: evaluate(
            c, learning.eval_dir(wd, "sft", s)), results("sft", suite))  # fmt: skip
    for variant in learn.variant_names:
        rl = copy.deepcopy(config)
        rl.model.checkpoint = policies["sft"]
        rl.reward.update(learning.VARIANTS[variant])
        rl.train.export = True
        export = wd / f"grpo_{variant}" / "export"
        if not run_stage(ledger, f"grpo_{variant}", lambda rl=rl, v=variant: grpo_stage(
                rl, wd / f"grpo_{v}"), export):  # fmt: skip
            return
        policies[variant] = str(wd / f"grpo_{variant}" / "export")
        for suite in todo:
            c = eval_config(config, policies[variant], suite, learn)
            run_stage(ledger, f"eval_{variant}_{suite}", lambda c=c, v=variant, s=suite: evaluate(
                c, learning.eval_dir(wd, v, s)), results(variant, suite))  # fmt: skip
    if distributed.is_main():
        summary = learning.build_report(wd, wd / "report.md")
        print(json.dumps(summary["headline"], indent=1))
        print(f"report: {summary['report']}")


if __name__ == "__main__":
    cli.run(main)
