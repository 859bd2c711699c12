"""The cluster launchers' dry runs: every host gets the same command line, the coordinator comes
from the scheduler (SLURM's node list, the TPU VM metadata), and the workdir is shared."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ["experiments/train.py", "--config=configs/hotpotqa_grpo.py:qwen3_4b_tpu"]


def _run(script: str, *args: str, env: dict[str, str] | None = None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_", "TPU_"))}
    return subprocess.run(
        ["bash", script, *args], cwd=ROOT, env=clean | (env or {}),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _per_host(stdout: str, label: str) -> dict[int, str]:
    return {int(m[1]): m[2] for m in re.finditer(rf"^{label} (\d+): (.*)$", stdout, re.MULTILINE)}


SLURM = {
    "SLURM_JOB_NODELIST": "gpu[007-010]",
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "4",
    "SLURM_SUBMIT_DIR": "/shared/agemem",
}


def test_slurm_dry_run_same_flags_scheduler_coordinator_shared_workdir():
    out = _run("launch/slurm_gpu.sbatch", "--dry_run", *ENTRY, "--workdir=runs/r1", env=SLURM)
    assert out.returncode == 0, out.stderr
    tasks = _per_host(out.stdout, "task")
    assert sorted(tasks) == [0, 1, 2, 3]
    # Identical but for the process id, which each task takes from SLURM_PROCID.
    assert len({re.sub(r"JAX_PROCESS_ID=\d+ ", "", c) for c in tasks.values()}) == 1
    for i, cmd in tasks.items():
        assert f"JAX_PROCESS_ID={i} " in cmd
        # The coordinator is the allocation's first node, the process count its task count.
        assert "JAX_COORDINATOR_ADDRESS=gpu007:" in cmd and "JAX_NUM_PROCESSES=4 " in cmd
        # A relative workdir becomes the one absolute path under the submit directory.
        assert "--workdir=/shared/agemem/runs/r1 " in cmd and cmd.endswith(
            "--config.multihost=True"
        )
    run = next(line for line in out.stdout.splitlines() if line.startswith("run: "))
    assert run.startswith("run: srun ") and "--ntasks=4" in run and "SLURM_PROCID" in run


def test_slurm_coordinator_follows_the_node_list():
    env = SLURM | {"SLURM_JOB_NODELIST": "a100-[3,5-6],cpu1", "SLURM_NTASKS": "3"}
    out = _run("launch/slurm_gpu.sbatch", "--dry_run", *ENTRY, "--workdir=/nfs/r", env=env)
    assert out.returncode == 0, out.stderr
    assert "JAX_COORDINATOR_ADDRESS=a100-3:" in out.stdout
    assert sorted(_per_host(out.stdout, "task")) == [0, 1, 2]


def test_slurm_refuses_node_local_or_missing_workdir_and_runs_outside_slurm():
    for bad in ("--workdir=/tmp/r1", None):
        args = [*ENTRY] + ([bad] if bad else [])
        out = _run("launch/slurm_gpu.sbatch", "--dry_run", *args, env=SLURM)
        assert out.returncode == 2 and "error:" in out.stderr and not out.stdout
    out = _run("launch/slurm_gpu.sbatch", "--dry_run", *ENTRY, "--workdir=/nfs/r")
    assert out.returncode == 2 and "SLURM" in out.stderr


def test_tpu_dry_run_same_command_on_every_worker_metadata_coordinator():
    env = {"TPU_NUM_WORKERS": "4"}
    out = _run("launch/tpu_pod.sh", "--dry_run", "pod", "us-east5-a", "run", *ENTRY,
               "--workdir=gs://bucket/r1", env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm ssh pod --zone us-east5-a --worker=all")
    workers = _per_host(out.stdout, "worker")
    assert sorted(workers) == [0, 1, 2, 3] and len(set(workers.values())) == 1
    cmd = workers[0]
    assert "--workdir=gs://bucket/r1 " in cmd and cmd.endswith("--config.multihost=True")
    # No address or process id is passed: JAX reads both from the TPU VM metadata.
    assert "JAX_COORDINATOR_ADDRESS" not in out.stdout and "JAX_PROCESS_ID" not in out.stdout


def test_tpu_refuses_unshared_workdir_and_prints_setup():
    out = _run("launch/tpu_pod.sh", "--dry_run", "pod", "z", "run", *ENTRY, "--workdir=/tmp/r1")
    assert out.returncode == 2 and "error:" in out.stderr and not out.stdout
    out = _run("launch/tpu_pod.sh", "--dry_run", "pod", "z", "setup")
    assert out.returncode == 0, out.stderr
    cmds = out.stdout.splitlines()
    assert len(cmds) == 2 and all(c.startswith("gcloud compute tpus tpu-vm ") for c in cmds)
    assert "--worker=all" in cmds[0] and "--worker=all" in cmds[1]
