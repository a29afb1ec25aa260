#!/usr/bin/env bash
# Record a run from a shell script (or any program that can run a command): see docs/other-languages.md.
set -euo pipefail
# Assign, then export: `export X="$(cmd)"` would hide a failing cmd from `set -e`.
HPCSYNC_RUN_DIR="$(hpc run start --project "${PROJECT:-shell-demo}" --config solver=cg tolerance=1e-8)"
export HPCSYNC_RUN_DIR
residual=1.0
for iteration in 1 2 3 4 5; do
    residual=$(python3 -c "print($residual / 10)")
    hpc log iteration="$iteration" residual="$residual"
done
hpc run finish --exit-code 0
echo "$HPCSYNC_RUN_DIR"
