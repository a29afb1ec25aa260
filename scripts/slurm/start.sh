#!/usr/bin/env bash
# Start a single-node SLURM cluster on 127.0.0.1 from Debian's packages (slurm-wlm, munge, slurmdbd,
# MariaDB cores), with real accounting so `sacct` answers (submitit polls it).
#
# Usage: scripts/slurm/start.sh            (install first: scripts/ci/install-slurm.sh)
#
# Environment:
#   HPCSYNC_SLURM_STATE   state directory (default /tmp/hpc-sync-slurm): configs, spool, logs, PIDs and the
#                         database all live there. Keep it between runs: the controller and the database
#                         must agree on job ids (a fresh controller with an old database reuses ids).
#   HPCSYNC_SLURM_CPUS    CPUs the node advertises (default: nproc). More than nproc lets small test jobs
#                         run side by side on a small machine (SlurmdParameters=config_overrides).
#   HPCSYNC_SLURM_GPUS    fake GPUs the node advertises as gres "gpu" (default 4) so `--gpus=1` scripts are
#                         accepted; no device is behind them.
#   HPCSYNC_SLURM_WAIT_S  bound on every readiness wait (default 60).
#
# Idempotent: daemons already running (checked by PID) are left alone; a running cluster only gets the
# readiness check (a real `srun hostname`). Global files it owns: /etc/slurm/slurm.conf (a copy for the
# client commands), /etc/munge/munge.key (created when missing), /run/munge (munged's socket).
# Stop with scripts/slurm/stop.sh.
set -euo pipefail

STATE="${HPCSYNC_SLURM_STATE:-/tmp/hpc-sync-slurm}"
WAIT_S="${HPCSYNC_SLURM_WAIT_S:-60}"
HOST="$(hostname -s)"
CLUSTER="hpcsync"
ACCOUNT="hpcsync"
DB_PORT=3307
DBD_PORT=6819

die() { echo "slurm start: $*" >&2; exit 1; }
say() { echo "slurm start: $*"; }

[ "$(id -u)" = 0 ] || die "run as root: the daemons run as root and /etc/slurm, /run/munge are global"
case "$STATE" in
    /*) ;;
    *) die "HPCSYNC_SLURM_STATE must be an absolute path, got '$STATE'" ;;
esac
# slurm.conf and my.cnf cannot quote values: refuse what they would split or misread.
if printf '%s' "$STATE" | grep -q '[^A-Za-z0-9/._-]'; then
    die "HPCSYNC_SLURM_STATE '$STATE' may only hold letters, digits and / . _ - (slurm.conf cannot quote)"
fi
for bin in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/slurmdbd /usr/sbin/munged /usr/sbin/mariadbd \
           /usr/bin/mariadb-install-db /usr/bin/mariadb /usr/bin/srun /usr/bin/sacctmgr; do
    [ -x "$bin" ] || die "$bin is missing: run scripts/ci/install-slurm.sh first"
done

ETC="$STATE/etc"; RUN="$STATE/run"; LOG="$STATE/log"; SPOOL="$STATE/spool"; DB="$STATE/db"
MUNGE_DIR="$STATE/munge"
mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d" "$DB" "$MUNGE_DIR"
chmod 0755 "$STATE" "$RUN" "$LOG"
chmod 0700 "$ETC" "$DB"
export SLURM_CONF="$ETC/slurm.conf"

. "$(dirname "$0")/_common.sh"  # pid_of, alive

wait_for() {  # wait_for WHAT COMMAND... : retry COMMAND every 0.2 s for at most WAIT_S seconds
    local what="$1"; shift
    local deadline=$((SECONDS + WAIT_S))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.2
    done
    say "$what ready after ${SECONDS}s"
}

fail_with_log() {  # fail_with_log MESSAGE LOGFILE
    echo "slurm start: $1; last lines of $2:" >&2
    tail -n 20 "$2" >&2 2>/dev/null || true
    exit 1
}

launch() {  # launch NAME LOGFILE COMMAND... : run COMMAND in its own session, record its PID
    local name="$1" log="$2"; shift 2
    # In a non-interactive shell the background child is no process-group leader, so setsid execs in
    # place and $! is the daemon's own PID.
    setsid "$@" </dev/null >>"$log" 2>&1 &
    echo $! > "$RUN/$name.pid"
}

# ---- configuration (rewritten every start; the same inputs give the same files)
NPROC="$(nproc)"
CPUS="${HPCSYNC_SLURM_CPUS:-$NPROC}"
GPUS="${HPCSYNC_SLURM_GPUS:-4}"
MEM_MB="$(/usr/sbin/slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
[ -n "$MEM_MB" ] || die "slurmd -C did not report RealMemory"
MEM_MB=$((MEM_MB * 95 / 100))   # above what slurmd -C reports, the node goes to state "inval"
OVERRIDES=""
if [ "$CPUS" -gt "$NPROC" ]; then
    OVERRIDES="SlurmdParameters=config_overrides"
fi
GRES_NODE=""; GRES_TYPES=""
if [ "$GPUS" -gt 0 ]; then
    GRES_NODE="Gres=gpu:$GPUS"; GRES_TYPES="GresTypes=gpu"
fi

if [ ! -s "$ETC/dbpass" ]; then
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$ETC/dbpass")
fi
DBPASS="$(cat "$ETC/dbpass")"

write_if_changed() {  # write_if_changed FILE MODE < content
    local file="$1" mode="$2" tmp
    tmp="$(mktemp "$file.tmp.XXXXXX")"
    cat > "$tmp"
    chmod "$mode" "$tmp"
    if cmp -s "$tmp" "$file"; then rm -f "$tmp"; else mv -f "$tmp" "$file"; fi
}

write_if_changed "$ETC/slurm.conf" 0644 <<EOF
# Written by scripts/slurm/start.sh: single-node test cluster, state in $STATE
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.daemon.pid
SlurmdPidFile=$RUN/slurmd.daemon.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=bf_interval=2,sched_interval=2
KillWait=5
MinJobAge=600
ReturnToService=2
MailProg=/bin/true
MpiDefault=none
$OVERRIDES
$GRES_TYPES
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# Fake GPUs: slurmd counts a gpu gres only with one character device File per GPU, so links to /dev/null
# under the state directory stand in for /dev/nvidiaN. They let `--gpus=1` jobs schedule; no GPU is behind
# them (jobs see CUDA_VISIBLE_DEVICES and find no device).
GRES_LINE="# no fake GPUs (HPCSYNC_SLURM_GPUS=0)"
if [ "$GPUS" -gt 0 ]; then
    mkdir -p "$STATE/fake-gpu"
    for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$STATE/fake-gpu/nvidia$i"; done
    GRES_LINE="NodeName=$HOST Name=gpu File=$STATE/fake-gpu/nvidia[0-$((GPUS - 1))]"
fi
write_if_changed "$ETC/gres.conf" 0644 <<EOF
$GRES_LINE
EOF

write_if_changed "$ETC/slurmdbd.conf" 0600 <<EOF
# Written by scripts/slurm/start.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile=$RUN/slurmdbd.daemon.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF

write_if_changed "$ETC/my.cnf" 0600 <<EOF
[mysqld]
user=root
datadir=$DB/data
socket=$DB/mariadb.sock
pid-file=$RUN/mariadbd.daemon.pid
log-error=$LOG/mariadb.log
bind-address=127.0.0.1
port=$DB_PORT
skip-name-resolve
innodb_buffer_pool_size=512M

[client]
socket=$DB/mariadb.sock
user=root
EOF

# The client commands (sinfo, sbatch, srun, sacct, submitit) read the global file.
mkdir -p /etc/slurm
cmp -s "$ETC/slurm.conf" /etc/slurm/slurm.conf || install -m 0644 "$ETC/slurm.conf" /etc/slurm/slurm.conf

all_alive=1
for name in munged mariadbd slurmdbd slurmctld slurmd; do alive "$name" || all_alive=0; done
[ "$all_alive" = 1 ] && say "already running (PIDs in $RUN); checking readiness"

# ---- munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    (umask 077; head -c 1024 /dev/urandom > /etc/munge/munge.key)
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
mkdir -p /run/munge
chown munge:munge /run/munge "$MUNGE_DIR"
chmod 0755 /run/munge
chmod 0700 "$MUNGE_DIR"
if ! alive munged; then
    if [ -S /run/munge/munge.socket.2 ] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        die "a munged not started from $STATE answers on /run/munge/munge.socket.2: stop it first"
    fi
    rm -f "$RUN/munged.pid" "$MUNGE_DIR/munged.pid"
    # munged forks into the background and writes its own PID file (as user munge, hence MUNGE_DIR).
    runuser -u munge -- /usr/sbin/munged --force --pid-file="$MUNGE_DIR/munged.pid" \
        --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
        </dev/null >>"$LOG/munged.out" 2>&1 || fail_with_log "munged did not start" "$MUNGE_DIR/munged.log"
    wait_for "munged pid" test -s "$MUNGE_DIR/munged.pid" || fail_with_log "munged wrote no PID" "$MUNGE_DIR/munged.log"
    cp "$MUNGE_DIR/munged.pid" "$RUN/munged.pid"
fi
munge_ok() { munge -n </dev/null | unmunge >/dev/null; }
wait_for "munge" munge_ok || fail_with_log "munge does not answer" "$MUNGE_DIR/munged.log"

# ---- MariaDB (accounting storage)
if ! alive mariadbd; then
    if [ ! -d "$DB/data/mysql" ]; then
        say "initialising the accounting database in $DB/data"
        /usr/bin/mariadb-install-db --defaults-file="$ETC/my.cnf" --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
            || fail_with_log "mariadb-install-db failed" "$LOG/mariadb-install.log"
    fi
    launch mariadbd "$LOG/mariadb.out" /usr/sbin/mariadbd --defaults-file="$ETC/my.cnf"
fi
db_ok() { /usr/bin/mariadb --defaults-file="$ETC/my.cnf" -e 'SELECT 1'; }
wait_for "mariadb" db_ok || fail_with_log "MariaDB does not answer" "$LOG/mariadb.log"
/usr/bin/mariadb --defaults-file="$ETC/my.cnf" <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF

# ---- slurmdbd
if ! alive slurmdbd; then
    launch slurmdbd "$LOG/slurmdbd.out" /usr/sbin/slurmdbd -D
fi
dbd_ok() { alive slurmdbd && /usr/bin/sacctmgr -n -P show cluster; }
wait_for "slurmdbd" dbd_ok || fail_with_log "slurmdbd does not answer" "$LOG/slurmdbd.log"

# sacctmgr -i add ... fails when the entity exists: only add what `show` does not list.
if ! /usr/bin/sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    /usr/bin/sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
if ! /usr/bin/sacctmgr -n -P show account format=account | grep -qx "$ACCOUNT"; then
    /usr/bin/sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description=hpc-sync organization=hpc-sync >/dev/null
fi
if ! /usr/bin/sacctmgr -n -P show user root format=user,defaultaccount | grep -qx "root|$ACCOUNT"; then
    /usr/bin/sacctmgr -i add user root account="$ACCOUNT" defaultaccount="$ACCOUNT" >/dev/null || true
    /usr/bin/sacctmgr -i modify user root set defaultaccount="$ACCOUNT" >/dev/null || true
fi

# ---- slurmctld and slurmd
if ! alive slurmctld; then
    launch slurmctld "$LOG/slurmctld.out" /usr/sbin/slurmctld -D
fi
ctld_ok() { alive slurmctld && /usr/bin/scontrol ping | grep -q 'is UP'; }
wait_for "slurmctld" ctld_ok || fail_with_log "slurmctld does not answer" "$LOG/slurmctld.log"

if ! alive slurmd; then
    launch slurmd "$LOG/slurmd.out" /usr/sbin/slurmd -D
fi
node_ok() {
    alive slurmd || return 1
    case "$(/usr/bin/sinfo -h -n "$HOST" -o %T 2>/dev/null)" in
        idle*|mixed*|allocated*|completing*) return 0 ;;
        # A node drained by an earlier bad registration (say, a changed config) stays drained across
        # restarts: this cluster exists only to run jobs, so put it back once it registers.
        drain*|inval*) /usr/bin/scontrol update nodename="$HOST" state=resume >/dev/null 2>&1; return 1 ;;
        *) return 1 ;;
    esac
}
wait_for "node $HOST" node_ok || fail_with_log "node $HOST is not up ($(sinfo -h -n "$HOST" -o %T 2>&1))" "$LOG/slurmd.log"

# ---- readiness: a real job step, not only sinfo (a node can look idle while every step fails)
out="$(timeout "$WAIT_S" /usr/bin/srun --quiet -N1 -n1 -t 1 -J hpcsync-ready hostname 2>&1)" \
    || fail_with_log "srun hostname failed: $out" "$LOG/slurmd.log"
[ "$out" = "$HOST" ] || fail_with_log "srun hostname printed '$out', expected '$HOST'" "$LOG/slurmd.log"
say "ready in ${SECONDS}s: cluster $CLUSTER, node $HOST, state $STATE"
