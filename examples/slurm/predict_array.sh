#!/usr/bin/env bash
# Segment many slides with a SLURM array, one GPU per task; each task takes every N-th slide.
# A rerun skips masks that are already complete and finishes interrupted ones.
#
#   sbatch --array=0-7 examples/slurm/predict_array.sh slides.csv /scratch/checkpoints masks/
#
#SBATCH --job-name=msn-predict
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=08:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
MANIFEST=${1:?manifest.csv (column slide)}
CKPT=${2:?checkpoint directory}
OUT=${3:?output folder}
mkdir -p "$OUT"
msn predict --manifest "$MANIFEST" --checkpoints "$CKPT" --out "$OUT" \
    --geojson "$OUT" --device auto --batch-size 64 --workers "${SLURM_CPUS_PER_TASK:-0}"
