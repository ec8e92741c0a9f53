"""The edge imports placement: numpy, pyyaml and the standard library only.
Checked in a fresh interpreter so other tests' imports cannot hide a leak."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "onnx", "onnxruntime", "matplotlib", "pydantic", "cryptography", "rich",
         "sklearn", "zmq", "paho")


def test_placement_imports_only_light_dependencies() -> None:
    code = (
        "import sys, placement as p\n"
        "p.load_prior, p.min_cut_plan, p.optimize_fleet, p.cut_profiles\n"
        f"heavy = {HEAVY!r}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(','.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"placement imported {r.stdout} {r.stderr[-2000:]}"


def test_profile_module_runs_on_a_device_without_torch_or_onnx() -> None:
    """`tiersplit place profile-edge` runs on the device: ORT yes, torch/onnx no."""
    code = (
        "import sys, partitioner.profile\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx'))\n"
        "print(','.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"partitioner.profile imported {r.stdout} {r.stderr[-2000:]}"
