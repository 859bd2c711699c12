"""Multi-host start-up: one process per host, JAX's own coordination, global arrays.

`initialize()` is called first thing by every entry point. It does nothing on a single host, and
calls `jax.distributed.initialize` when the config asks for it or the environment says this is one
process of many (a TPU pod slice, a SLURM job, or an explicit coordinator address). JAX then
discovers the coordinator itself on TPU pods and under SLURM; elsewhere the three `JAX_*`
variables below name it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

# Set by launch/local_multiprocess.sh and by hand on clusters JAX cannot auto-detect.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def wants_multihost(env: Mapping[str, str] | None = None) -> bool:
    """True when the environment describes one process of a multi-process job."""
    env = os.environ if env is None else env
    if env.get(COORDINATOR_ENV):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    # Cloud TPU VMs list every worker of the slice; a single-host slice lists one.
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize(multihost: bool | None = None, cpu_collectives: str = "gloo") -> None:
    """Join the job's other processes when there are any (idempotent).

    `multihost=None` follows the environment; True forces it; False never initializes.
    `cpu_collectives` lets several CPU processes on one machine stand in for hosts in tests.
    """
    if multihost is False or (multihost is None and not wants_multihost()):
        return
    if jax.distributed.is_initialized():
        return
    # None (jax's defaults) lets JAX auto-detect the cluster.
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    if os.environ.get(COORDINATOR_ENV):
        try:
            coordinator_address = os.environ[COORDINATOR_ENV]
            num_processes = int(os.environ[NUM_PROCESSES_ENV])
            process_id = int(os.environ[PROCESS_ID_ENV])
        except (KeyError, ValueError) as e:
            raise ValueError(
                f"{COORDINATOR_ENV} is set, so {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV} must be "
                f"integers too ({e})"
            ) from None
    if cpu_collectives:
        # Only the CPU backend reads this; it must be set before any backend starts.
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    logging.info(
        "process %d/%d: %d local of %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def is_main() -> bool:
    """Only the first process writes logs, metrics and exports; all of them checkpoint."""
    return jax.process_index() == 0


def host_share(n: int, what: str = "items") -> tuple[int, int]:
    """[start, stop) of this process's equal share of `n` items (tasks, groups, eval tasks).

    Shares are contiguous and in process order, which is also the order of the processes'
    devices along a mesh's batch axis: host p's rows land in the p-th block of a global array.
    """
    hosts, index = jax.process_count(), jax.process_index()
    if n % hosts:
        raise ValueError(
            f"{n} {what} do not split evenly over {hosts} processes; make it a multiple of "
            f"{hosts} so every host runs the same amount of work"
        )
    per = n // hosts
    return index * per, (index + 1) * per


def allgather_ints(values: Sequence[int]) -> np.ndarray:
    """Every process's `values` (same length everywhere), stacked `[processes, len]`."""
    local = np.asarray(values, np.int64).reshape(-1)
    if jax.process_count() == 1:
        return local[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), -1)


def allgather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able `obj`, in process order (host-side values of any shape)."""
    if jax.process_count() == 1:
        return [json.loads(json.dumps(obj))]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    longest = int(allgather_ints([data.size]).max())
    padded = np.zeros(longest, np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), -1)
    return [json.loads(bytes(r).rstrip(b"\0").decode()) for r in rows]


def local_mesh(shape: Sequence[int], axes: Sequence[str] = ("data", "fsdp", "tensor")) -> Mesh:
    """A mesh of this process's own devices, shaped like the global mesh `shape`.

    Rollouts run host by host, so each host samples on its local devices only. The tensor axis
    keeps its size when it divides the local device count (else 1); everything else goes to
    the batch axes, split as the global shape splits them.
    """
    devices = jax.local_devices()
    n = len(devices)
    shape = list(shape)
    tensor = shape[-1] if shape[-1] > 0 and n % shape[-1] == 0 else 1
    rest = n // tensor
    data = shape[0] if shape[0] > 0 and rest % shape[0] == 0 else 1
    local = (data, rest // data, tensor)
    if math.prod(local) != n:
        raise ValueError(f"cannot shape {n} local devices like the mesh {tuple(shape)}")
    return Mesh(np.asarray(devices).reshape(local), tuple(axes))
