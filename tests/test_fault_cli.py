"""Bad configs and files at every entry point: one `error:` line, exit status 2, no traceback,
and no half-written workdir left behind.

Each case runs the real script in a subprocess and fails before any model is loaded or built.
The CI tier runs every kind of bad input once, rotating over the entry points; the `slow` tier
runs the whole matrix.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = {
    "train": ["experiments/train.py", "--config=configs/hotpotqa_grpo.py:tiny_cpu"],
    "sft": ["experiments/sft.py", "--config=configs/hotpotqa_grpo.py:tiny_cpu"],
    "eval": ["experiments/eval.py", "--config=configs/hotpotqa.py:smollm2_cpu"],
    "demo": ["experiments/demo.py", "--config=configs/hotpotqa_grpo.py:smollm2_cpu"],
}
CASES = ("missing_checkpoint", "corrupt_safetensors", "corrupt_gguf", "unknown_preset",
         "bad_flag_type", "unwritable_workdir")  # fmt: skip


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    from conftest import save_tiny_hf

    d = tmp_path_factory.mktemp("bad")
    hf = d / "hf"
    save_tiny_hf("qwen3", hf)
    blob = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(blob[: len(blob) // 2])  # a torn download
    (d / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(4096))
    (d / "a_file").write_text("not a folder")
    return d


def _args(entry: str, case: str, bad: Path) -> tuple[list[str], Path]:
    script, config = ENTRY[entry]
    workdir = bad / f"work_{entry}_{case}"
    use_checkpoint = ["--config.model.random="] if entry in ("train", "sft") else []
    args = {
        "missing_checkpoint": [*use_checkpoint, f"--config.model.checkpoint={bad}/nowhere"],
        "corrupt_safetensors": [*use_checkpoint, f"--config.model.checkpoint={bad}/hf"],
        "corrupt_gguf": [*use_checkpoint, f"--config.model.checkpoint={bad}/model.gguf"],
        "unknown_preset": [],
        "bad_flag_type": ["--config.memory.t_max=lots"],
        "unwritable_workdir": [],
    }[case]
    if case == "unknown_preset":
        config = config.split(":")[0] + ":no_such_preset"
    if case == "unwritable_workdir":
        workdir = bad / "a_file" / "work"
    return [sys.executable, script, config, f"--workdir={workdir}", *args], workdir


def _check(entry: str, case: str, bad: Path) -> None:
    cmd, workdir = _args(entry, case, bad)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, (entry, case, proc.stderr[-3000:])
    assert len(err) == 1, (entry, case, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, (entry, case, proc.stderr[-3000:])
    # Nothing half-written: the workdir is absent or empty, so the next run starts clean.
    assert not workdir.is_dir() or not any(workdir.iterdir()), sorted(workdir.rglob("*"))


_ROTATION = dict(zip(CASES, itertools.cycle(ENTRY), strict=False))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line(case, bad_files):
    _check(_ROTATION[case], case, bad_files)


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "case"), list(itertools.product(ENTRY, CASES)))
def test_bad_input_matrix(entry, case, bad_files):
    _check(entry, case, bad_files)
