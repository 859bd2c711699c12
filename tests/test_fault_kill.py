"""kill -9 anywhere: a GRPO or SFT run SIGKILLed at any instant resumes to the very same result.

Each run is `experiments/train.py` (or `sft.py`) in a subprocess on the tiny preset. It is killed
with SIGKILL, either at a named point (`agemem_jax.faults`: after a rollout, after an update,
after a metrics line, while a checkpoint is being written, halfway through the export) or from
outside at a random instant, then started again with the same command until it finishes. The
final exported weights must be byte-identical to those of an uninterrupted run, every metric
that is not a wall-clock time identical, `metrics.jsonl` must hold each step exactly once, and
no half-written checkpoint may ever be restored.

The CI tier kills at two fixed points per loop; the `slow` tier kills ten times each.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_tokenizer

from agemem_jax.faults import ENV

ROOT = Path(__file__).resolve().parents[1]
POINTS = ("rollout", "update", "metrics", "checkpoint", "export")
SFT_POINTS = ("update", "checkpoint", "export")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    make_tiny_tokenizer(128).save_pretrained(d)
    # Every attempt compiles the same programs: share them through JAX's persistent cache,
    # which changes what runs not at all and saves most of each restart.
    os.environ["AGEMEM_TEST_JAX_CACHE"] = str(tmp_path_factory.mktemp("jax_cache"))
    return d


def _cmd(entry: str, workdir: Path, tok_dir: Path, steps: int) -> list[str]:
    common = [
        sys.executable, f"experiments/{entry}.py", "--config=configs/hotpotqa_grpo.py:tiny_cpu",
        f"--workdir={workdir}", f"--config.model.tokenizer={tok_dir}",
        "--config.model.vocab_size=128",
    ]  # fmt: skip
    if entry == "train":
        return [*common, f"--config.train.steps={steps}", "--config.train.save_every=1",
                "--config.train.keep_checkpoints=2", "--config.train.export=True"]  # fmt: skip
    return [*common, "--config.data.limit=2", f"--config.sft.steps={steps}",
            "--config.sft.rows_per_step=4", "--config.sft.save_every=1"]  # fmt: skip


def _run(cmd: list[str], kill_at: str | None = None, kill_after: float | None = None) -> int:
    """One attempt: its exit code (-9 when killed). `kill_after` kills it from outside."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update(
        JAX_COMPILATION_CACHE_DIR=os.environ["AGEMEM_TEST_JAX_CACHE"],
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    if kill_at:
        env[ENV] = kill_at
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, err = proc.communicate(timeout=kill_after if kill_after is not None else 900)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            proc.kill()
            raise
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"{' '.join(cmd[:2])} exited {proc.returncode}:\n{err[-3000:]!r}")
    return proc.returncode


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _results(workdir: Path, metrics_name: str) -> tuple[str, list[dict]]:
    """(hash of the exported weights, metrics rows without wall-clock values)."""
    rows = [json.loads(line) for line in (workdir / metrics_name).read_text().splitlines()]
    timeless = [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]
    return _digest(workdir / "export" / "model.safetensors"), timeless


def _check_resumed(ref: Path, run: Path, metrics_name: str, ckpt_dir: str, steps: int) -> None:
    weights, rows = _results(run, metrics_name)
    ref_weights, ref_rows = _results(ref, metrics_name)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # none missing, none twice
    assert rows == ref_rows
    assert weights == ref_weights
    # Complete checkpoints only; orbax removed the temp dirs of killed writes on restart.
    assert sorted(p.name for p in (run / ckpt_dir).iterdir()) == [str(steps - 1), str(steps)]
    assert not list(run.glob(".export*"))


def _until_done(cmd, kills: list[dict]) -> list[int]:
    codes = [_run(cmd, **k) for k in kills]
    codes.append(_run(cmd))
    assert codes[-1] == 0
    return codes


@pytest.mark.timeout(1800)
def test_grpo_killed_at_fixed_points_resumes_exactly(tok_dir, tmp_path):
    steps = 2
    ref = tmp_path / "ref"
    assert _run(_cmd("train", ref, tok_dir, steps)) == 0
    run = tmp_path / "killed"
    cmd = _cmd("train", run, tok_dir, steps)
    # While checkpoint 2 is written in the background (it is then torn or complete), after
    # metrics line 2 was written.
    codes = _until_done(cmd, [{"kill_at": "checkpoint:2"}])
    assert codes[0] == -9
    _check_resumed(ref, run, "metrics.jsonl", "checkpoints", steps)


@pytest.mark.slow  # CI kills GRPO at fixed points; SFT shares its checkpoint path
@pytest.mark.timeout(1800)
def test_sft_killed_at_fixed_points_resumes_exactly(tok_dir, tmp_path):
    steps = 3
    ref = tmp_path / "ref"
    assert _run(_cmd("sft", ref, tok_dir, steps)) == 0
    run = tmp_path / "killed"
    cmd = _cmd("sft", run, tok_dir, steps)
    # After update 2 (its metrics line unwritten, checkpoint 1 being written), then halfway
    # through the export.
    codes = _until_done(cmd, [{"kill_at": "update:2"}, {"kill_at": "export:1"}])
    assert codes[:2] == [-9, -9]
    _check_resumed(ref, run, "sft_metrics.jsonl", "sft_checkpoints", steps)


def _ten_kills(entry: str, points, tok_dir: Path, tmp_path: Path, steps: int, seed: int):
    """Ten SIGKILLs that land: alternately at a random named point and from outside at a random
    instant of an attempt. After each, the same command runs again; a chain that finishes is
    checked against the uninterrupted run and the next kills go into a fresh chain. Prints one
    JSON line with what happened."""
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    assert _run(_cmd(entry, ref, tok_dir, steps)) == 0
    duration = time.perf_counter() - t0  # a cold-cache upper bound on one attempt
    metrics = "metrics.jsonl" if entry == "train" else "sft_metrics.jsonl"
    ckpts = "checkpoints" if entry == "train" else "sft_checkpoints"
    rng = random.Random(seed)
    log, landed, chains, identical = [], 0, 0, 0
    run = tmp_path / "chain0"
    for attempt in range(40):
        if landed == 10:
            break
        kill: dict[str, Any]
        if attempt % 2:
            kill = {"kill_at": f"{rng.choice(points)}:1"}
        else:
            kill = {"kill_after": round(rng.uniform(0.05, 0.8) * duration, 2)}
        code = _run(_cmd(entry, run, tok_dir, steps), **kill)
        log.append({**kill, "code": code})
        landed += code == -signal.SIGKILL
        if code == 0:  # the chain finished before this kill landed
            _check_resumed(ref, run, metrics, ckpts, steps)
            chains, identical = chains + 1, identical + 1
            run = tmp_path / f"chain{chains}"
    assert _run(_cmd(entry, run, tok_dir, steps)) == 0
    _check_resumed(ref, run, metrics, ckpts, steps)
    chains, identical = chains + 1, identical + 1
    print(json.dumps({"entry": entry, "kills_landed": landed, "attempts": log,
                      "chains_identical": f"{identical}/{chains}", "ref_seconds": duration}))  # fmt: skip
    assert landed == 10


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_grpo_ten_random_kills(tok_dir, tmp_path):
    _ten_kills("train", POINTS, tok_dir, tmp_path, steps=3, seed=0)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_sft_ten_random_kills(tok_dir, tmp_path):
    _ten_kills("sft", SFT_POINTS, tok_dir, tmp_path, steps=3, seed=1)
