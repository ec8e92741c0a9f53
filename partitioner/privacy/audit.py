"""Run every applicable attack on every cut of a bundle, per codec and noise level.

For each cut the int8 head (what the device really runs) turns the audit samples into the
activations that cross; each codec's encode/decode round trip (per request, as on the
wire) gives what the cloud receives; optional Gaussian noise (relative to each tensor's
std) models an on-device mitigation. The attacker learns from one part of the samples and
is scored on the rest, which it never trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from contract.bundle import Bundle, CutSpec
from contract.privacy import AttackScore, CutRisk, PrivacyAudit
from partitioner import ortutil
from partitioner.privacy import attacks, metrics
from partitioner.privacy.data import AuditData
from partitioner.privacy.errors import AuditError

log = logging.getLogger(__name__)

__all__ = ["ATTACKS", "NOISE_GRID", "AuditConfig", "AuditOutcome", "audit_bundle",
           "codec_round_trip"]

ATTACKS = ("decoder", "whitebox", "nearest_embedding")
_RUN_BATCH = 64
_TUNE_SAMPLES = 16
_CALIBRATION_SAMPLES = 256
#: Relative noise levels ``--noise auto`` tries (multiples of each tensor's std).
NOISE_GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass(frozen=True)
class AuditConfig:
    """Effort and scope of an audit.

    Attributes:
        attacks: which of :data:`ATTACKS` to run (each runs where it applies).
        codecs: wire codec specs whose decoded activations are attacked.
        noise: relative noise levels to audit besides 0 (mitigation).
        noise_auto: also audit, per cut, the largest level of :data:`NOISE_GRID` that
            keeps top-1 agreement at or above ``accuracy_floor`` (classifiers).
        accuracy_floor: for ``noise_auto``; default: the bundle's own top-1 floor when
            it records one, else 0.98.
        eval_samples: samples held back for scoring (the attacker never trains on them).
        train_samples: at most this many of the rest train the decoder.
        whitebox_steps / whitebox_lr: optimiser budget of the white-box attack.
        whitebox_tv: candidate weights of its total-variation image prior; the attacker
            picks one on a few of its own training samples (it knows their inputs).
        examples: reconstructions kept per cut for the picture.
        cuts: audit only these cut ids (default: every cut that sends something).
        seed: sample split and noise.
    """

    attacks: tuple[str, ...] = ATTACKS
    codecs: tuple[str, ...] = ("raw", "int8")
    noise: tuple[float, ...] = ()
    noise_auto: bool = False
    accuracy_floor: float | None = None
    eval_samples: int = 200
    train_samples: int = 1500
    whitebox_steps: int = 300
    whitebox_lr: float = 0.05
    whitebox_tv: tuple[float, ...] = (0.001, 0.03, 0.1, 0.3)
    examples: int = 6
    cuts: tuple[str, ...] | None = None
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_settings(cls, **overrides: object) -> AuditConfig:
        """Small budget: minutes on two cores for a small bundle."""
        base: dict[str, object] = dict(eval_samples=64, train_samples=500, whitebox_steps=80,
                                       whitebox_lr=0.08, whitebox_tv=(0.003, 0.1),
                                       codecs=("raw",), quick=True)
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def settings(self) -> dict[str, object]:
        return {"eval_samples": self.eval_samples, "train_samples": self.train_samples,
                "whitebox_steps": self.whitebox_steps, "whitebox_lr": self.whitebox_lr,
                "whitebox_tv": list(self.whitebox_tv),
                "seed": self.seed, "quick": self.quick}


@dataclass
class AuditOutcome:
    """The recorded audit plus what the report draws.

    Attributes:
        audit: the manifest record.
        originals: the first evaluation samples' targets (images or embeddings).
        examples: per cut id, (attack, reconstructions) of those samples by the strongest
            attack, first codec and no noise.
        notes: attacks skipped and why.
    """

    audit: PrivacyAudit
    originals: np.ndarray
    examples: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def codec_round_trip(arrays: list[np.ndarray], spec: str) -> list[np.ndarray]:
    """What the cloud decodes after ``spec`` encodes each sample's tensors (one request
    per sample, so per-tensor scales are per request as on the wire)."""
    from transport import codecs

    parsed = codecs.parse_spec(spec)
    out = []
    for a in arrays:
        s = parsed.for_array(a.dtype, a.ndim)
        if s.base == "raw":
            out.append(a)
            continue
        rows = []
        for i in range(len(a)):
            one = np.ascontiguousarray(a[i:i + 1])
            payload, params = codecs.quantize(one, s.base)
            rows.append(codecs.dequantize(memoryview(bytes(payload)), one.shape, s.base, params))
        out.append(np.concatenate(rows, axis=0))
    return out


def _run(session, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    n = len(next(iter(feeds.values())))
    wanted = {i.name for i in session.get_inputs()}
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, n, _RUN_BATCH):
        batch = {k: v[start:start + _RUN_BATCH] for k, v in feeds.items() if k in wanted}
        for j, arr in enumerate(session.run(names, batch)):
            parts[j].append(arr)
    return [np.concatenate(p, axis=0) for p in parts]


class _Auditor:
    def __init__(self, bundle: Bundle, data: AuditData, config: AuditConfig,
                 head_program: Callable[[Path], attacks.HeadProgram] | None) -> None:
        self.b, self.m, self.data, self.cfg = bundle, bundle.manifest, data, config
        self.head_program = head_program
        n = data.samples
        n_eval = min(config.eval_samples, n // 3)
        if n_eval < 8:
            raise AuditError(f"{n} samples leave too few to evaluate the attacks on")
        order = np.random.default_rng(config.seed).permutation(n)
        self.eval_idx = np.sort(order[:n_eval])
        self.train_idx = np.sort(order[n_eval:n_eval + config.train_samples])
        self.lo, self.hi = float(data.target.min()), float(data.target.max())
        self.classify = self.m.task == "classification"
        # Noise is calibrated on the attacker-training side, never on the scored samples.
        self.tune_idx = self.train_idx[:_CALIBRATION_SAMPLES]
        self.reference: dict[str, np.ndarray] = {}
        if self.classify:
            full = ortutil.session(bundle.file(self.m.full_fp32))
            for which, idx in (("eval", self.eval_idx), ("tune", self.tune_idx)):
                out = _run(full, self.data.subset(idx).feeds, [self.m.outputs[0].name])[0]
                self.reference[which] = out.argmax(axis=-1)
        self.notes: list[str] = []

    def activations(self, cut: CutSpec) -> list[np.ndarray]:
        names = [t.name for t in cut.tensors]
        if cut.is_cloud:
            return [self.data.feeds[n] for n in names]
        assert cut.head is not None
        return _run(ortutil.session(self.b.file(cut.head)), self.data.feeds, names)

    def accuracy(self, cut: CutSpec, received: list[np.ndarray], which: str = "eval",
                 ) -> float | None:
        """Top-1 agreement with the fp32 model of the tail run on ``received`` (the rows
        of the ``eval`` or ``tune`` samples)."""
        if which not in self.reference or cut.tail is None:
            return None
        tail = ortutil.session(self.b.file(cut.tail))
        feeds = {t.name: a for t, a in zip(cut.tensors, received, strict=True)}
        got = _run(tail, feeds, [self.m.outputs[0].name])[0].argmax(axis=-1)
        return float((got == self.reference[which]).mean())

    def calibrate(self, cut: CutSpec, received: list[np.ndarray], floor: float) -> float:
        """The largest noise level of :data:`NOISE_GRID` whose top-1 agreement stays at or
        above ``floor`` (0 when even the smallest breaks it)."""
        best = 0.0
        for level in NOISE_GRID:
            noisy = self.noisy([r[self.tune_idx] for r in received], level, salt=7919)
            acc = self.accuracy(cut, noisy, "tune")
            if acc is None or acc < floor:
                break
            best = level
        return best

    def noisy(self, arrays: list[np.ndarray], level: float, salt: int) -> list[np.ndarray]:
        if level <= 0:
            return arrays
        rng = np.random.default_rng(self.cfg.seed + 1000 + salt)
        out = []
        for a in arrays:
            if a.dtype.kind != "f":
                out.append(a)
                continue
            sd = float(a.std()) or 1.0
            out.append((a + rng.standard_normal(a.shape).astype(np.float32) * level * sd)
                       .astype(np.float32))
        return out

    def score(self, rec_target: np.ndarray | None, tokens: np.ndarray | None,
              attack: str) -> AttackScore:
        d = self.data
        truth = d.target[self.eval_idx]
        if d.modality == "image":
            assert rec_target is not None
            return AttackScore(attack=attack,
                               ssim=float(metrics.ssim(truth, rec_target, d.data_range).mean()),
                               psnr=float(metrics.psnr(truth, rec_target, d.data_range).mean()))
        assert d.tokens is not None and d.embedding is not None
        if tokens is None:
            assert rec_target is not None
            tokens = attacks.nearest_tokens(rec_target, d.embedding)
        return AttackScore(attack=attack,
                           token_recovery=metrics.token_recovery(d.tokens[self.eval_idx], tokens))

    def attack(self, cut: CutSpec, received: list[np.ndarray]
               ) -> tuple[list[AttackScore], dict[str, np.ndarray]]:
        d, cfg = self.data, self.cfg
        tr = [a[self.train_idx] for a in received]
        ev = [a[self.eval_idx] for a in received]
        scores: list[AttackScore] = []
        recs: dict[str, np.ndarray] = {}
        seq = d.tokens.shape[1] if d.tokens is not None else None
        if "decoder" in cfg.attacks:
            rec, choice = attacks.decoder_attack(tr, d.target[self.train_idx], ev, seq=seq,
                                                 lo=self.lo, hi=self.hi)
            log.debug("cut %s decoder: %s", cut.id, choice)
            scores.append(self.score(rec, None, "decoder"))
            recs["decoder"] = rec
        if "whitebox" in cfg.attacks:
            program = self._program(cut)
            if cut.is_cloud and self.data.differentiable:
                # nothing to invert: the input itself crosses, as the cloud received it
                at = [t.name for t in cut.tensors].index(d.input_name)
                rec = np.clip(ev[at].astype(np.float32), self.lo, self.hi)
                scores.append(self.score(rec, None, "whitebox"))
                recs["whitebox"] = rec
            elif program is not None:
                rec = self._whitebox(cut, program, tr, ev)
                scores.append(self.score(rec, None, "whitebox"))
                recs["whitebox"] = rec
        if "nearest_embedding" in cfg.attacks and d.modality == "tokens":
            assert d.tokens is not None and d.embedding is not None
            tok = attacks.nearest_embedding_attack(tr, d.tokens[self.train_idx], ev, d.embedding)
            if tok is not None:
                scores.append(self.score(None, tok, "nearest_embedding"))
        return scores, recs

    def _whitebox(self, cut: CutSpec, program: attacks.HeadProgram, tr: list[np.ndarray],
                  ev: list[np.ndarray]) -> np.ndarray:
        d, cfg = self.data, self.cfg
        image = d.modality == "image"
        init = d.target[self.train_idx].mean(axis=0)
        names = [t.name for t in cut.tensors]
        others = {k: v for k, v in d.feeds.items() if k != d.input_name}

        def run(received: list[np.ndarray], tv: float, idx: np.ndarray) -> np.ndarray:
            extra = {k: v[idx] for k, v in others.items()}
            return attacks.whitebox_attack(
                program, d.input_name, names, [r.astype(np.float32) for r in received], init,
                lo=self.lo, hi=self.hi, steps=cfg.whitebox_steps, lr=cfg.whitebox_lr,
                image=image, tv_weight=tv, extra=extra)

        tv = cfg.whitebox_tv[0] if cfg.whitebox_tv else 0.0
        if image and len(cfg.whitebox_tv) > 1:
            # The attacker tunes its prior on samples whose inputs it knows.
            k = min(_TUNE_SAMPLES, len(tr[0]))
            truth = d.target[self.train_idx][:k]
            tv = max(cfg.whitebox_tv, key=lambda w: float(metrics.ssim(
                truth, run([t[:k] for t in tr], w, self.train_idx[:k]), d.data_range).mean()))
            log.debug("cut %s white-box TV weight %g", cut.id, tv)
        return run(ev, tv, self.eval_idx)

    def _program(self, cut: CutSpec) -> attacks.HeadProgram | None:
        if not self.data.differentiable:
            self._note("whitebox skipped: the model's input is token ids (not differentiable)")
            return None
        if cut.is_cloud:
            return None
        if self.head_program is None:
            self._note("whitebox skipped: no differentiable head program was supplied")
            return None
        path = self.b.file(cut.head_fp32) if cut.head_fp32 else None
        if path is None:
            self._note(f"whitebox skipped on {cut.id}: the bundle has no fp32 head")
            return None
        return self.head_program(path)

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            log.warning("%s", text)


def audit_bundle(bundle: Bundle, data: AuditData, config: AuditConfig | None = None, *,
                 head_program: Callable[[Path], attacks.HeadProgram] | None = None,
                 progress: bool = True,
                 on_row: Callable[[CutRisk], None] | None = None) -> AuditOutcome:
    """Audit every cut of ``bundle`` that sends something.

    Args:
        bundle: a loaded bundle (heads, tails and the fp32 full model are read).
        data: samples from :func:`partitioner.privacy.data.load_audit_data`.
        config: effort and scope (default: full effort, codecs raw and int8).
        head_program: builds a differentiable torch program from an fp32 head ONNX file
            (the white-box attack is skipped without it).
        progress: a rich progress bar on stderr.
        on_row: called with each finished row (the CLI prints them live).

    Raises:
        AuditError: unknown attack or cut id, too few samples.
    """
    cfg = config or AuditConfig()
    bad = [a for a in cfg.attacks if a not in ATTACKS]
    if bad:
        raise AuditError(f"unknown attack(s) {bad}; known: {', '.join(ATTACKS)}")
    from transport import codecs
    from transport.errors import CodecError

    for spec in cfg.codecs:
        try:
            codecs.parse_spec(spec)
        except CodecError as e:
            raise AuditError(str(e)) from e
    m = bundle.manifest
    cuts = [c for c in m.cuts if not c.is_edge]
    if cfg.cuts is not None:
        unknown = sorted(set(cfg.cuts) - set(m.cut_ids))
        if unknown:
            raise AuditError(f"unknown cut id(s) {unknown}; the bundle has {m.cut_ids}")
        cuts = [c for c in cuts if c.id in cfg.cuts]
    auditor = _Auditor(bundle, data, cfg, head_program)
    levels = [0.0, *sorted({float(x) for x in cfg.noise if x > 0})]
    floor = _accuracy_floor(bundle, cfg, auditor)
    settings = cfg.settings()
    calibrated: dict[str, float] = {}
    outcome_rows: list[CutRisk] = []
    examples: dict[str, tuple[str, np.ndarray]] = {}
    total = len(cuts) * len(cfg.codecs) * (len(levels) + int(cfg.noise_auto))
    with _Progress(progress, total) as tick:
        for cut in cuts:
            acts = auditor.activations(cut)
            cut_levels = levels
            if floor is not None:
                calibrated[cut.id] = auditor.calibrate(
                    cut, codec_round_trip(acts, cfg.codecs[0]), floor)
                cut_levels = sorted({*levels, calibrated[cut.id]})
            for ci, codec in enumerate(cfg.codecs):
                received_codec = codec_round_trip(acts, codec)
                for li, level in enumerate(cut_levels):
                    tick(f"{cut.id} {codec}" + (f" noise {level:g}" if level else ""))
                    received = auditor.noisy(received_codec, level, salt=ci * 100 + li)
                    scores, recs = auditor.attack(cut, received)
                    dcor = metrics.distance_correlation(
                        data.target[auditor.eval_idx],
                        np.concatenate([r[auditor.eval_idx].reshape(len(auditor.eval_idx), -1)
                                        .astype(np.float32) for r in received], axis=1))
                    row = CutRisk(cut=cut.id, depth=cut.depth, codec=codec, noise_std=level,
                                  dcor=dcor, scores=scores,
                                  accuracy=auditor.accuracy(
                                      cut, [r[auditor.eval_idx] for r in received]))
                    outcome_rows.append(row)
                    if on_row is not None:
                        on_row(row)
                    if ci == 0 and level == 0 and recs:
                        metric = "ssim" if data.modality == "image" else "token_recovery"
                        best = max((s for s in scores if s.attack in recs),
                                   key=lambda s: s.value(metric) or 0.0)  # type: ignore[arg-type]
                        examples[cut.id] = (best.attack,
                                            recs[best.attack][:cfg.examples])
    if floor is not None:
        settings.update(accuracy_floor=floor, noise_calibrated=calibrated)
    audit = PrivacyAudit(
        date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        metric="ssim" if data.modality == "image" else "token_recovery",
        data=data.description, attack_train=len(auditor.train_idx),
        attack_eval=len(auditor.eval_idx),
        attacks=[a for a in cfg.attacks if any(s.attack == a for r in outcome_rows
                                                for s in r.scores)],
        codecs=list(cfg.codecs), settings=settings, cuts=outcome_rows)
    return AuditOutcome(audit, data.target[auditor.eval_idx][:cfg.examples], examples,
                        auditor.notes)


def _accuracy_floor(bundle: Bundle, cfg: AuditConfig, auditor: _Auditor) -> float | None:
    if not cfg.noise_auto:
        return None
    if not auditor.reference:
        raise AuditError("--noise auto calibrates against top-1 agreement: it needs a "
                         "classification bundle; give explicit --noise levels instead")
    if cfg.accuracy_floor is not None:
        return cfg.accuracy_floor
    own = getattr(bundle.manifest.quantization, "top1_floor", None)
    return float(own) if own else 0.98


class _Progress:
    """A rich progress bar on stderr (or nothing), ticked once per audited row."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self.bar = None
        self.task = None

    def __enter__(self) -> Callable[[str], None]:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("audit {task.description:<24}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"),
                                TimeElapsedColumn(), console=Console(stderr=True),
                                transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total)
        started = [False]

        def tick(desc: str) -> None:
            if self.bar is not None:
                self.bar.update(self.task, description=desc,
                                advance=1 if started[0] else 0)
            started[0] = True
        return tick

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.total)
            self.bar.stop()
