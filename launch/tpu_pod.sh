#!/usr/bin/env bash
# Run one command on every worker of a Cloud TPU pod slice (one process per host).
#   launch/tpu_pod.sh NAME ZONE setup                      # copy the repo, build .venv on every worker
#   launch/tpu_pod.sh NAME ZONE run experiments/train.py --config=configs/hotpotqa_grpo.py:qwen3_4b_tpu --workdir=gs://BUCKET/run1
# jax.distributed.initialize() discovers the slice by itself; workdir must be shared (GCS).
set -euo pipefail
name=${1:?TPU name}; zone=${2:?zone}; what=${3:?setup|run}; shift 3
remote_dir=${REMOTE_DIR:-agemem_jax}
ssh_all() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }
case "$what" in
  setup)
    gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all \
      "$(git rev-parse --show-toplevel)" "$name:~/$remote_dir"
    ssh_all "cd ~/$remote_dir && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'"
    ;;
  run)
    ssh_all "cd ~/$remote_dir && .venv/bin/python $* --config.multihost=True"
    ;;
  *) echo "usage: $0 NAME ZONE setup|run [entry point and flags]" >&2; exit 2 ;;
esac
