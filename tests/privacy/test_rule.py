"""The pure rule a privacy floor applies to an audited manifest, the audit's place in the
signed manifest, and what each privacy level costs in predicted latency."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from contract.bundle import Bundle, CutSpec, Manifest, TensorSpec, write_bundle
from contract.config import ConfigError, StrictModel, parse
from contract.errors import SignatureError
from contract.privacy import (
    AttackScore,
    CutRisk,
    PrivacyAudit,
    PrivacyFloor,
    allowed_cuts,
    judge_cuts,
    privacy_levels,
)
from placement import CloudEstimate, Constraints, CutProfile, LinkEstimate
from placement.privacy_cost import privacy_costs

DEPTHS = {"cloud": 0, "k2": 2, "k8": 8, "k10": 10, "edge": 11}
# (raw, int8) SSIM of the strongest attack per cut
RISKS = {"cloud": (1.0, 0.99), "k2": (0.95, 0.9), "k8": (0.7, 0.6), "k10": (0.3, 0.2)}


def _row(cut: str, codec: str, ssim: float, dcor: float = 0.5, noise: float = 0.0) -> CutRisk:
    return CutRisk(cut=cut, depth=DEPTHS[cut], codec=codec, noise_std=noise, dcor=dcor,
                   scores=[AttackScore(attack="decoder", ssim=ssim, psnr=20.0),
                           AttackScore(attack="whitebox", ssim=ssim / 2, psnr=10.0)])


def _audit(skip: tuple[str, ...] = ()) -> PrivacyAudit:
    rows = []
    for cut, (raw, int8) in RISKS.items():
        if cut in skip:
            continue
        rows += [_row(cut, "raw", raw, dcor=raw), _row(cut, "int8", int8, dcor=int8),
                 _row(cut, "raw", raw / 4, noise=1.0)]
    return PrivacyAudit(date="2026-01-01T00:00:00Z", metric="ssim", data="digits.npz",
                        attack_train=100, attack_eval=50, attacks=["decoder", "whitebox"],
                        codecs=["raw", "int8"], cuts=rows)


def _manifest(audit: PrivacyAudit | None) -> Manifest:
    spec = TensorSpec(name="image", shape=[-1, 1, 8, 8])
    cuts = [CutSpec(id=c, depth=d, tensors=[] if c == "edge" else [spec], bytes=256,
                    bytes_int8=64) for c, d in DEPTHS.items()]
    return Manifest(name="m", version="1", created="2026-01-01T00:00:00Z", source="test",
                    opset=17, inputs=[spec], outputs=[spec], cuts=cuts, privacy_audit=audit)


def test_depth_floor_keeps_todays_meaning() -> None:
    m = _manifest(None)
    assert allowed_cuts(m, 1) == {"k2", "k8", "k10", "edge"}
    assert allowed_cuts(m, 0) == set(DEPTHS)
    assert allowed_cuts(m, {"min_depth": 9}) == {"k10", "edge"}
    assert PrivacyFloor.model_validate(3) == PrivacyFloor(min_depth=3)


def test_risk_floor_refuses_cuts_above_it_and_says_why() -> None:
    m = _manifest(_audit())
    verdicts = judge_cuts(m, {"max_reconstruction": 0.8})
    assert {c for c, v in verdicts.items() if v.allowed} == {"k8", "k10", "edge"}
    assert "0.950 > max_reconstruction 0.8" in verdicts["k2"].reason
    assert verdicts["k2"].risk == pytest.approx(0.95)  # raw is the leakiest codec
    assert verdicts["edge"].allowed and verdicts["edge"].risk is None
    # depth and risk bound together: both must hold
    assert allowed_cuts(m, {"min_depth": 9, "max_reconstruction": 0.8}) == {"k10", "edge"}
    # nothing is safe enough: only the edge remains
    assert allowed_cuts(m, {"max_reconstruction": 0.1}) == {"edge"}


def test_the_senders_codec_counts_and_unaudited_codecs_take_the_worst() -> None:
    m = _manifest(_audit())
    assert "k2" not in allowed_cuts(m, {"max_reconstruction": 0.92}, codec="raw")
    assert "k2" in allowed_cuts(m, {"max_reconstruction": 0.92}, codec="int8")
    assert "k2" not in allowed_cuts(m, {"max_reconstruction": 0.92}, codec="fp16")
    # the mitigation rows (noise 1.0) count only for a sender that adds that noise
    assert "k2" in allowed_cuts(m, {"max_reconstruction": 0.3}, codec="raw", noise_std=1.0)
    assert "k2" not in allowed_cuts(m, {"max_reconstruction": 0.3}, codec="raw")


def test_dcor_bound() -> None:
    m = _manifest(_audit())
    verdicts = judge_cuts(m, {"max_dcor": 0.5})
    assert {c for c, v in verdicts.items() if v.allowed} == {"k10", "edge"}
    assert "dcor 0.700 > max_dcor 0.5" in verdicts["k8"].reason


def test_unaudited_bundle_or_cut_is_refused_unless_depth_only() -> None:
    m = _manifest(None)
    verdicts = judge_cuts(m, {"max_reconstruction": 0.5, "min_depth": 1})
    assert {c for c, v in verdicts.items() if v.allowed} == {"edge"}
    assert "no privacy audit" in verdicts["k10"].reason
    fallback = {"max_reconstruction": 0.5, "min_depth": 1, "unaudited": "depth_only"}
    assert allowed_cuts(m, fallback) == {"k2", "k8", "k10", "edge"}
    partial = _manifest(_audit(skip=("k10",)))
    v = judge_cuts(partial, {"max_reconstruction": 0.8})
    assert not v["k10"].allowed and "not audited" in v["k10"].reason
    assert v["k8"].allowed


class _Policy(StrictModel):
    privacy: PrivacyFloor = PrivacyFloor(min_depth=1)


def test_floor_config_forms() -> None:
    assert parse(_Policy, {"privacy": 2}).privacy.min_depth == 2
    p = parse(_Policy, {"privacy": {"max_reconstruction": 0.4}}).privacy
    assert p.risk_stated and p.min_depth == 0 and p.describe() == "reconstruction <= 0.4"
    for bad in ({"privacy": {"max_reconstruction": 1.5}}, {"privacy": True},
                {"privacy": {"max_ssim": 0.3}}, {"privacy": -1}):
        with pytest.raises(ConfigError, match="privacy"):
            parse(_Policy, bad)


def test_depth_and_risk_forms_combine() -> None:
    risk = PrivacyFloor(max_reconstruction=0.8)
    both = risk.with_min_depth(9)
    assert both == PrivacyFloor(min_depth=9, max_reconstruction=0.8)
    assert both.with_min_depth(1) is both
    assert allowed_cuts(_manifest(_audit()), both) == {"k10", "edge"}


def test_levels_are_the_distinct_audited_risks() -> None:
    audit = _audit()
    assert privacy_levels(audit, DEPTHS) == [1.0, 0.95, 0.7, 0.3]
    assert privacy_levels(audit, DEPTHS, codec="int8") == [0.99, 0.9, 0.6, 0.2]


def test_audit_is_signed_with_the_manifest(tmp_path: Path,
                                           signing_keypair: tuple[Path, Path]) -> None:
    from transport.keys import load_ed25519_private, load_ed25519_public

    secret, public = (load_ed25519_private(signing_keypair[0]),
                      load_ed25519_public(signing_keypair[1]))
    with write_bundle(tmp_path, "m", "1", secret) as stage:
        for name in ("full.onnx", "full.int8.onnx"):
            (stage.dir / name).write_bytes(b"x")
        stage.set_manifest(_manifest(_audit()))
    b = Bundle.load(tmp_path / "m" / "1", public)
    assert b.manifest.privacy_audit == _audit()
    mpath = b.path / "manifest.yaml"
    text = mpath.read_text()
    assert "ssim: 0.95" in text
    mpath.chmod(0o644)
    mpath.write_text(text.replace("ssim: 0.95", "ssim: 0.15", 1))
    with pytest.raises(SignatureError):
        Bundle.load(b.path, public)


def _profile(cut: str, head_ms: float, nbytes: int) -> CutProfile:
    return CutProfile(cut_id=cut, depth=DEPTHS[cut], head_ms=head_ms, tail_ms={1: 0.5},
                      bytes={"raw": nbytes}, reply_bytes=40)


def test_each_privacy_level_costs_latency() -> None:
    # a slow device: the cloud cut is fastest, deeper cuts cost more head time
    cuts = [_profile("cloud", 0.0, 4000), _profile("k2", 5.0, 8000),
            _profile("k8", 20.0, 2000), _profile("k10", 40.0, 500), _profile("edge", 80.0, 0)]
    risks = {c: r[0] for c, r in RISKS.items()}
    links = {"wifi": LinkEstimate(up_Bps=5e6, down_Bps=5e6, rtt_ms=5.0)}
    rows = privacy_costs(cuts, risks, links, CloudEstimate(), Constraints(privacy_floor=0))
    assert [r.max_risk for r in rows] == [None, 0.95, 0.7, 0.3, 0.0]
    assert [r.chosen["wifi"] for r in rows] == ["cloud", "k2", "k8", "k10", "edge"]
    ms = [r.predicted_ms["wifi"] for r in rows]
    assert ms == sorted(ms) and ms[0] < ms[-1]
    assert rows[-1].allowed == frozenset({"edge"})
    # the depth floor still applies at every level
    rows1 = privacy_costs(cuts, risks, links, CloudEstimate(), Constraints(privacy_floor=1))
    assert all("cloud" not in r.allowed for r in rows1)
    assert math.isfinite(rows1[0].predicted_ms["wifi"])
