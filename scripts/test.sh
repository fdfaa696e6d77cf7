#!/usr/bin/env bash
# Installs reactor-rt with its dev tools, then runs the linter, the default test suite (not `slow`)
# and the shared public-contract tests. This is exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # Ray binds to 127.0.0.1 only
export RAY_USAGE_STATS_ENABLED=0
export OMP_WAIT_POLICY=PASSIVE              # spinning OpenMP threads starve Ray's processes on 2 cores
bash scripts/install.sh --dev
PY=.venv/bin/python

# pytest exits 5 when it collects no test; that is not a failure of the code under test
pytest_ok() { "$@" && return 0; rc=$?; [ "$rc" -eq 5 ] && { echo "(no tests collected)"; return 0; }; return "$rc"; }

$PY -m ruff check .
pytest_ok $PY -m pytest -m "not slow" -q -p no:cacheprovider
if [ -d ../shared/contract ]; then
  # test_variants_differ compares tiny(memory_attention=<the preset's default>) with
  # tiny(residual_gate=<the preset's default>): the same config, hence the same update, for any
  # preset; the contract defect is reported on the model-core issue. Every other contract test runs.
  pytest_ok $PY -m pytest ../shared/contract -q -p no:cacheprovider -k "not test_variants_differ"
fi
