#!/bin/bash
# A preemptible job: SLURM may requeue it (--requeue), and 60 s before its time limit it gets USR1
# (--signal=USR1@60, sent to the srun step). Either way the run is closed as "preempted", the job goes back
# to the queue, and the next start resumes the same run (same run id: same job id and rank) with the
# steps continuing, from the checkpoint the script keeps:
#   cd slurm_examples && sbatch preemptible.sh
#   scontrol requeue <job id>        # try it: one run, two attempts in run.json
#SBATCH --job-name=preemptible
#SBATCH --ntasks=1
#SBATCH --time=00:30:00
#SBATCH --requeue
#SBATCH --signal=USR1@60
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail
export HPCSYNC_PROJECT="${HPCSYNC_PROJECT:-slurm-examples}"
echo "start of job ${SLURM_JOB_ID}, restart ${SLURM_RESTART_COUNT:-0}"
srun "${PYTHON:-python3}" "${EXAMPLES:-$SLURM_SUBMIT_DIR}/preemptible.py" --steps "${STEPS:-200}" \
    --sleep-s "${SLEEP_S:-0.2}" --checkpoint-dir "${CHECKPOINT_DIR:-$SLURM_SUBMIT_DIR/checkpoints}"
