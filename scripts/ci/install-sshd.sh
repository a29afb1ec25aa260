#!/usr/bin/env bash
# Install what the SFTP tests need: Debian's OpenSSH server (never started as a service here: no
# systemd; scripts/sshd/start.sh runs its own instances) and paramiko in the given venv.
# Idempotent. Usage: scripts/ci/install-sshd.sh [PYTHON_OR_VENV]
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"

if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null || ! command -v ssh-keyscan >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # openssh-client brings ssh-keygen/ssh-keyscan; the server's postinst wants no running sshd.
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends openssh-server openssh-client
fi

py="${1:-}"
if [ -z "$py" ]; then
    py="$(command -v python3)"
elif [ -d "$py" ]; then
    py="$py/bin/python"
fi
"$py" -m pip install -q -e "$here[remote]"
