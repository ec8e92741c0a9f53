#!/usr/bin/env bash
# The GPU paths in one go, for a machine with one NVIDIA GPU (about 5 minutes; each step
# has its own time limit so the whole stays under 8): the CUDA backends' correctness
# tests (ORT CUDA EP, torch CUDA, a core batching on CUDA, Triton KIND_GPU when a PyTriton
# venv is there), then `python -m bench.cloud --device cuda --quick` over ZeroMQ. Ends
# with one table: each check, its result, the figures that matter.
#
# Run from anywhere with the venv active (or PYTHON=/path/to/python). Exit status 0 when
# nothing failed (a check that skipped, e.g. no Triton venv, is reported, not failed),
# 1 when something failed, 2 when there is no GPU (the tests skip, the bench is not run).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=$(mktemp -d "${TMPDIR:-/tmp}/tiersplit-gpu-check.XXXXXX")
rows=()
status=0

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
      | head -1)
if [ -z "$gpu" ]; then
    rows+=("nvidia-smi|NO GPU|no NVIDIA GPU visible: the CUDA checks below will skip")
else
    rows+=("nvidia-smi|ok|$gpu")
fi
engines=$("$PY" - <<'EOF' 2>&1
import onnxruntime as ort
try:
    import torch
    t = f"torch {torch.__version__} cuda={torch.cuda.is_available()}"
except ImportError:
    t = "torch missing"
print(f"onnxruntime {ort.__version__} EPs={','.join(ort.get_available_providers())}; {t}")
EOF
)
rows+=("engines|info|$engines")

# 1. correctness of the CUDA backends (skips say why)
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -rs tests/cloud/test_gpu.py \
    >"$OUT/tests.txt" 2>&1
rc=$?
summary=$(grep -E "passed|failed|skipped|error" "$OUT/tests.txt" | tail -1)
skips=$(grep -c "^SKIPPED" "$OUT/tests.txt" || true)
if [ $rc -eq 0 ]; then
    rows+=("tests/cloud/test_gpu.py|ok|$summary ($skips skip lines in $OUT/tests.txt)")
else
    [ $rc -eq 124 ] && summary="timed out after 240 s"
    rows+=("tests/cloud/test_gpu.py|FAILED|$summary (see $OUT/tests.txt)")
    status=1
fi

# 2. the cloud bench on CUDA (Triton only if its venv is there; it says so otherwise)
if [ -z "$gpu" ]; then
    rows+=("bench.cloud --device cuda|skipped|no GPU on this machine")
    status=2
else
timeout 300 "$PY" -m bench.cloud --device cuda --quick --transports zmq \
    >"$OUT/bench.txt" 2>&1
rc=$?
if [ $rc -eq 0 ]; then
    rows+=("bench.cloud --device cuda|ok|full tables in $OUT/bench.txt")
    while IFS= read -r line; do
        rows+=("  goal|$(echo "$line" | grep -q "NOT met" && echo "not met" || echo "met")|$line")
    done < <(grep -E "^zmq: " "$OUT/bench.txt")
    note=$(grep -E "^Triton not measured|^onnxruntime has no CUDA" "$OUT/bench.txt" | head -2)
    [ -n "$note" ] && rows+=("  note|info|$note")
else
    [ $rc -eq 124 ] && why="timed out after 300 s" || why="exit $rc"
    rows+=("bench.cloud --device cuda|FAILED|$why; tail: $(tail -3 "$OUT/bench.txt" | tr '\n' ' ')")
    status=1
fi
fi

"$PY" - "${rows[@]}" <<'EOF'
import sys

from rich.console import Console
from rich.table import Table

t = Table(title="tiersplit GPU check")
for col in ("check", "result", "detail"):
    t.add_column(col, overflow="fold")
for row in sys.argv[1:]:
    t.add_row(*row.split("|", 2))
Console(width=160).print(t)
EOF
exit $status
