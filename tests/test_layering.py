"""The edge path must never import torch (DESIGN.md: arrows point down; no torch on the
device). Checked in a fresh interpreter so other tests' imports cannot hide a leak."""

from __future__ import annotations

import subprocess
import sys

import pytest

TORCH_FREE = [
    "transport",
    "transport.wire",
    "transport.zmq",
    "transport.mqtt",
    "transport.keys",
    "partitioner.bundle",
    "partitioner.placement",
    "edge_agent",
    "edge_agent.runtime",
    "edge_agent.policy",
    "edge_agent.client",
    "edge_agent.api",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_does_not_import_torch(module: str) -> None:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(','.join(bad[:5]))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{module} imported torch: {r.stdout} {r.stderr[-2000:]}"


def test_transport_imports_nothing_of_ours() -> None:
    code = (
        "import sys, transport, transport.wire, transport.zmq, transport.mqtt\n"
        "ours = ('partitioner', 'cloud_core', 'edge_agent', 'tiersplit')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ours)\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"transport imports upper floors: {r.stdout} {r.stderr[-2000:]}"
