"""`tiersplit cloud` commands: expected failures are one red line and exit 2; the Triton
export writes a repository from a verified bundle."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tiersplit.cli import app
from transport import keys


def test_serve_with_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text("repository: r\nallow_unsigned: true\nbatching:\n  max_batchh: 3\n")
    r = CliRunner().invoke(app, ["cloud", "serve", "--config", str(cfg)])
    assert r.exit_code == 2
    assert "batching.max_batchh" in r.output and "Traceback" not in r.output


def test_serve_with_missing_bundle_is_one_line_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text("repository: r\nallow_unsigned: true\nmodels:\n  - name: ghost\n"
                   "http:\n  enabled: false\nadmin:\n  enabled: false\n")
    r = CliRunner().invoke(app, ["cloud", "serve", "--config", str(cfg)])
    assert r.exit_code == 2 and "no bundles of model 'ghost'" in r.output


def test_export_triton_cli(cloud_repo, tmp_path: Path) -> None:
    runner = CliRunner()
    bundle = cloud_repo.root / "mlp" / "2"
    r = runner.invoke(app, ["cloud", "export-triton", str(bundle), "--out",
                            str(tmp_path / "repo"), "--public-key", str(cloud_repo.public_key),
                            "--max-batch", "8", "--instances", "2"])
    assert r.exit_code == 0, r.output
    assert "mlp__h1 v2" in r.output
    text = (tmp_path / "repo" / "mlp__h1" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in text and "count: 2" in text
    assert (tmp_path / "repo" / "mlp__h1" / "2" / "model.onnx").exists()
    r = runner.invoke(app, ["cloud", "export-triton", str(bundle), "--out",
                            str(tmp_path / "repo2")])
    assert r.exit_code == 2 and "--public-key" in r.output
    _, other = keys.generate("ed25519", tmp_path / "k", "o")
    r = runner.invoke(app, ["cloud", "export-triton", str(bundle), "--out",
                            str(tmp_path / "repo3"), "--public-key", str(other)])
    assert r.exit_code == 2 and "bad signature" in r.output
