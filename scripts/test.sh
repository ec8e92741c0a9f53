#!/usr/bin/env bash
# The test command. Run from the repo root with the venv active.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -p no:cacheprovider "$@"
