"""Multi-host start-up: one process per host, JAX's own coordination, global arrays.

`initialize()` is called first thing by every entry point. It does nothing on a single host, and
calls `jax.distributed.initialize` when the config asks for it or the environment says this is one
process of many (a TPU pod slice, a SLURM job, or an explicit coordinator address). JAX then
discovers the coordinator itself on TPU pods and under SLURM; elsewhere the three `JAX_*`
variables below name it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
from absl import logging

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
