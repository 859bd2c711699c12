"""Two processes (2 fake CPU devices each) split a GRPO run and train exactly as one process
with 4 devices at the same global batch: same parameters, same metrics, also after a resume.

Each host runs its own share of the rollouts (whole groups) and feeds its step rows as its
block of the one sharded update; `launch/local_multiprocess.sh` starts the processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import make_tiny_tokenizer

from agemem_jax.metrics_log import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("seconds",)  # wall-clock values, not results


def _flags(tok: Path, workdir: Path, steps: int = 2) -> list[str]:
    return [
        "experiments/train.py",
        "--config=configs/hotpotqa_grpo.py:tiny_cpu",
        f"--workdir={workdir}",
        f"--config.model.tokenizer={tok}",
        "--config.model.vocab_size=128",
        "--config.grpo.tasks_per_step=2",  # one group per host
        f"--config.train.steps={steps}",
        "--config.mesh.shape=(1,-1,1)",  # the batch over every device of every host
    ]


def _start(devices: int, cmd: list[str]) -> subprocess.Popen:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        PYTHON=sys.executable,
    )
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(p: subprocess.Popen) -> str:
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-5000:]
    return out


def _two_hosts(cmd: list[str]) -> subprocess.Popen:
    return _start(2, ["bash", "launch/local_multiprocess.sh", "2", *cmd])


def _params(workdir: Path, step: int) -> dict[str, np.ndarray]:
    """A checkpoint's parameters on this process's one device, whatever mesh saved them."""
    path = workdir / "checkpoints" / str(step) / "params"
    ckpt = ocp.StandardCheckpointer()
    meta = ckpt.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
    tree = ckpt.restore(path, target)
    return {
        jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def _assert_same_params(a: Path, b: Path, step: int) -> None:
    pa, pb = _params(a, step), _params(b, step)
    assert pa.keys() == pb.keys()
    worst = max(float(np.max(np.abs(pa[k] - pb[k]))) for k in pa)
    assert worst <= 1e-5, f"step {step}: parameters differ by {worst}"


def _assert_same_metrics(a: Path, b: Path) -> None:
    ma, mb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [m["step"] for m in ma] == [m["step"] for m in mb] == [1, 2]
    for x, y in zip(ma, mb, strict=True):
        assert x.keys() == y.keys()
        for key, v in x.items():
            if any(t in key for t in TIMING):
                continue
            assert np.isclose(v, y[key], rtol=1e-4, atol=1e-6), (x["step"], key, v, y[key])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one-process workdir, two-process workdir, resumed two-process workdir, host logs)."""
    tmp = tmp_path_factory.mktemp("multihost")
    tok = tmp / "tok"
    make_tiny_tokenizer(128).save_pretrained(tok)
    one, two, resumed = tmp / "one", tmp / "two", tmp / "resumed"
    procs = [_start(4, [sys.executable, *_flags(tok, one)]), _two_hosts(_flags(tok, two))]
    _finish(procs[0])
    log = _finish(procs[1])
    # A run killed after step 1: its workdir holds step 1's checkpoint and metrics line.
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(two / "checkpoints" / "1", resumed / "checkpoints" / "1")
    (resumed / "metrics.jsonl").write_text(
        (two / "metrics.jsonl").read_text().splitlines()[0] + "\n"
    )
    log_resumed = _finish(_two_hosts(_flags(tok, resumed)))
    return one, two, resumed, log + log_resumed


def test_hosts_split_the_rollouts(runs):
    log = runs[3]
    # Each host ran its own group (of the two) at every step, not the whole batch.
    for step in (1, 2):
        assert f"step {step}: this host ran groups 0..0 of 2 (4 episodes)" in log
        assert f"step {step}: this host ran groups 1..1 of 2 (4 episodes)" in log
    assert "resumed from step 1" in log


def test_two_hosts_train_as_one(runs):
    one, two, _, _ = runs
    for step in (1, 2):
        _assert_same_params(one, two, step)
    _assert_same_metrics(one, two)


def test_two_hosts_resume_exactly(runs):
    one, _, resumed, _ = runs
    _assert_same_params(one, resumed, 2)
    _assert_same_metrics(one, resumed)


@pytest.mark.slow  # two more multi-process runs; the training equality above stays in CI
def test_two_hosts_split_an_evaluation(tmp_path):
    """Each host evaluates its share of the tasks; the first writes what one process writes."""
    tok = tmp_path / "tok"
    make_tiny_tokenizer(128).save_pretrained(tok)

    def cmd(workdir: Path) -> list[str]:
        return [
            "experiments/eval.py", "--config=configs/eval/hotpotqa.py:synthetic_cpu",
            f"--workdir={workdir}", "--config.policy=model", "--config.model.random=tiny",
            f"--config.model.tokenizer={tok}", "--config.model.vocab_size=128",
            "--config.encoder=hash", "--config.data.limit=4", "--config.eval.batch_tasks=4",
            "--config.sampling.max_new_tokens=16", "--config.mesh.shape=(1,-1,1)",
        ]  # fmt: skip

    one, two = tmp_path / "one", tmp_path / "two"
    procs = [_start(4, [sys.executable, *cmd(one)]), _two_hosts(cmd(two))]
    for p in procs:
        _finish(p)
    ma, mb = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (one, two))
    ma.pop("seconds"), mb.pop("seconds")
    assert ma == mb and ma["episodes"] == 4
    ta, tb = ((d / "eval" / "trajectories.jsonl").read_text().splitlines() for d in (one, two))
    assert len(ta) == 4
    assert [json.loads(x)["steps"] for x in ta] == [json.loads(x)["steps"] for x in tb]


def test_two_hosts_train_lora_as_one(tmp_path):
    """The LoRA variant: only the adapters train, and two hosts reach one host's adapters."""
    tok = tmp_path / "tok"
    make_tiny_tokenizer(128).save_pretrained(tok)
    lora = ["--config.model.lora_rank=4", "--config.model.lora_alpha=8"]
    one, two = tmp_path / "one", tmp_path / "two"
    procs = [
        _start(4, [sys.executable, *_flags(tok, one), *lora]),
        _two_hosts([*_flags(tok, two), *lora]),
    ]
    for p in procs:
        _finish(p)
    params = _params(two, 2)
    assert params and all("lora" in k for k in params), list(params)[:5]
    first = _params(two, 1)
    assert max(float(np.max(np.abs(params[k] - first[k]))) for k in params) > 0  # it trained
    for step in (1, 2):
        _assert_same_params(one, two, step)
    _assert_same_metrics(one, two)
