#!/usr/bin/env bash
# The three training steps on GPUs with torchrun (DistributedDataParallel; only rank 0 writes).
# Each step resumes from its last epoch when the job is requeued or rerun.
#
#   sbatch examples/slurm/train_ddp.sh /scratch/store.zarr /scratch/checkpoints
#
#SBATCH --job-name=msn-train
#SBATCH --nodes=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=128G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
STORE=${1:?store}
CKPT=${2:?checkpoint directory}
GPUS=${SLURM_GPUS_ON_NODE:-4}
RUN="torchrun --standalone --nproc-per-node $GPUS -m msn_cli.cli"
$RUN train-meta   --store "$STORE" --checkpoints "$CKPT" --epochs 30 --batch-size 32 --amp --workers 8
$RUN train-memrm  --store "$STORE" --checkpoints "$CKPT" --epochs 10 --amp --workers 8
$RUN train-fusion --store "$STORE" --checkpoints "$CKPT" --epochs 10 --amp --workers 8
