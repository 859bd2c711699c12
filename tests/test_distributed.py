"""Two CPU processes on localhost stand in for two hosts: they join, see global devices, reduce."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

from agemem_jax.distributed import wants_multihost

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import os
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from agemem_jax import distributed, sharding as shd
    distributed.initialize()
    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
    mesh = shd.make_mesh((-1, 1, 1))
    local = np.full((2,), jax.process_index() + 1, np.float32)  # this host's rows of a global array
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local, (4,))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
    # One os.write per line: both hosts share the pipe, and an unbuffered print (PYTHONUNBUFFERED)
    # writes each argument separately, so the two hosts' lines could interleave mid-line.
    os.write(1, f"SUM {jax.process_index()} {float(total)}\\n".encode())
    """
)


def test_two_processes_form_one_job():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run(
        ["bash", "launch/local_multiprocess.sh", "2", "-c", SCRIPT],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    sums = sorted(line for line in out.stdout.splitlines() if line.startswith("SUM"))
    assert sums == ["SUM 0 6.0", "SUM 1 6.0"]  # 1+1 from host 0, 2+2 from host 1


def test_environment_detection():
    assert not wants_multihost({})
    assert wants_multihost({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert wants_multihost({"SLURM_NTASKS": "4"})
    assert not wants_multihost({"SLURM_NTASKS": "1"})
    assert wants_multihost({"TPU_WORKER_HOSTNAMES": "w0,w1"})
    assert not wants_multihost({"TPU_WORKER_HOSTNAMES": "w0"})
