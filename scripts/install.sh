#!/usr/bin/env bash
# Creates .venv and installs reactor-rt into it (editable). `--dev` adds the test tools.
# torch is pinned to 2.13.0 first: that release's CPU build lies on this machine's disk, while an
# open range would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import reactor_rt, torch; print('reactor-rt', reactor_rt.__version__, 'torch', torch.__version__)"
