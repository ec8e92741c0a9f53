"""`tiersplit privacy` and `tiersplit place tune` with a floor stated as risk: the audit
is printed, written, plotted and published signed; `inspect`'s renderer shows it; tune
admits only the cuts under the floor and shows what each privacy level costs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from contract.bundle import Bundle
from tiersplit.cli import app
from tiersplit.cli.privacy import audit_table
from transport.keys import load_ed25519_public

runner = CliRunner()


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _err(result) -> str:
    return " ".join(result.stderr.split())


def _flat(text: str) -> str:
    """Rich output as one line: table borders dropped, so wrapped cells read on."""
    return " ".join(re.sub(r"[│┃]", " ", text).split())


@pytest.fixture(scope="module")
def published(bundle_factory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private copy of the signed digits bundle, its data, and the audited version
    `privacy audit --record` published next to it."""
    built = bundle_factory("digits_cnn", "1", 4)
    work = tmp_path_factory.mktemp("privacy-cli")
    repo = work / "repo"
    src = repo / built.name / built.version
    shutil.copytree(built.path, src)
    data = work / "digits.npz"
    r = _invoke("privacy", "make-data", src, "--out", data)
    assert r.exit_code == 0, r.output
    assert "1797 digit images [1, 8, 8]" in " ".join(r.output.split())
    r = _invoke("privacy", "audit", src, "--data", data, "--quick", "--codecs", "raw",
                "--out", work / "report.md", "--plot", work / "risk.png",
                "--json", work / "audit.json", "--record", "--signing-key", built.secret_key,
                "--public-key", built.public_key)
    assert r.exit_code == 0, r.output + r.stderr
    return {"src": src, "audited": repo / built.name / f"{built.version}.audit",
            "work": work, "data": data, "pub": built.public_key}


def test_audit_cli_writes_and_publishes(published: dict[str, Path]) -> None:
    work = published["work"]
    assert (work / "report.md").read_text().startswith("# Privacy audit of digits_cnn")
    assert (work / "risk.png").read_bytes()[:4] == b"\x89PNG"
    b = Bundle.load(published["audited"], load_ed25519_public(published["pub"]))
    audit = b.manifest.privacy_audit
    assert audit is not None and audit.codecs == ["raw"]
    assert {r.cut for r in audit.cuts} == {c.id for c in b.manifest.cuts if not c.is_edge}
    assert (work / "audit.json").read_text().count('"cut"') == len(audit.cuts)
    table = audit_table(b.manifest)
    assert table is not None and table.row_count == len(audit.cuts)
    assert audit_table(Bundle.load(published["src"], require_signature=False).manifest) is None


def test_check_cli_explains_each_cut(published: dict[str, Path]) -> None:
    r = _invoke("privacy", "check", published["audited"], "--public-key", published["pub"],
                "--max-reconstruction", "0.5")
    assert r.exit_code == 0, r.output
    out = _flat(r.output)
    assert "audited ssim 1.000 > max_reconstruction 0.5" in out
    assert "nothing crosses" in out


def test_audit_cli_refuses_bad_input_in_one_line(published: dict[str, Path],
                                                 tmp_path: Path) -> None:
    import numpy as np

    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((40, 3, 8, 8), np.float32))
    pub = ("--public-key", published["pub"])
    for args, needle in (
        (("--data", bad, *pub), "the model takes [1, 8, 8]"),
        (("--data", published["data"], "--record", *pub), "--record re-signs the manifest"),
        (("--data", published["data"], "--record", "--allow-unsigned"), "already exists"),
        (("--data", published["data"], "--attacks", "telepathy", *pub), "unknown attack"),
        (("--data", published["data"]), "no public key given"),
    ):
        r = _invoke("privacy", "audit", published["src"], *args)
        assert r.exit_code == 2, r.output
        err = _err(r)
        assert err.startswith("error:") and needle in err, err


def test_tune_honours_a_risk_floor_and_prices_privacy(published: dict[str, Path],
                                                      tmp_path: Path) -> None:
    src, audited = published["src"], published["audited"]
    edge, cloud = tmp_path / "edge.yaml", tmp_path / "cloud.yaml"
    # profiles measured on the unaudited version still hold for the audited one
    for cmd, out in (("profile-edge", edge), ("profile-cloud", cloud)):
        extra = ("--batches", "1") if cmd == "profile-cloud" else ()
        r = _invoke("place", cmd, src, "--out", out, "--runs", "3", "--allow-unsigned", *extra)
        assert r.exit_code == 0, r.output
    links = tmp_path / "links.yaml"
    links.write_text(yaml.safe_dump({"profiles": {
        "lan": {"up_Bps": 1.0e8, "down_Bps": 1.0e8, "rtt_ms": 0.5}}}))
    b = Bundle.load(audited, require_signature=False)
    audit = b.manifest.privacy_audit
    assert audit is not None
    risks = sorted((audit.risk(c.id), c.id) for c in b.manifest.cuts if not c.is_edge)
    limit = (risks[0][0] + risks[1][0]) / 2  # only the safest split cut stays
    placement, plot = tmp_path / "placement.yaml", tmp_path / "privacy.png"
    r = _invoke("place", "tune", "--edge-profile", edge, "--cloud-profile", cloud,
                "--links", links, "--bundle", audited, "--allow-unsigned",
                "--privacy-floor", "0", "--max-reconstruction", limit, "--out", placement,
                "--privacy-plot", plot)
    assert r.exit_code == 0, r.output + r.stderr
    out = _flat(r.output)
    assert "what each privacy level costs" in out
    assert f"cuts allowed {risks[0][1]}, edge" in out
    prior = yaml.safe_load(placement.read_text())
    assert prior["constraints"]["allowed_cuts"] == sorted([risks[0][1], "edge"])
    assert prior["constraints"]["privacy"]["max_reconstruction"] == pytest.approx(limit)
    assert prior["models"]["digits_cnn"]["conditions"]["lan"]["cut"] in (risks[0][1], "edge")
    assert plot.read_bytes()[:4] == b"\x89PNG"
    r = _invoke("place", "tune", "--edge-profile", edge, "--cloud-profile", cloud,
                "--links", links, "--bundle", src, "--allow-unsigned",
                "--max-reconstruction", "0.5", "--out", tmp_path / "p2.yaml")
    assert r.exit_code == 2 and "has no privacy audit" in _err(r)
