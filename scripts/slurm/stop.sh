#!/usr/bin/env bash
# Stop the single-node SLURM cluster that scripts/slurm/start.sh started, by the PIDs it recorded.
#
# Usage: scripts/slurm/stop.sh [--purge]
#   --purge   also delete the state directory (configs, spool, logs, database): the next start is fresh.
# Environment: HPCSYNC_SLURM_STATE (default /tmp/hpc-sync-slurm), HPCSYNC_SLURM_STOP_WAIT_S (default 20,
# per daemon, before SIGKILL). Idempotent: nothing running -> ok.
set -euo pipefail

STATE="${HPCSYNC_SLURM_STATE:-/tmp/hpc-sync-slurm}"
WAIT_S="${HPCSYNC_SLURM_STOP_WAIT_S:-20}"
RUN="$STATE/run"
purge=0
for arg in "$@"; do
    case "$arg" in
        --purge) purge=1 ;;
        *) echo "slurm stop: unknown argument '$arg' (valid: --purge)" >&2; exit 2 ;;
    esac
done

. "$(dirname "$0")/_common.sh"

stop_one() {  # stop_one NAME
    local name="$1" pid deadline
    if ! pid="$(pid_of "$name")"; then
        rm -f "$RUN/$name.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + WAIT_S))
    while pid_of "$name" >/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "slurm stop: $name (PID $pid) ignored SIGTERM for ${WAIT_S}s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.1
    done
    rm -f "$RUN/$name.pid"
    echo "slurm stop: stopped $name (PID $pid)"
}

if [ -d "$RUN" ]; then
    # Compute daemon first, accounting last: slurmctld flushes job records to slurmdbd as it stops.
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        stop_one "$name"
    done
fi
if [ "$purge" = 1 ] && [ -d "$STATE" ]; then
    rm -rf -- "$STATE"
    echo "slurm stop: removed $STATE"
fi
echo "slurm stop: ok"
