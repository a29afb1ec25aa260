#!/usr/bin/env bash
# Start two real OpenSSH sshd on 127.0.0.1 for the SFTP tests and benchmark, each with its own config,
# host key and log under STATE_DIR (never /etc/ssh):
#   main    127.0.0.1:${SSHD_PORT:-2222}          SFTP only, no forwarding
#   bastion 127.0.0.1:${SSHD_BASTION_PORT:-2223}  forwards only to the main one (for ProxyJump)
# and writes for clients: STATE_DIR/user_key (passphrase-less ed25519), STATE_DIR/known_hosts,
# STATE_DIR/ssh_config (Host hpc-login, hpc-bastion, hpc-behind-bastion), STATE_DIR/env (shell vars).
# Idempotent: instances already running from STATE_DIR are left alone. Stop with scripts/sshd/stop.sh.
# Usage: scripts/sshd/start.sh STATE_DIR
set -euo pipefail

state="${1:?usage: $0 STATE_DIR}"
port="${SSHD_PORT:-2222}"
bastion_port="${SSHD_BASTION_PORT:-2223}"
ready_timeout_s="${SSHD_READY_TIMEOUT_S:-15}"
sshd=/usr/sbin/sshd

die() { echo "sshd/start.sh: $*" >&2; exit 1; }

[ -x "$sshd" ] || die "$sshd is missing: install it with scripts/ci/install-sshd.sh (apt openssh-server)"
command -v ssh-keygen >/dev/null || die "ssh-keygen is missing: apt-get install openssh-client"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
user="$(id -un)"

# sshd refuses to start without its privilege-separation directory.
if [ ! -d /run/sshd ]; then
    mkdir -p /run/sshd 2>/dev/null || die "cannot create /run/sshd (run as root, or create it once: mkdir -m 0755 /run/sshd)"
    chmod 0755 /run/sshd
fi

alive() {  # PID -> 0 when the process runs (a zombie counts as stopped: PID 1 reaps late here)
    local st
    st="$(ps -o stat= -p "$1" 2>/dev/null || true)"
    [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}

[ -f "$state/user_key" ] || ssh-keygen -q -t ed25519 -N '' -C "hpc-sync-test-user" -f "$state/user_key"
cp "$state/user_key.pub" "$state/authorized_keys"

: > "$state/known_hosts.new"
for name in main bastion; do
    dir="$state/$name"
    mkdir -p "$dir"
    [ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "hpc-sync-test-$name" -f "$dir/host_ed25519"
    if [ "$name" = main ]; then p="$port"; else p="$bastion_port"; fi
    echo "[127.0.0.1]:$p $(cut -d' ' -f1,2 "$dir/host_ed25519.pub")" >> "$state/known_hosts.new"
    {
        echo "# written by scripts/sshd/start.sh: a private test sshd, nothing in /etc/ssh is used"
        echo "Port $p"
        echo "ListenAddress 127.0.0.1"
        echo "HostKey $dir/host_ed25519"
        echo "PidFile $dir/sshd.pid"
        echo "AuthorizedKeysFile $state/authorized_keys"
        echo "AllowUsers $user"
        echo "PubkeyAuthentication yes"
        echo "PasswordAuthentication no"
        echo "KbdInteractiveAuthentication no"
        echo "PermitRootLogin prohibit-password"
        echo "UsePAM no"
        echo "StrictModes no"          # the keys live under a temporary directory
        echo "X11Forwarding no"
        echo "PermitTTY no"
        echo "MaxStartups 50:30:100"
        echo "Subsystem sftp internal-sftp"
        if [ "$name" = main ]; then
            echo "LogLevel VERBOSE"
            echo "AllowTcpForwarding no"
        else
            echo "LogLevel DEBUG1"     # logs each direct-tcpip forward: the ProxyJump test checks it
            echo "AllowTcpForwarding yes"
            echo "PermitOpen 127.0.0.1:$port"
        fi
    } > "$dir/sshd_config"
    "$sshd" -t -f "$dir/sshd_config" || die "$dir/sshd_config is not valid (see above)"
done
mv "$state/known_hosts.new" "$state/known_hosts"

cat > "$state/ssh_config" <<CONF
# Client configuration for the test sshd (written by scripts/sshd/start.sh).
Host hpc-login
    HostName 127.0.0.1
    Port $port
    User $user
    IdentityFile $state/user_key
    UserKnownHostsFile $state/known_hosts

Host hpc-bastion
    HostName 127.0.0.1
    Port $bastion_port
    User $user
    IdentityFile $state/user_key
    UserKnownHostsFile $state/known_hosts

# The main sshd reached through the bastion (ssh -J).
Host hpc-behind-bastion
    HostName 127.0.0.1
    Port $port
    User $user
    IdentityFile $state/user_key
    UserKnownHostsFile $state/known_hosts
    ProxyJump hpc-bastion
CONF

banner_ok() {  # PORT -> 0 when an SSH banner comes back (in a subshell: exec must not leak)
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r -t 2 line <&3 || exit 1
        case "$line" in SSH-2.0-*) exit 0 ;; *) exit 1 ;; esac
    ) 2>/dev/null
}

for name in main bastion; do
    dir="$state/$name"
    if [ "$name" = main ]; then p="$port"; else p="$bastion_port"; fi
    if [ -f "$dir/sshd.pid" ] && alive "$(cat "$dir/sshd.pid")"; then
        echo "sshd $name already running (pid $(cat "$dir/sshd.pid"), port $p)"
        continue
    fi
    rm -f "$dir/sshd.pid"
    if banner_ok "$p"; then
        die "port $p on 127.0.0.1 is already taken by another process (an sshd from another state dir? stop it with scripts/sshd/stop.sh THAT_DIR)"
    fi
    # -E: log to a file instead of syslog; sshd daemonizes and writes PidFile itself.
    "$sshd" -f "$dir/sshd_config" -E "$dir/sshd.log"
    deadline=$(( $(date +%s) + ready_timeout_s ))
    until [ -s "$dir/sshd.pid" ] && banner_ok "$p"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            tail -5 "$dir/sshd.log" >&2 || true
            die "sshd $name did not answer on 127.0.0.1:$p within ${ready_timeout_s}s (log: $dir/sshd.log)"
        fi
        sleep 0.1
    done
    echo "sshd $name ready on 127.0.0.1:$p (pid $(cat "$dir/sshd.pid"))"
done

cat > "$state/env" <<ENV
SSHD_STATE=$state
SSHD_USER=$user
SSHD_PORT=$port
SSHD_BASTION_PORT=$bastion_port
SSHD_PID=$(cat "$state/main/sshd.pid")
SSHD_BASTION_PID=$(cat "$state/bastion/sshd.pid")
SSHD_KNOWN_HOSTS=$state/known_hosts
SSHD_SSH_CONFIG=$state/ssh_config
SSHD_IDENTITY_FILE=$state/user_key
ENV
