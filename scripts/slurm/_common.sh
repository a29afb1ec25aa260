# Shared by start.sh and stop.sh (sourced; needs $RUN, the directory of the daemons' PID files).

# A PID counts only when it is alive, not a zombie (PID 1 reaps late here), and runs the expected program,
# so a stale PID file never makes us signal somebody else's process.
pid_of() {  # pid_of NAME -> prints the live PID of NAME from its PID file, or fails
    local name="$1" pid stat
    [ -s "$RUN/$name.pid" ] || return 1
    pid="$(tr -dc 0-9 < "$RUN/$name.pid")"
    [ -n "$pid" ] || return 1
    stat="$(ps -o stat= -p "$pid" 2>/dev/null | tr -d ' ')" || return 1
    [ -n "$stat" ] || return 1
    case "$stat" in Z*) return 1 ;; esac
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    echo "$pid"
}

alive() {  # alive NAME -> 0 when $RUN/NAME.pid names a live NAME process
    pid_of "$1" >/dev/null
}
