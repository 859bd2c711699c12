"""The learning run's statistics and report: per-task rows, paired bootstrap, the driver."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agemem_jax import learning
from agemem_jax import tools as T
from agemem_jax.data import SHARED_SAMPLE

ROOT = Path(__file__).resolve().parents[1]


def _episode(task: str, *, answer: str | None, task_score: float, mq: float | None,
             calls: tuple[str, ...] = (), prompt_tokens=(100, 300)) -> dict:  # fmt: skip
    reward = {p: 0.0 for p in learning.REWARD_PARTS} | {"task": task_score, "total": task_score}
    steps = [{"prompt_tokens": n, "calls": []} for n in prompt_tokens]
    steps[0]["calls"] = [{"name": c} for c in calls]
    return {"task_id": task, "answer": answer, "reward": reward, "memory_quality": mq,
            "steps": steps}  # fmt: skip


def test_episode_row_follows_the_summary_definitions():
    answered = learning.episode_row(
        _episode("a", answer="x", task_score=0.8, mq=0.5, calls=(T.ADD, T.ADD, T.FILTER))
    )
    silent = learning.episode_row(_episode("b", answer=None, task_score=0.8, mq=None))
    assert answered["J"] == 0.8 and silent["J"] == 0.0  # no answer scores 0, not the judge's
    assert answered["MQ"] == 0.5 and math.isnan(silent["MQ"])  # a failed MQ is unknown, not 0
    assert answered["TN"] == 200.0
    assert answered[f"calls/{T.ADD}"] == 2 and answered[f"calls/{T.FILTER}"] == 1
    assert answered["calls/total"] == 3 and silent["calls/total"] == 0
    with pytest.raises(ValueError, match="never scored"):
        learning.episode_row({"task_id": "c", "reward": None, "steps": []})


def _rows(values: dict[str, float], key: str = "J") -> dict[str, dict[str, float]]:
    return {t: {key: v} for t, v in values.items()}


def test_paired_difference_and_its_interval():
    rng = np.random.default_rng(0)
    tasks = [f"t{i}" for i in range(48)]
    base = rng.normal(0.3, 0.3, 48)  # a large spread between tasks ...
    before = _rows(dict(zip(tasks, base, strict=True)))
    better = _rows(dict(zip(tasks, base + 0.1 + rng.normal(0, 0.05, 48), strict=True)))
    same = _rows(dict(zip(tasks, base + rng.normal(0, 0.05, 48), strict=True)))
    up = learning.paired(before, better, "J", samples=5000, seed=1)
    flat = learning.paired(before, same, "J", samples=5000, seed=1)
    # ... which pairing removes: a 0.1 shift is clear though the task spread is 0.3.
    assert up.n == 48 and up.significant and 0.07 < up.lo < up.delta < up.hi < 0.13
    assert not flat.significant and flat.lo < 0 < flat.hi
    assert up.delta == pytest.approx(up.after - up.before)
    # The same seed gives the same interval; a constant shift has a zero-width one.
    assert learning.paired(before, better, "J", samples=5000, seed=1) == up
    const = learning.paired(before, _rows({t: v["J"] + 0.25 for t, v in before.items()}), "J")
    assert const.lo == pytest.approx(0.25) and const.hi == pytest.approx(0.25)


def test_paired_drops_unknown_scores_and_refuses_different_tasks():
    before = _rows({"a": 0.0, "b": math.nan, "c": 1.0})
    after = _rows({"a": 1.0, "b": 1.0, "c": 1.0})
    p = learning.paired(before, after, "J", samples=200)
    assert p.n == 2 and p.delta == 0.5
    with pytest.raises(ValueError, match="different tasks"):
        learning.paired(before, _rows({"a": 1.0, "z": 1.0, "c": 0.0}), "J")


def test_per_task_averages_rollouts_and_rejects_bad_files(tmp_path):
    d = tmp_path / "eval"
    d.mkdir()
    with pytest.raises(FileNotFoundError, match="no evaluation"):
        learning.per_task(d)
    eps = [_episode("a", answer="x", task_score=1.0, mq=1.0),
           _episode("a", answer="x", task_score=0.0, mq=0.0)]  # fmt: skip
    (d / "trajectories.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    assert learning.per_task(d)["a"]["J"] == 0.5
    (d / "trajectories.jsonl").write_text(json.dumps(eps[0]) + "\n{torn")
    with pytest.raises(ValueError, match="not JSON lines"):
        learning.per_task(d)


def test_learn_config_rejects_unknown_variants():
    with pytest.raises(ValueError, match=r"learn\.variants"):
        learning.LearnConfig(variants="all_returns,memory_only")
    assert learning.LearnConfig().variant_names == ("all_returns", "answer_only")


def _write_eval(wd: Path, policy: str, suite: str, scores: dict[str, tuple[float, float]]):
    d = learning.eval_dir(wd, policy, suite) / "eval"
    d.mkdir(parents=True)
    eps = [_episode(t, answer="x", task_score=j, mq=mq, calls=(T.ADD,) * int(mq * 4))
           for t, (j, mq) in scores.items()]  # fmt: skip
    (d / "trajectories.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))


def test_report_headline_equals_the_paired_statistics(tmp_path):
    wd = tmp_path / "learn"
    tasks = [f"t{i}" for i in range(12)]
    rng = np.random.default_rng(3)
    sft = {t: (float(rng.uniform()), float(rng.uniform(0, 0.5))) for t in tasks}
    ar = {t: (j + 0.2, mq + 0.3) for t, (j, mq) in sft.items()}
    ao = {t: (j + 0.2, mq) for t, (j, mq) in sft.items()}
    for policy, s in (("sft", sft), ("all_returns", ar), ("answer_only", ao)):
        _write_eval(wd, policy, "procedural", s)
    for v in ("all_returns", "answer_only"):
        (wd / f"grpo_{v}").mkdir()
        lines = [{"step": i + 1, "reward_mean": 0.1 * i, "reward_std": 0.05,
                  "reward_group_std": 0.04, "kl": 0.01 * i, "rollout_seconds": 60,
                  "update_seconds": 60} for i in range(5)]  # fmt: skip
        (wd / f"grpo_{v}" / "metrics.jsonl").write_text(
            "".join(json.dumps(m) + "\n" for m in lines)
        )
    learn = learning.LearnConfig(bootstrap_samples=500, bootstrap_seed=7)
    meta = {"learn": learn.__dict__, "commit": "abc1234", "commands": ["python learn.py"],
            "seconds": {"sft": 60.0, "grpo_all_returns": 600.0}}  # fmt: skip
    (wd / "learn.json").write_text(json.dumps(meta))
    notes = tmp_path / "notes.md"
    notes.write_text("The group std stayed informative.")
    out = tmp_path / "docs" / "learning.md"
    summary = learning.build_report(wd, out, notes=notes)

    text = out.read_text()
    head = summary["headline"]["procedural"]
    assert head["dJ_grpo_sft"]["delta"] == pytest.approx(0.2)
    assert head["dMQ_grpo_sft"]["delta"] == pytest.approx(0.3)
    assert head["dMQ_ar_ao"]["delta"] == pytest.approx(0.3)
    rows = {p: learning.per_task(learning.eval_dir(wd, p, "procedural") / "eval")
            for p in ("sft", "all_returns")}  # fmt: skip
    want = learning.paired(rows["sft"], rows["all_returns"], "MQ", samples=500, seed=7)
    assert want.text() in text  # the Markdown cell is the statistic, resampled the same way
    assert "abc1234" in text and "The group std stayed informative." in text
    assert "GRPO vs SFT in J on procedural: better" in text
    assert (out.with_suffix("") / "reward_curve.png").stat().st_size > 10_000
    assert summary["missing"] == []
    # ADD use rose with MQ: the tool table shows it per policy.
    add_row = next(line for line in text.splitlines() if line.startswith("| ADD |"))
    assert len(add_row.split("|")) == 6  # tool, SFT, two variants

    # A try from the same SFT policy pairs against the same SFT evaluation, in its own section.
    tw = tmp_path / "gated"
    _write_eval(tw, "all_returns", "procedural", {t: (j + 0.1, mq) for t, (j, mq) in sft.items()})
    (tw / "grpo_all_returns").mkdir()
    (tw / "grpo_all_returns" / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "reward_mean": 0.3, "reward_std": 0.1, "reward_group_std": 0.1})
    )
    cmd = (f"learn.py --workdir={tw} --config.learn.sft_from={wd} "
           "--config.learn.variants=all_returns --config.reward.preventive_min_fill=0.5")  # fmt: skip
    try_meta = {"learn": {**learn.__dict__, "sft_from": str(wd)}, "commit": "def5678",
                "commands": [cmd], "seconds": {"grpo_all_returns": 1200.0}}  # fmt: skip
    (tw / "learn.json").write_text(json.dumps(try_meta))
    summary = learning.build_report(wd, out, notes=notes, tries=[tw])
    got = summary["headline"]["tries"]["gated/all_returns"]["procedural"]
    assert got["J"]["delta"] == pytest.approx(0.1) and got["MQ"]["delta"] == pytest.approx(0.0)
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| gated/all_returns |"))
    assert "`--config.reward.preventive_min_fill=0.5`" in row and "learn.variants" not in row
    assert "20.0 min" in row and "def5678" in text
    (tw / "learn.json").write_text(json.dumps({**try_meta, "learn": learn.__dict__}))
    with pytest.raises(ValueError, match=r"not a learn workdir started with learn\.sft_from"):
        learning.build_report(wd, out, tries=[tw])


def test_report_without_an_sft_evaluation_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SFT evaluation"):
        learning.build_report(tmp_path, tmp_path / "r.md")


@pytest.mark.slow
def test_learn_driver_runs_every_stage_and_resumes(tmp_path):
    """The whole learning run on a random tiny model: SFT, both GRPO variants, paired evals."""
    wd = tmp_path / "learn"
    cmd = [sys.executable, "experiments/learn.py", "--config=configs/learn_cpu.py:tiny_cpu",
           f"--workdir={wd}"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    meta = json.loads((wd / "learn.json").read_text())
    suites = ["procedural"] + (["hotpotqa"] if SHARED_SAMPLE.is_file() else [])
    stages = ["sft", *(f"eval_sft_{s}" for s in suites)]
    for v in ("all_returns", "answer_only"):
        stages += [f"grpo_{v}", *(f"eval_{v}_{s}" for s in suites)]
    assert list(meta["seconds"]) == stages
    ao = json.loads((wd / "grpo_answer_only" / "config.json").read_text())
    assert ao["reward"]["w_context"] == 0.0 and ao["reward"]["w_memory"] == 0.0
    for v in ("sft", "all_returns"):  # evaluations score with the full reward either way
        ev = json.loads(
            (learning.eval_dir(wd, v, "procedural") / "eval" / "config.json").read_text()
        )
        assert ev["reward"]["w_memory"] > 0 and ev["data"]["seed"] == 1000
    assert "ΔJ GRPO − SFT" in (wd / "report.md").read_text()
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((wd / "learn.json").read_text())["seconds"] == meta["seconds"]
    assert again.stderr.count("done before, skipped") == len(stages)

    # A try with another training reward from the same SFT policy: the SFT stage and its
    # evaluations are linked, GRPO trains on the try's reward, evaluation keeps the spec's.
    try_wd = tmp_path / "try"
    try_cmd = [sys.executable, "experiments/learn.py", "--config=configs/learn_cpu.py:tiny_cpu",
               f"--workdir={try_wd}", f"--config.learn.sft_from={wd}",
               "--config.learn.variants=all_returns", "--config.reward.preventive_min_fill=0.5"]  # fmt: skip
    tried = subprocess.run(try_cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=1800)  # fmt: skip
    assert tried.returncode == 0, tried.stderr[-4000:]
    try_meta = json.loads((try_wd / "learn.json").read_text())
    assert set(try_meta["shared"]) == {"sft", *(f"eval_sft_{s}" for s in suites)}
    assert list(try_meta["seconds"]) == ["grpo_all_returns",
                                         *(f"eval_all_returns_{s}" for s in suites)]  # fmt: skip
    trained = json.loads((try_wd / "grpo_all_returns" / "config.json").read_text())
    assert trained["reward"]["preventive_min_fill"] == 0.5
    assert Path(trained["model"]["checkpoint"]).resolve() == (wd / "sft" / "export").resolve()
    ev = learning.eval_dir(try_wd, "all_returns", "procedural") / "eval" / "config.json"
    assert json.loads(ev.read_text())["reward"]["preventive_min_fill"] == 0.0
    assert "shared: `" in (try_wd / "report.md").read_text()


@functools.cache
def _learn_module():
    """experiments/learn.py as a module, loaded once (its absl flags can be defined once)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("learn", ROOT / "experiments" / "learn.py")
    assert spec is not None and spec.loader is not None
    learn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(learn)
    return learn


def test_a_done_stage_whose_output_is_gone_runs_again(tmp_path):
    """A ledger copied onto a machine without the weights: the stage that made them runs again
    (its first wall time kept, the re-run listed); with the output present it is skipped."""
    learn = _learn_module()
    ledger = learn.Ledger(tmp_path, learning.LearnConfig(), "tiny")
    export = tmp_path / "sft" / "export"
    calls = []
    assert learn.run_stage(ledger, "sft", lambda: calls.append(1) or export.mkdir(parents=True))
    first = ledger.data["seconds"]["sft"]
    assert learn.run_stage(ledger, "sft", lambda: calls.append(2), export) and calls == [1]
    export.rmdir()
    assert learn.run_stage(ledger, "sft", lambda: calls.append(3), export) and calls == [1, 3]
    meta = json.loads((tmp_path / "learn.json").read_text())
    assert meta["seconds"]["sft"] == first and len(meta["reruns"]["sft"]) == 1


def test_a_stage_stopped_early_stays_open(tmp_path):
    """A GRPO stage that SIGTERM stopped (fn returns False) is not recorded, so a re-run
    resumes it instead of evaluating a policy that was never exported."""
    learn = _learn_module()
    ledger = learn.Ledger(tmp_path, learning.LearnConfig(), "tiny")
    assert learn.run_stage(ledger, "grpo_all_returns", lambda: False) is False
    assert not ledger.done("grpo_all_returns")
    assert learn.run_stage(ledger, "grpo_all_returns", lambda: None) is True
    assert ledger.done("grpo_all_returns")
    assert json.loads((tmp_path / "learn.json").read_text())["seconds"].keys() == {
        "grpo_all_returns"
    }


def test_sft_from_links_the_sft_stage_and_refuses_what_would_not_pair(tmp_path):
    """A try from another workdir's SFT policy reuses its SFT stage and evaluations (linked,
    not re-run), and refuses an SFT evaluation made on other held-out tasks."""
    learn = _learn_module()
    src, wd = tmp_path / "first", tmp_path / "try"
    src.mkdir()
    ran = learn.Ledger(src, learning.LearnConfig(), "tiny")
    for stage in ("sft", "eval_sft_procedural"):
        (src / stage).mkdir(parents=True)
        ran.finish(stage, 1.0)
    wd.mkdir()
    ledger = learn.Ledger(wd, learning.LearnConfig(sft_from=str(src)), "tiny")
    learn.share_sft(src, wd, ledger, ["procedural"])
    assert (wd / "sft").resolve() == (src / "sft").resolve()
    assert ledger.done("sft") and ledger.done("eval_sft_procedural")
    assert learn.run_stage(ledger, "sft", lambda: pytest.fail("a shared stage ran"))
    meta = json.loads((wd / "learn.json").read_text())
    assert meta["shared"] == {"sft": str(src), "eval_sft_procedural": str(src)}
    assert "seconds" in meta and not meta["seconds"]  # its wall time stays the first run's
    learn.share_sft(src, wd, ledger, ["procedural"])  # idempotent on resume
    with pytest.raises(ValueError, match="eval_sft_hotpotqa stage has not finished"):
        learn.share_sft(src, wd, ledger, ["procedural", "hotpotqa"])
    other = tmp_path / "other"
    other.mkdir()
    moved = learn.Ledger(other, learning.LearnConfig(procedural_seed=7), "tiny")
    with pytest.raises(ValueError, match="procedural_seed=1000, this run has 7"):
        learn.share_sft(src, other, moved, ["procedural"])
    with pytest.raises(FileNotFoundError, match=r"no learn\.json"):
        learn.share_sft(tmp_path / "nowhere", wd, ledger, ["procedural"])
