"""What the cloud can recover from a cut, as recorded in the manifest, and which cuts a
privacy floor allows.

A node count on the device keeps raw inputs home but says nothing about what the
activations still reveal: after one convolution an image is usually still there to see.
``tiersplit privacy audit`` measures it per cut: it runs the attacks an honest-but-curious
cloud could mount (a decoder learned from activations back to inputs, optimisation through
the head's weights, nearest-embedding token recovery) on held-back data, and records the
reconstruction quality it reached (SSIM for images, token recovery rate for text) plus a
model-free leakage statistic (distance correlation). The audit travels in the signed
manifest (:class:`PrivacyAudit`), so a floor stated as risk (:class:`PrivacyFloor`) can be
enforced wherever the manifest is read, by the pure rule :func:`judge_cuts`.

This module imports no torch (the edge agent uses it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from contract.config import StrictModel

if TYPE_CHECKING:
    from contract.bundle import CutSpec, Manifest

__all__ = [
    "AttackScore",
    "CutRisk",
    "CutVerdict",
    "Metric",
    "PrivacyAudit",
    "PrivacyFloor",
    "allowed_cuts",
    "judge_cuts",
    "privacy_levels",
]

#: The reconstruction-quality scale of an audit: SSIM of rebuilt images (1 = identical)
#: or the share of input tokens recovered exactly. Both run from 0 (nothing) to 1 (all).
Metric = Literal["ssim", "token_recovery"]
EDGE_CUT = "edge"  # nothing crosses: always allowed (same id as contract.bundle.EDGE_CUT)


class AttackScore(StrictModel):
    """One attack's best result on one cut.

    Attributes:
        attack: ``decoder`` (black box: learned from activations back to inputs),
            ``whitebox`` (optimises an input through the head's weights) or
            ``nearest_embedding`` (each hidden state's nearest token embedding).
        ssim / psnr: mean over the evaluation samples (images; None otherwise).
        token_recovery: share of tokens recovered exactly (text; None otherwise).
    """

    attack: str
    ssim: float | None = None
    psnr: float | None = None
    token_recovery: float | None = None

    def value(self, metric: Metric) -> float | None:
        return self.ssim if metric == "ssim" else self.token_recovery


class CutRisk(StrictModel):
    """The audit of one cut under one codec (and one mitigation noise level).

    Attributes:
        cut / depth: the manifest's cut id and edge-side depth.
        codec: the wire codec whose decoded activations the attacks saw.
        noise_std: std of Gaussian noise added on the device, relative to each crossing
            tensor's own std (0 = no mitigation).
        dcor: distance correlation between inputs and received activations (0 = none,
            1 = a similarity-preserving function of the input); model- and attack-free.
        accuracy: top-1 agreement of the split with the fp32 model for this codec and
            noise level (classifiers; None when not measured).
        scores: one per attack that applies to this cut.
    """

    cut: str
    depth: int
    codec: str = "raw"
    noise_std: float = Field(0.0, ge=0.0)
    dcor: float
    accuracy: float | None = None
    scores: list[AttackScore]

    def risk(self, metric: Metric) -> float | None:
        """The strongest attack's reconstruction quality (None if no attack applied)."""
        values = [v for s in self.scores if (v := s.value(metric)) is not None]
        return max(values) if values else None


class PrivacyAudit(StrictModel):
    """A privacy audit of every cut of a bundle, as recorded (and signed) in its manifest.

    Attributes:
        date: ISO 8601 UTC time the audit finished.
        metric: the reconstruction-quality scale of :meth:`CutRisk.risk`.
        data: what the attacks were trained and evaluated on (file name, sha256 prefix,
            sample count); the attacks never saw the evaluation samples in training.
        attack_train / attack_eval: samples the attacks learned from / were scored on.
        attacks: the attacks run.
        codecs: the wire codecs audited.
        settings: the effort knobs (epochs, steps, quick mode) for reproduction.
        cuts: one row per (cut, codec, noise level).
    """

    date: str
    metric: Metric
    data: str
    attack_train: int
    attack_eval: int
    attacks: list[str]
    codecs: list[str]
    settings: dict[str, Any] = Field(default_factory=dict)
    cuts: list[CutRisk]

    def rows(self, cut_id: str, codec: str | None = None,
             noise_std: float = 0.0) -> list[CutRisk]:
        """The rows of one cut at one noise level; one codec, or every codec if None."""
        return [r for r in self.cuts if r.cut == cut_id and abs(r.noise_std - noise_std) < 1e-12
                and (codec is None or r.codec == codec)]

    def risk(self, cut_id: str, codec: str | None = None,
             noise_std: float = 0.0) -> float | None:
        """Worst reconstruction quality measured for ``cut_id``.

        With ``codec`` given and audited, that codec's rows count; otherwise the worst over
        every audited codec (a codec not audited is judged by the leakiest one measured).
        None when the cut was not audited.
        """
        rows = self.rows(cut_id, codec, noise_std) if codec is not None else []
        if not rows:
            rows = self.rows(cut_id, None, noise_std)
        values = [v for r in rows if (v := r.risk(self.metric)) is not None]
        return max(values) if values else None

    def dcor(self, cut_id: str, codec: str | None = None, noise_std: float = 0.0
             ) -> float | None:
        """Worst distance correlation measured for ``cut_id`` (same codec rule as risk)."""
        rows = self.rows(cut_id, codec, noise_std) if codec is not None else []
        if not rows:
            rows = self.rows(cut_id, None, noise_std)
        return max((r.dcor for r in rows), default=None)

    @property
    def noise_levels(self) -> list[float]:
        return sorted({r.noise_std for r in self.cuts})


class PrivacyFloor(StrictModel):
    """A privacy floor: a minimum depth, a maximum audited risk, or both.

    A bare integer is today's form (``privacy_floor: 1``) and means ``min_depth``.

    Attributes:
        min_depth: cuts with fewer edge-side nodes are never used (1 keeps raw inputs
            on the device; 0 allows sending them).
        max_reconstruction: cuts whose audited reconstruction quality (SSIM for images,
            token recovery rate for text, by the strongest attack) exceeds this are never
            used. Needs an audited manifest.
        max_dcor: the same bound on the distance correlation between inputs and
            activations.
        unaudited: what a risk bound does to a bundle (or a cut) with no audit:
            ``refuse`` sends nothing (only the edge cut remains), ``depth_only`` falls
            back to ``min_depth``.
    """

    min_depth: int = Field(0, ge=0)
    max_reconstruction: float | None = Field(None, ge=0.0, le=1.0)
    max_dcor: float | None = Field(None, ge=0.0, le=1.0)
    unaudited: Literal["refuse", "depth_only"] = "refuse"

    @model_validator(mode="before")
    @classmethod
    def _from_depth(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a privacy floor is a depth (int) or a mapping, not a bool")
        if isinstance(value, int):
            return {"min_depth": value}
        return value

    @property
    def risk_stated(self) -> bool:
        return self.max_reconstruction is not None or self.max_dcor is not None

    def with_min_depth(self, depth: int) -> PrivacyFloor:
        """This floor with ``min_depth`` raised to at least ``depth`` (a config that keeps
        today's ``privacy_floor: <int>`` beside a risk bound enforces both)."""
        return self if depth <= self.min_depth else self.model_copy(update={"min_depth": depth})

    def describe(self) -> str:
        parts = [f"depth >= {self.min_depth}"] if self.min_depth else []
        if self.max_reconstruction is not None:
            parts.append(f"reconstruction <= {self.max_reconstruction:g}")
        if self.max_dcor is not None:
            parts.append(f"dcor <= {self.max_dcor:g}")
        return ", ".join(parts) or "none"


@dataclass(frozen=True, slots=True)
class CutVerdict:
    """Whether one cut may be used under a floor, and why not (for ``status``)."""

    cut: str
    allowed: bool
    reason: str
    risk: float | None = None
    dcor: float | None = None


def _judge(cut: CutSpec, audit: PrivacyAudit | None, floor: PrivacyFloor,
           codec: str | None, noise_std: float) -> CutVerdict:
    if cut.id == EDGE_CUT:
        return CutVerdict(cut.id, True, "nothing crosses")
    if cut.depth < floor.min_depth:
        return CutVerdict(cut.id, False, f"depth {cut.depth} < min_depth {floor.min_depth}")
    if not floor.risk_stated:
        return CutVerdict(cut.id, True, f"depth {cut.depth} >= min_depth {floor.min_depth}")
    risk = audit.risk(cut.id, codec, noise_std) if audit is not None else None
    dcor = audit.dcor(cut.id, codec, noise_std) if audit is not None else None
    if audit is None or (risk is None and dcor is None):
        what = "the bundle has no privacy audit" if audit is None else "cut not audited"
        if floor.unaudited == "depth_only":
            return CutVerdict(cut.id, True, f"{what}; depth {cut.depth} >= min_depth "
                                            f"{floor.min_depth}")
        return CutVerdict(cut.id, False, f"{what} and the floor bounds risk "
                                         "(run tiersplit privacy audit --record)")
    if floor.max_reconstruction is not None:
        if risk is None:
            return CutVerdict(cut.id, False, "no reconstruction attack applied to this cut",
                              risk, dcor)
        if risk > floor.max_reconstruction:
            return CutVerdict(cut.id, False, f"audited {audit.metric} {risk:.3f} > "
                                             f"max_reconstruction {floor.max_reconstruction:g}",
                              risk, dcor)
    if floor.max_dcor is not None and (dcor is None or dcor > floor.max_dcor):
        shown = "unknown" if dcor is None else f"{dcor:.3f}"
        return CutVerdict(cut.id, False, f"audited dcor {shown} > max_dcor {floor.max_dcor:g}",
                          risk, dcor)
    return CutVerdict(cut.id, True, "within the floor", risk, dcor)


def judge_cuts(manifest: Manifest, floor: PrivacyFloor | int | dict[str, Any],
               codec: str | None = None, noise_std: float = 0.0) -> dict[str, CutVerdict]:
    """A verdict per cut of ``manifest`` under ``floor`` (in manifest order).

    Args:
        manifest: the bundle's manifest; its ``privacy_audit`` (if any) supplies risks.
        floor: a :class:`PrivacyFloor`, or its config form (an int depth or a mapping).
        codec: the wire codec the sender uses (its audited rows are used when present;
            otherwise the leakiest audited codec counts).
        noise_std: the mitigation noise the sender adds (0 = none).

    The ``edge`` cut is always allowed: nothing crosses.
    """
    f = floor if isinstance(floor, PrivacyFloor) else PrivacyFloor.model_validate(floor)
    audit = getattr(manifest, "privacy_audit", None)
    return {c.id: _judge(c, audit, f, codec, noise_std) for c in manifest.cuts}


def allowed_cuts(manifest: Manifest, floor: PrivacyFloor | int | dict[str, Any],
                 codec: str | None = None, noise_std: float = 0.0) -> set[str]:
    """The cut ids that may be sent under ``floor`` (see :func:`judge_cuts`)."""
    return {cid for cid, v in judge_cuts(manifest, floor, codec, noise_std).items() if v.allowed}


def privacy_levels(audit: PrivacyAudit, cut_ids: Iterable[str], codec: str | None = None
                   ) -> list[float]:
    """The distinct audited risks of ``cut_ids``, high to low: the thresholds at which the
    set of allowed cuts changes (what a privacy-vs-latency table iterates over)."""
    risks = {r for cid in cut_ids if (r := audit.risk(cid, codec)) is not None}
    return sorted(risks, reverse=True)
