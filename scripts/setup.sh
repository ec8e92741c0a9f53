#!/usr/bin/env bash
# One-step set-up, what the README's two commands run (and CI before its tests):
#  1. the system packages the test suite runs for real: mosquitto (MQTT tests), prometheus
#     (scrape tests), faketime (an agent with a skewed clock). Installed when run as root
#     on a Debian-like system; otherwise the missing ones are named and their tests skip.
#  2. a venv in .venv with tiersplit and every extra (edge, cloud, partition, dev); torch
#     is pinned to 2.13.0, the CPU build.
#  3. the separate PyTriton venv for the Triton backend tests (they skip without it).
# Idempotent and quiet: a second run installs nothing and prints only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
APT_PKGS=(mosquitto prometheus faketime)

installed() {
  if command -v dpkg >/dev/null 2>&1; then
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
  else
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]
  fi
}

missing=()
for p in "${APT_PKGS[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # Debian's packages start system services; the tests start their own on free ports.
    if ! { apt-get update -qq >/dev/null &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
    then
      echo "setup: could not install ${missing[*]} (apt-get failed); their tests will skip." >&2
    fi
  else
    echo "setup: missing system packages: ${missing[*]}; their tests will skip." >&2
    echo "setup: install them with: sudo apt-get install -y ${missing[*]}" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
# A real Triton server for the triton backend tests lives in its own venv (it pins numpy<2).
bash scripts/setup_pytriton.sh >/dev/null ||
  echo "setup: PyTriton venv not available: Triton tests will skip" >&2
