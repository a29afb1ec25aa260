#!/bin/bash
# A learning-rate sweep as a job array: three tasks, three runs (task-0..task-2) in one group named after the
# array job id:
#   cd slurm_examples && sbatch array_sweep.sh
#SBATCH --job-name=sweep
#SBATCH --array=0-2
#SBATCH --ntasks=1
#SBATCH --time=00:10:00
#SBATCH --output=slurm-%x-%A_%a.out
#SBATCH --open-mode=append
set -euo pipefail
export HPCSYNC_PROJECT="${HPCSYNC_PROJECT:-slurm-examples}"
exec "${PYTHON:-python3}" "${EXAMPLES:-$SLURM_SUBMIT_DIR}/train.py" --steps "${STEPS:-20}" \
    --sweep "${SWEEP:-0.1,0.05,0.01}"
