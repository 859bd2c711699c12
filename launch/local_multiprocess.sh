#!/usr/bin/env bash
# Run N processes of one entry point on this machine, each a "host" with its own CPU devices,
# coordinated through localhost. Exercises the multi-host code path without a cluster.
#   launch/local_multiprocess.sh 2 experiments/train.py --config=configs/hotpotqa_grpo.py:tiny_cpu --workdir=/tmp/mh
set -euo pipefail
n=${1:?number of processes}; shift
port=${PORT:-$((20000 + RANDOM % 20000))}
py=${PYTHON:-.venv/bin/python}
pids=()
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i \
    JAX_PLATFORMS=cpu "$py" "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
