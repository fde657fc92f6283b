#!/usr/bin/env bash
# Set up (first run) and run the test suite. Extra arguments go to pytest.
# The default excludes tests marked `slow`; `./run_tests.sh -m ""` runs everything.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
exec python -m pytest -m "not slow" "$@"
