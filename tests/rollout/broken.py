"""A bundle version whose cloud tails fail on real inputs: what "v2 answers errors" means.

Each tail gets a side branch ``Gather([0.0], int64(max|x| * 1e6))`` added to its output
times zero: with the all-zero inputs a core warms a tail up with the index is 0 and the
tail loads and warms fine; with any real activation the index is out of range and ONNX
Runtime fails the run, so the core answers INTERNAL to every request on that version.
The manifest is re-hashed and re-signed: the bundle is valid, only its behaviour is bad.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import yaml
from onnx import TensorProto, helper

from contract.bundle import MANIFEST, SIGNATURE, Manifest, sha256_file
from transport import keys

__all__ = ["make_failing_tails"]


def _break(path: Path) -> None:
    m = onnx.load(path)
    g = m.graph
    x = g.input[0].name
    out = g.output[0].name
    inner = f"{out}__ok"
    for node in g.node:
        node.output[:] = [inner if o == out else o for o in node.output]
    g.initializer.extend([
        helper.make_tensor("brk_data", TensorProto.FLOAT, [1], [0.0]),
        helper.make_tensor("brk_scale", TensorProto.FLOAT, [], [1e6]),
    ])
    g.node.extend([
        helper.make_node("Abs", [x], ["brk_abs"]),
        helper.make_node("ReduceMax", ["brk_abs"], ["brk_max"], keepdims=0),
        helper.make_node("Mul", ["brk_max", "brk_scale"], ["brk_big"]),
        helper.make_node("Cast", ["brk_big"], ["brk_idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["brk_data", "brk_idx"], ["brk_val"]),
        helper.make_node("Mul", ["brk_val", "brk_data"], ["brk_zero"]),
        helper.make_node("Add", [inner, "brk_zero"], [out]),
    ])
    onnx.save(m, path)


def make_failing_tails(src: Path, dst: Path, secret_key: Path) -> Path:
    """Copy bundle ``src`` to ``dst`` with every cloud tail broken, re-signed."""
    shutil.copytree(src, dst)
    manifest = Manifest.model_validate(yaml.safe_load((dst / MANIFEST).read_bytes()))
    # the "cloud" cut runs the fp32 full model; the split cuts their tails
    for rel in {manifest.full_fp32, *(c.tail for c in manifest.cuts if c.tail)}:
        _break(dst / rel)
    files = {rel: sha256_file(dst / rel) for rel in manifest.files}
    raw = manifest.model_copy(update={"files": files}).to_yaml()
    (dst / MANIFEST).write_bytes(raw)
    (dst / SIGNATURE).write_bytes(keys.load_ed25519_private(secret_key).sign(raw))
    return dst
