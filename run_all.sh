#!/usr/bin/env bash
# Set up (first run) and run the numbered notebooks headless with papermill.
#   ./run_all.sh [--profile demo|smoke|realct|local|colab] [--from NN] [--only NN] [--params extra.yaml]
# Executed notebooks and their HTML go to reports/runs/<run_id>/.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
exec python -m pancreas_multitask.runner "$@"
