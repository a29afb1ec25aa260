#!/usr/bin/env bash
# Installs what the gateway's tests need. Idempotent. Usage: scripts/ci/install-gateway.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${1:+$1/bin/python}"; PY="${PY:-python3}"
export DEBIAN_FRONTEND=noninteractive
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q postgresql
fi
# mlflow is pinned to 3.17.2: 3.18.0 is listed but its mlflow-skinny is missing from the index.
"$PY" -m pip install -q -e ".[test,gateway,server,gateway-test]"
# OpenWandb (CC BY-NC 4.0) for the W&B sink's tests: a test-only tool in its OWN venv
# ($HPCSYNC_OPENWANDB_VENV, default ~/.cache/hpc-sync/openwandb-0.5.25), never in the project's environment.
"$PY" scripts/openwandb_server.py install >/dev/null
