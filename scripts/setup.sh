#!/usr/bin/env bash
# One-step set-up: a venv in .venv with tiersplit and every extra (edge, cloud,
# partition, dev). torch is pinned to 2.13.0, the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# A real Triton server for the triton backend tests lives in its own venv (it pins numpy<2).
bash scripts/setup_pytriton.sh || echo "PyTriton venv not available: Triton tests will skip" >&2
