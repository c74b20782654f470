#!/usr/bin/env bash
# sdpo's GPU check in one command, for a lent GPU machine: bash benchmarks/gpu/check.sh [check.py options]
# It writes check.json, summary.txt, log.txt and pytest.xml into $OUT (or --out DIR); see check.py --help.
# The machine's own python3 (with its CUDA torch) runs it; set PYTHON to use another.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu/check.py "$@"
