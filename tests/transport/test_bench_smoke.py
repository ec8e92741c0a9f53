"""python -m bench.transport --quick runs end to end (so the figures it prints cannot rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_transport_bench_quick_runs() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.transport", "--quick"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for needle in ("1. Codec cost", "2. Links over loopback", "ZMQ plaintext", "ZMQ Curve",
                   "3. Framework overhead", "4. Bytes on the wire", "int8+lz4 = "):
        assert needle in r.stdout, needle
    ratio = float(r.stdout.split("int8+lz4 = ")[1].split(" x raw")[0])
    assert ratio <= 0.3


@pytest.mark.slow
def test_cloud_bench_reports_cpu_per_request() -> None:
    """python -m bench.cloud measures the core with separate generator processes and
    prints core vs backend CPU per request (short cells, ZeroMQ only)."""
    r = subprocess.run([sys.executable, "-m", "bench.cloud", "--quick", "--seconds", "1",
                        "--senders", "1,8", "--transports", "zmq", "--no-triton",
                        "--no-inproc", "--gen-procs", "2"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for needle in ("core CPU ms/req", "backend CPU ms/req", "overhead", "gen util",
                   "zmq: service overhead at 8 senders", "generators: lean"):
        assert needle in r.stdout, needle
    overhead = float(r.stdout.split("service overhead at 8 senders ")[1].split("x")[0])
    assert overhead >= 1.0  # the service cannot cost less CPU than the tail it runs
