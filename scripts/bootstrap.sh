#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install the pinned requirements.
# Sourced by run_all.sh and run_tests.sh. Re-installs only when requirements change.
#   VENV    venv folder (default: .venv in the repo)
#   PYTHON  interpreter that creates it (default: python3; the CPU torch wheel is for 3.11)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$repo/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
key="$(cat "$repo/requirements.txt" "$repo/constraints-cpu.txt" "$repo/pyproject.toml" | sha256sum | cut -c1-16)"
stamp="$VENV/.pancreas-installed-$key"
if [ ! -f "$stamp" ]; then
  echo "setup: installing requirements into $VENV (first run takes a few minutes)"
  pip() {  # quiet pip; drops this machine's noise about missing local index folders
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  }
  # torch first, under the CPU constraints, so nothing swaps in a CUDA build (see constraints-cpu.txt)
  pip -c "$repo/constraints-cpu.txt" torch==2.13.0
  pip -c "$repo/constraints-cpu.txt" -r "$repo/requirements.txt"
  pip -c "$repo/constraints-cpu.txt" --no-deps -e "$repo"
  rm -f "$VENV"/.pancreas-installed-*
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
