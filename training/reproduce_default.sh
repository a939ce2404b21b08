#!/usr/bin/env bash
# Reproduce the embedded default model from nothing (docs/model-card.md):
#
#   bash training/reproduce_default.sh [WORK_DIR]        # default: runs/default-repro
#
# Steps, in order (STEPS="scenes fit decoder eval export" by default; name fewer to run fewer):
#   scenes  10,000 generated scenes x 5 captions, seed 0      -> WORK/scenes
#   fit     Show-Attend-Tell, design-sized decoder, every Lite0 stage fine-tuned,
#           checkpoints picked on validation semantic accuracy -> WORK/finetune/best.pt
#   decoder the encoder frozen again (features cached once), the decoder trained
#           on with a cosine LR from that checkpoint             -> WORK/run/best.pt
#   eval    test and test_novel, greedy and beam 3               -> WORK/eval-beam{1,3}.json
#   export  fp32 bundle validated on samples/, with its domain statistics fitted on
#           a seeded 2000 of the training scenes and thresholded on the val split
#           (docs/domain-check.md)                               -> WORK/bundle
# The same command runs on a GPU (picked automatically) or on CPU. The shipped
# model ran `fit` on an H100 (~30 s an epoch; ~20 min an epoch on the 2-core CPU
# machine, so about 6 hours there) and `decoder` on the CPU (~4 min an epoch).
# Overrides for smoke runs: SCENES (count), EPOCHS (fit), DECODER_EPOCHS, WORKERS,
# DEVICE (auto|cpu|cuda),
# FIT_TIMEOUT (seconds; the fit step is stopped there, keeping its best.pt).
# Re-running a step redoes it: fit and decoder pass --overwrite to their run folders.
# Needs capbatch installed with the train and export extras (pip install -e '.[cpu,train,export]').
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-runs/default-repro}"
steps="${STEPS:-scenes fit decoder eval export}"
scenes="${SCENES:-10000}"
epochs="${EPOCHS:-18}"
decoder_epochs="${DECODER_EPOCHS:-4}"
workers="${WORKERS:-$(nproc)}"
device="${DEVICE:-auto}"
python="${PYTHON:-python}"
mkdir -p "$work"

has_step() { [[ " $steps " == *" $1 "* ]]; }

if has_step scenes; then
  "$python" -m capbatch.training.scenes --out "$work/scenes" --n "$scenes" --seed 0 \
    --workers "$workers"
fi

if has_step fit; then
  # Beyond the design (docs/model-card.md says why each one is there): earlier
  # stages tapped, region positions, a fine colour grid, a lighter attention
  # regulariser, and every backbone stage fine-tuned at a 10x smaller LR.
  fit=("$python" -m capbatch.training.cli fit --data "$work/scenes" --out "$work/finetune"
    --feature-taps 1,2,4 --position-features --colour-grid 4 --attention-weight 0.2
    --fine-tune-stages 8 --encoder-lr 1e-4 --lr 1e-3 --batch-size 128
    --epochs "$epochs" --patience 0 --val-images 0 --select-on semantic
    --workers "$workers" --device "$device" --seed 0 --no-progress --overwrite)
  if [ -n "${FIT_TIMEOUT:-}" ]; then
    # A stopped run keeps the best.pt/last.pt of its finished epochs.
    timeout "$FIT_TIMEOUT" "${fit[@]}" || [ $? -eq 124 ]
  else
    "${fit[@]}"
  fi
fi

if has_step decoder; then
  # Fine-tuning trains BatchNorm on batch statistics; with the encoder frozen
  # (eval mode) the decoder adapts to the features the exported encoder gives.
  "$python" -m capbatch.training.cli fit --data "$work/scenes" --out "$work/run" \
    --init-from "$work/finetune/best.pt" --fine-tune-stages 0 --attention-weight 0 \
    --lr 5e-4 --lr-schedule cosine --batch-size 128 --epochs "$decoder_epochs" --patience 0 \
    --val-images 0 --select-on semantic --workers "$workers" --device "$device" --seed 1 \
    --no-progress --overwrite
fi

if has_step eval; then
  # --split test reports test and test_novel (held-out combinations) side by side.
  for beam in 1 3; do
    "$python" -m capbatch.training.cli eval --ckpt "$work/run/best.pt" \
      --data "$work/scenes" --split test --beam "$beam" --out "$work/eval-beam$beam.json"
  done
fi

if has_step export; then
  # The image lists the shipped statistics were fitted on: train (a seeded subset),
  # val (sets the threshold); test and test_novel stay held out for the measurements.
  "$python" benchmarks/domain_check.py lists --scenes "$work/scenes" --out "$work/domain-lists"
  "$python" -m capbatch export --ckpt "$work/run/best.pt" --out "$work/bundle" \
    --name scenes --overwrite --validate-images samples \
    --domain-images "$work/domain-lists/train.txt" \
    --domain-calibration "$work/domain-lists/val.txt"
fi
