#!/usr/bin/env bash
# Stop the sshd instances started by scripts/sshd/start.sh STATE_DIR, by their recorded PIDs only.
# Their open sessions (children) end with them. Idempotent. Usage: scripts/sshd/stop.sh STATE_DIR
set -euo pipefail
state="${1:?usage: $0 STATE_DIR}"
stop_timeout_s="${SSHD_STOP_TIMEOUT_S:-10}"

alive() {  # a zombie counts as stopped: PID 1 reaps orphans only every ~2 s here
    local st
    st="$(ps -o stat= -p "$1" 2>/dev/null || true)"
    [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}

rc=0
for name in main bastion; do
    pidfile="$state/$name/sshd.pid"
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if [ -n "$pid" ] && alive "$pid"; then
        # Session processes are children of the listener: end them too, then the listener.
        for child in $(ps -o pid= --ppid "$pid" 2>/dev/null || true); do kill -TERM "$child" 2>/dev/null || true; done
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$(( $(date +%s) + stop_timeout_s ))
        while alive "$pid"; do
            if [ "$(date +%s)" -ge "$deadline" ]; then
                kill -KILL "$pid" 2>/dev/null || true
                echo "sshd/stop.sh: sshd $name (pid $pid) ignored SIGTERM for ${stop_timeout_s}s: killed" >&2
                rc=1
                break
            fi
            sleep 0.1
        done
        echo "sshd $name stopped (pid $pid)"
    fi
    rm -f "$pidfile"
done
exit $rc
