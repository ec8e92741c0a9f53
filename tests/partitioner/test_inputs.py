"""Any input type: int64 ids + masks from a torch callable (declared or read off the
calibration data), dynamic sequence length through head and tail, and bad input data as
one clear line, exit 2, no bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from contract.bundle import Bundle
from partitioner import ortutil
from partitioner.errors import InputError
from partitioner.inputs import InputDecl, example_feeds, parse_input
from partitioner.split import run_split
from tiersplit.cli import app

TEXT = "tests.partitioner.user_models:text"
runner = CliRunner()


def _invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _tokens(n: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 100, (n, seq)).astype(np.int64)
    lengths = rng.integers(2, seq + 1, n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def _assert_clean_failure(result, out: Path, needle: str) -> None:
    err = " ".join(result.stderr.split())
    assert result.exit_code == 2, result.output
    assert err.startswith("error:") and err.count("error:") == 1, err
    assert "Traceback" not in err and needle.lower() in err.lower(), err
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


def test_parse_input() -> None:
    d = parse_input("input_ids:1,seq=128:int64")
    assert d == InputDecl("input_ids", (1, 128), "int64", ((1, "seq"),))
    assert parse_input("1,3,8,8") == InputDecl(None, (1, 3, 8, 8))
    assert parse_input("mask:1,16:bool").dtype == "bool"
    for bad in ("ids:1,seq=x:int64", "ids:1,16:int65", "b=1,16", "a:b:c:d", "ids:0,4:int64"):
        with pytest.raises(InputError):
            parse_input(bad)


def test_example_feeds_respect_dtype_vocab_and_mask() -> None:
    decls = [InputDecl("input_ids", (1, 20), "int64", ((1, "s"),)),
             InputDecl("attention_mask", (1, 20), "int64", ((1, "s"),)),
             InputDecl("x", (1, 3), "float16")]
    f = example_feeds(decls, 6, 0, {"input_ids": 500})
    assert f["input_ids"].dtype == np.int64 and f["input_ids"].max() < 500
    assert set(np.unique(f["attention_mask"])) <= {0, 1}
    assert (f["attention_mask"][:, 0] == 1).all() and f["x"].dtype == np.float16


def test_text_callable_dynamic_sequence(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    r = _invoke("partition", TEXT, "--input", "input_ids:1,seq=16:int64", "--input",
                "attention_mask:1,seq=16:int64", "--out", out, "--name", "text", "--max-cuts",
                "5")
    assert r.exit_code == 0, r.output
    assert "recipe" in r.stdout and "x)" in r.stdout  # recipe and latency ratio columns
    b = Bundle.load(out / "text" / "1", require_signature=False)
    m = b.manifest
    assert [(s.name, s.dtype, s.dynamic) for s in m.inputs] == [
        ("input_ids", "int64", [1]), ("attention_mask", "int64", [1])]
    splits = [c for c in m.cuts if c.head and c.tail]
    per_token = [t for c in splits for t in c.tensors if len(t.shape) == 3]
    assert per_token and all(t.dynamic == [1] for t in per_token)  # (batch, seq, width)
    full = ortutil.session(b.file(m.full_fp32))
    for seq in (8, 40):  # neither is the partitioning length: the dims stay dynamic
        feeds = _tokens(5, seq, seq)
        ref = full.run(None, feeds)[0]
        for c in splits:
            got = run_split(ortutil.session(b.file(c.head_fp32)),
                            ortutil.session(b.file(c.tail)), feeds)[0]
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_dtypes_from_calibration_data(tmp_path: Path) -> None:
    calib = tmp_path / "tokens.npz"
    np.savez(calib, **_tokens(24, 12, 1))
    out = tmp_path / "repo"
    r = _invoke("partition", TEXT, "--calib-data", calib, "--out", out, "--name", "t",
                "--max-cuts", "3")
    assert r.exit_code == 0, r.output
    m = Bundle.load(out / "t" / "1", require_signature=False).manifest
    assert [(s.name, s.dtype, s.shape) for s in m.inputs] == [
        ("input_ids", "int64", [-1, 12]), ("attention_mask", "int64", [-1, 12])]
    assert m.quantization.evaluation_samples == 6 and m.quantization.calibration_samples == 18


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("arrays", "needle"), [
    ({"input_ids": np.ones((8, 32), np.float32), "attention_mask": np.ones((8, 32), np.int64)},
     "is float32, the model takes int64"),
    ({"input_ids": np.ones((8, 32), np.int64), "attention_mask": np.ones((8, 16), np.int64)},
     "must match"),
    ({"input_ids": np.ones((8, 300), np.int64), "attention_mask": np.ones((8, 300), np.int64)},
     "longer than the model supports"),
    ({"input_ids": np.ones((8, 32), np.int64)}, "no array for input 'attention_mask'"),
])
def test_bad_calibration_data(tmp_path: Path, arrays: dict, needle: str) -> None:
    out = tmp_path / "repo"
    calib = _npz(tmp_path / "calib.npz", **arrays)
    _assert_clean_failure(_invoke("partition", "zoo:bert_tiny", "--calib-data", calib,
                                  "--out", out), out, needle)


def test_metric_that_raises_and_bad_input_syntax(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    _assert_clean_failure(_invoke("partition", "zoo:digits_cnn", "--metric",
                                  "tests.partitioner.user_models:raising_metric",
                                  "--metric-floor", "0.5", "--out", out), out,
                          "raised ZeroDivisionError: metric bug")
    _assert_clean_failure(_invoke("partition", TEXT, "--input", "input_ids:1,seq=x:int64",
                                  "--out", out), out, "not an input like")


def test_user_metric_sets_the_floor(tmp_path: Path) -> None:
    from partitioner import partition

    path = partition("zoo:digits_cnn", None, tmp_path, max_cuts=3, progress=False,
                     metric="tests.partitioner.user_models:mean_cosine", metric_floor=0.999)
    m = Bundle.load(path, require_signature=False).manifest
    assert m.quantization.metric == "tests.partitioner.user_models:mean_cosine"
    for c in m.cuts:
        if c.head:
            assert c.accuracy.metric is not None and c.accuracy.metric >= 0.999
