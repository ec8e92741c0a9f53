#!/usr/bin/env bash
# Builds .venv-triton: a separate venv holding a real Triton Inference Server (PyTriton)
# plus ONNX Runtime, for the cloud core's `triton` backend tests and bench/cloud.py.
#
# Separate because nvidia-pytriton pins numpy<2 while the project uses numpy 2.
# Idempotent: when the venv already imports everything it needs this exits at once.
# The Triton server binary loads libpython through a stub; at run time it needs
# LD_LIBRARY_PATH set to this interpreter's LIBDIR (cloud_core.backends._pytriton_launch
# does that), not at install time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TRITON_VENV:-.venv-triton}
PY=${PYTHON:-python3}
PKGS=("nvidia-pytriton>=0.5,<0.8" "onnxruntime>=1.18" "numpy<2")

check() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import numpy, onnxruntime, pytriton.triton  # noqa: F401
from pytriton.triton import Triton  # noqa: F401
assert int(numpy.__version__.split(".")[0]) < 2
EOF
}

if check; then
  echo "PyTriton venv ready: $VENV"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${PKGS[@]}"
if check; then
  echo "PyTriton venv ready: $VENV"
else
  echo "PyTriton venv built but pytriton does not import" >&2
  exit 1
fi
