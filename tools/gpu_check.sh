#!/usr/bin/env bash
# GPU check, one command, < 8 minutes on an H100/H200 (docs/benchmarks.md, "GPU check"):
#   bash tools/gpu_check.sh [OUT_DIR]
# Needs torch with CUDA (and torchvision) preinstalled; no downloads, no pip install.
# Writes OUT_DIR/gpu_check.json (OUT_DIR defaults to $OUT, else /tmp).
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir="${1:-${OUT:-/tmp}}"
mkdir -p "$out_dir"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out_dir/nvidia_smi.txt"
# 450 s leaves the rest of the 8 minutes for start-up and copying results back.
timeout "${GPU_CHECK_TIMEOUT:-450}" "${PYTHON:-python}" tools/gpu_check.py --out-json "$out_dir/gpu_check.json" "${@:2}"
status=$?
[ -f "$out_dir/gpu_check.json" ] && cat "$out_dir/gpu_check.json"
exit $status
