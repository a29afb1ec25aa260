#!/bin/bash
# One process on one GPU, submitted with plain sbatch (no submitit):
#   cd slurm_examples && sbatch sbatch_one_gpu.sh
# hpc.init() in train.py takes the project and the root from HPCSYNC_PROJECT / HPCSYNC_DIR, and its group
# (<job name>-<job id>), name (rank-0) and run id from SLURM.
#SBATCH --job-name=one-gpu
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --time=00:10:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail
export HPCSYNC_PROJECT="${HPCSYNC_PROJECT:-slurm-examples}"
echo "job ${SLURM_JOB_ID} on $(hostname) with CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-none}"
exec "${PYTHON:-python3}" "${EXAMPLES:-$SLURM_SUBMIT_DIR}/train.py" --steps "${STEPS:-20}"
