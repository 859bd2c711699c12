#!/usr/bin/env bash
# Run one command on every worker of a Cloud TPU pod slice (one process per host).
#   launch/tpu_pod.sh NAME ZONE setup                      # copy the repo, build .venv on every worker
#   launch/tpu_pod.sh NAME ZONE run experiments/train.py --config=configs/hotpotqa_grpo.py:qwen3_4b_tpu --workdir=gs://BUCKET/run1
#   launch/tpu_pod.sh --dry_run NAME ZONE run ...          # print every command instead of running it
# Every worker runs the same command line. jax.distributed.initialize() finds the coordinator
# (worker 0) and each worker's process id in the TPU VM metadata, so no address is passed. The
# workdir must be shared by all workers: a gs:// path (or SHARED_WORKDIR=1 for a mounted one).
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry_run" ]]; then dry_run=1; shift; fi
name=${1:?TPU name}; zone=${2:?zone}; what=${3:?setup|run}; shift 3
remote_dir=${REMOTE_DIR:-agemem_jax}

run() {  # run, or print under --dry_run
  if ((dry_run)); then printf '%q ' "$@"; echo; else "$@"; fi
}
ssh_all() { run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }

case "$what" in
  setup)
    run gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all \
      "$(git rev-parse --show-toplevel)" "$name:~/$remote_dir"
    ssh_all "cd ~/$remote_dir && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'"
    ;;
  run)
    (($#)) || { echo "usage: $0 [--dry_run] NAME ZONE run ENTRY.py FLAGS" >&2; exit 2; }
    workdir=""
    for a in "$@"; do [[ "$a" == --workdir=* ]] && workdir=${a#--workdir=}; done
    if [[ "$workdir" != gs://* && "${SHARED_WORKDIR:-0}" != 1 ]]; then
      echo "error: --workdir=${workdir:-<none>} is not shared by the workers; use gs://BUCKET/..." \
        "(or SHARED_WORKDIR=1 for a filesystem every worker mounts)" >&2
      exit 2
    fi
    cmd="cd ~/$remote_dir && .venv/bin/python $(printf '%q ' "$@")--config.multihost=True"
    ssh_all "$cmd"
    if ((dry_run)); then
      # What each worker executes: the same line (worker count: TPU_NUM_WORKERS, or the API).
      n=${TPU_NUM_WORKERS:-$(gcloud compute tpus tpu-vm describe "$name" --zone "$zone" \
        --format='value(networkEndpoints.len())')}
      for ((i = 0; i < n; i++)); do echo "worker $i: $cmd"; done
    fi
    ;;
  *) echo "usage: $0 [--dry_run] NAME ZONE setup|run [entry point and flags]" >&2; exit 2 ;;
esac
