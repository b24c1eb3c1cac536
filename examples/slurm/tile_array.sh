#!/usr/bin/env bash
# Tile many slides into ONE store with a SLURM array: each task takes every N-th slide of the
# manifest (msn reads SLURM_ARRAY_TASK_ID / _MIN / _STEP / _COUNT; or pass --shard I/N).
# Several tasks write the same store safely: one writer per slide group.
#
#   sbatch --array=0-15 examples/slurm/tile_array.sh manifest.csv /scratch/store.zarr
#
#SBATCH --job-name=msn-tile
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
MANIFEST=${1:?manifest.csv}
STORE=${2:?store path or URL}
# Rerunning the array resumes: complete slides with an unchanged fingerprint are skipped.
msn tile --manifest "$MANIFEST" --levels 16x 4x 1x --patch-size 256 \
    --store "$STORE" --workers "${SLURM_CPUS_PER_TASK:-0}"
