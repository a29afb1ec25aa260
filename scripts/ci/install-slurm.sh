#!/usr/bin/env bash
# Install what the single-node SLURM of scripts/slurm/start.sh needs: Debian's slurm-wlm and munge, plus
# slurmdbd with the MariaDB server and client cores for real accounting (`sacct`, which submitit polls),
# and submitit into the Python environment.
#
# Usage: scripts/ci/install-slurm.sh [PYTHON_OR_VENV]
#   PYTHON_OR_VENV: a venv directory or a python executable to pip-install submitit into
#                   (default: the python3 on PATH). Idempotent: installed packages are not fetched again.
set -euo pipefail

need_apt=0
for bin in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/slurmdbd /usr/sbin/munged /usr/bin/srun \
           /usr/bin/sacct /usr/sbin/mariadbd /usr/bin/mariadb /usr/bin/mariadb-install-db; do
    [ -x "$bin" ] || need_apt=1
done

if [ "$need_apt" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-slurm: apt-get needs root; run this script as root" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -q
    # The full mariadb-server pulls 23 packages and upgrades perl: the cores are enough (docs/facts.md).
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        slurm-wlm munge slurmdbd mariadb-server-core mariadb-client-core
fi

target="${1:-python3}"
if [ -d "$target" ]; then
    target="$target/bin/python"
elif [ -n "${1:-}" ] && ! command -v "$target" >/dev/null; then
    echo "install-slurm: '$1' is neither a venv directory nor a python: create the venv first (make venv)" >&2
    exit 1
fi
if ! "$target" -c 'import submitit' 2>/dev/null; then
    "$target" -m pip install -q 'submitit>=1.5'
fi
echo "install-slurm: ok ($("$target" -c 'import submitit; print("submitit", submitit.__version__)'), $(/usr/sbin/slurmctld -V))"
