"""`tiersplit partition|verify|inspect`: bad input gives one clear line, exit != 0 and no
half-written bundle; tampering and wrong keys are caught; bundles are immutable."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from contract.bundle import Bundle
from contract.errors import BundleExists, HashMismatch, SignatureError
from tests.partitioner.conftest import USER_MODEL
from tiersplit.cli import app
from transport.keys import generate, load_ed25519_public

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _err(result) -> str:
    """stderr as one line (rich soft-wraps at the console width: join the lines back)."""
    return " ".join(result.stderr.split())


def _assert_clean_failure(result, out: Path, needle: str) -> None:
    assert result.exit_code not in (0, None), result.output
    err = _err(result)
    assert err.startswith("error:") and err.count("error:") == 1, err
    assert "Traceback" not in err and needle.lower() in err.lower(), err
    assert result.exception is None or isinstance(result.exception, SystemExit)
    leftovers = [p for p in out.rglob("*")] if out.exists() else []
    assert not [p for p in leftovers if p.is_file()], leftovers  # no half-written bundle


def _tiny_onnx(path: Path, op: str, domain: str = "") -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    nodes = [helper.make_node(op, ["x"], ["h"], domain=domain),
             helper.make_node("Cos", ["h"], ["y"])]
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("args", "needle"), [
    (["zoo:resnet_huge"], "unknown zoo model"),
    (["no_such_pkg.models:make"], "cannot import module"),
    (["tests.partitioner.user_models:nothing"], "has no attribute"),
    (["tests.partitioner.user_models:broken"], "raised RuntimeError"),
    (["zoo:digits_cnn", "--input-shape", "1,3,64,64"], "wrong input shape"),
    ([USER_MODEL, "--input-shape", "1,3,16,16", "--input-shape", "1,5,16,16"],
     "check --input-shape"),
    ([USER_MODEL], "input shapes"),
    (["just-a-word"], "cannot resolve model"),
])
def test_bad_model_references(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "repo"
    _assert_clean_failure(_invoke("partition", *args, "--out", out), out, needle)


def test_non_onnx_file(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"this is not protobuf at all \x00\x01\x02" * 10)
    out = tmp_path / "repo"
    _assert_clean_failure(_invoke("partition", bogus, "--out", out), out, "not a valid ONNX")


def test_onnx_with_ops_int8_cannot_quantize(tmp_path: Path) -> None:
    model = _tiny_onnx(tmp_path / "trig.onnx", "Sin")
    out = tmp_path / "repo"
    _assert_clean_failure(_invoke("partition", model, "--out", out), out,
                          "nothing in the full model can be quantized")


def test_onnx_with_unknown_custom_op(tmp_path: Path) -> None:
    model = _tiny_onnx(tmp_path / "custom.onnx", "FancyOp", domain="com.example")
    out = tmp_path / "repo"
    _assert_clean_failure(_invoke("partition", model, "--out", out), out, "FancyOp")


def test_bad_shape_syntax_and_calibration(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    r = _invoke("partition", "zoo:digits_cnn", "--input-shape", "1,x,8", "--out", out)
    assert r.exit_code == 2 and not out.exists()
    bad = tmp_path / "calib.npz"
    np.savez(bad, image=np.zeros((4, 3, 8, 8), np.float32))
    _assert_clean_failure(_invoke("partition", "zoo:digits_cnn", "--calib-data", bad,
                                  "--out", out), out, "samples of shape")


def test_existing_version_is_refused(tmp_path: Path, digits_bundle) -> None:
    root = digits_bundle.root
    before = sorted(p.name for p in (root / "digits_cnn").iterdir())
    r = _invoke("partition", "zoo:digits_cnn", "--out", root, "--version",
                digits_bundle.version)
    assert r.exit_code == 2 and "already exists" in _err(r) and "immutable" in _err(r)
    assert sorted(p.name for p in (root / "digits_cnn").iterdir()) == before
    with pytest.raises(BundleExists):
        from partitioner import partition

        partition("zoo:digits_cnn", None, root, version=digits_bundle.version, progress=False)


def test_published_files_are_read_only(digits_bundle) -> None:
    for p in digits_bundle.path.iterdir():
        assert not stat.S_IMODE(p.stat().st_mode) & 0o222, p
    assert not [p for p in digits_bundle.path.parent.iterdir() if p.name.startswith(".")]


def test_signed_partition_verify_inspect(tmp_path: Path) -> None:
    secret, public = generate("ed25519", tmp_path / "keys", "sign")
    out = tmp_path / "repo"
    calib = tmp_path / "calib.npz"
    from partitioner import zoo

    np.savez(calib, image=zoo.get("digits_cnn").example_inputs(32, seed=3)[0])
    r = _invoke("partition", "zoo:digits_cnn", "--out", out, "--name", "digits", "--version",
                "7", "--max-cuts", "3", "--signing-key", secret, "--calib-data", calib)
    assert r.exit_code == 0, r.output
    path = out / "digits" / "7"
    assert "k" in r.stdout and "signed" in r.stdout
    m = Bundle.load(path, load_ed25519_public(public)).manifest
    q = m.quantization  # a quarter of the given samples is held back for accuracy
    assert q.calibration == "calib.npz" and q.calibration_samples == 24
    assert q.evaluation == "held back from calib.npz" and q.evaluation_samples == 8
    r = _invoke("verify", path, "--public-key", public)
    assert r.exit_code == 0, r.output
    assert "signature valid" in r.stdout and "FAIL" not in r.stdout
    r = _invoke("inspect", path)
    assert r.exit_code == 0 and "crossing tensors" in r.stdout and "bytes int8" in r.stdout
    _, other = generate("ed25519", tmp_path / "keys", "other")
    r = _invoke("verify", path, "--public-key", other)
    assert r.exit_code != 0 and "bad signature" in _err(r)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        os.chmod(p, 0o644)
    return dst


def test_tamper_detection(tmp_path: Path, digits_bundle) -> None:
    pub = load_ed25519_public(digits_bundle.public_key)
    bad = _copy(digits_bundle.path, tmp_path / "digits_cnn" / "1")
    head = next(bad.glob("head-k*.int8.onnx"))
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    head.write_bytes(bytes(data))
    with pytest.raises(HashMismatch):
        Bundle.load(bad, pub)
    r = _invoke("verify", bad, "--public-key", digits_bundle.public_key)
    assert r.exit_code != 0 and "tampered" in _err(r)
    # wrong key
    _, other = generate("ed25519", tmp_path / "keys", "other")
    with pytest.raises(SignatureError):
        Bundle.load(digits_bundle.path, load_ed25519_public(other))
    # an edited manifest no longer matches its signature
    edited = _copy(digits_bundle.path, tmp_path / "edited" / "1")
    mpath = edited / "manifest.yaml"
    mpath.write_text(mpath.read_text().replace("task: classification", "task: other"))
    with pytest.raises(SignatureError):
        Bundle.load(edited, pub)


def test_verify_fails_on_a_wrong_tail(tmp_path: Path, digits_bundle) -> None:
    """A tail swapped for another cut's (and re-hashed, unsigned) fails verification."""
    import yaml

    bad = _copy(digits_bundle.path, tmp_path / "swap" / "1")
    (bad / "manifest.yaml.sig").unlink()
    cuts = [c for c in digits_bundle.manifest.cuts if c.tail and c.head]
    a, b = cuts[0], cuts[1]
    (bad / a.tail).write_bytes((bad / b.tail).read_bytes())
    from contract.bundle import sha256_file

    raw = yaml.safe_load((bad / "manifest.yaml").read_text())
    raw["files"][a.tail] = sha256_file(bad / a.tail)
    (bad / "manifest.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    r = _invoke("verify", bad)
    assert r.exit_code == 1 and "FAIL" in r.stdout and a.id in r.stdout


def test_real_command_exit_code(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "tiersplit.cli", "partition", "zoo:nope",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2
    err = " ".join(r.stderr.split())
    assert err.startswith("error: unknown zoo model 'nope'") and "Traceback" not in err, err


def test_user_callable_via_cli(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    r = _invoke("partition", USER_MODEL, "--input-shape", "1,3,16,16", "--input-shape",
                "1,2,16,16", "--out", out, "--name", "fused", "--max-cuts", "4",
                "--task", "classification")
    assert r.exit_code == 0, r.output
    m = Bundle.load(out / "fused" / "1", require_signature=False).manifest
    assert [s.name for s in m.inputs] == ["rgb", "depth"] and len(m.cuts) == 4
    assert m.cuts[1].accuracy.top1_agreement is not None
    r = _invoke("verify", out / "fused" / "1")
    assert r.exit_code == 0 and "unsigned" in r.stdout
