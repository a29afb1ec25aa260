#!/bin/bash
# DDP-style: `srun` starts one task per rank; every task calls hpc.init() and logs, and the runs are grouped
# automatically (group <job name>-<job id>, runs rank-0 and rank-1):
#   cd slurm_examples && sbatch srun_ddp.sh
# A real DDP script would call torch.distributed.init_process_group() with the rendezvous set below;
# hpc-sync reads the same ranks (SLURM_PROCID, or RANK/LOCAL_RANK/WORLD_SIZE when a launcher sets them).
#SBATCH --job-name=ddp
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:10:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail
export HPCSYNC_PROJECT="${HPCSYNC_PROJECT:-slurm-examples}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_ADDR
export MASTER_PORT="${MASTER_PORT:-29500}"
srun --kill-on-bad-exit=1 "${PYTHON:-python3}" "${EXAMPLES:-$SLURM_SUBMIT_DIR}/train.py" --steps "${STEPS:-20}"
