"""Wire codecs per cut, recorded in the manifest: bytes and the accuracy each keeps.

Accuracy claims are checked on the trained digits CNN (held-out digits) by re-running
each cut through the real wire encoder and decoder; the zoo CNNs (random weights) are
used for bytes only, where their figures mean something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from contract.bundle import Bundle, CutCodec
from contract.deadline import Deadline
from partitioner import ortutil, zoo
from partitioner.codec_accuracy import CANDIDATES, best_codec, measure_codecs, roundtrip
from partitioner.recipes import Floor
from partitioner.split import compare
from tiersplit.cli import app
from transport import codecs, wire
from transport.messages import Reply, Request, Status


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, str]:
    """The digits CNN partitioned through the CLI without device tails (codecs only)."""
    out = tmp_path_factory.mktemp("codecs")
    result = CliRunner().invoke(app, ["partition", "zoo:digits_cnn", "--out", str(out),
                                      "--no-device-tails"])
    assert result.exit_code == 0, result.output
    return Bundle.load(out / "digits_cnn" / "1", require_signature=False), result.output


def _interior(b: Bundle):
    return [c for c in b.manifest.cuts if c.head and c.tail and not c.is_cloud]


def _through_wire(tensors: dict[str, np.ndarray], codec: str) -> tuple[dict, int]:
    """One sample's tensors encoded and decoded by the real wire; the bytes it spends on
    them beyond an fp32 message's header (tensor frames + the longer header entries)."""
    req = Request("r", "a", "m", "1", "0" * 64, "k", Deadline.after_ms(1000), tensors,
                  codec=codec)
    frames = wire.encode(req)
    back = wire.decode([bytes(f) for f in frames])
    # Replies carry no request-level codec or budget: their header difference is the
    # tensors' own entries.
    extra = len(wire.encode(Reply("r", Status.OK, "", tensors), codec=codec)[0]) - len(
        wire.encode(Reply("r", Status.OK, "", tensors))[0])
    return back.tensors, sum(len(f) for f in frames[1:]) + extra


def test_report_and_manifest_list_every_candidate_per_cut(digits) -> None:
    b, output = digits
    text = " ".join(output.split())
    assert "best codec ≤floor: ratio" in text
    cuts = _interior(b)
    assert cuts
    for c in cuts:
        assert c.device_tail is None  # --no-device-tails
        assert [k.codec for k in c.codecs] == list(CANDIDATES)
        raw = c.codecs[0]
        assert raw.ratio == 1.0 and raw.meets_floor and raw.top1 is not None
        best = best_codec(c)
        assert best is not None and best.ratio < 0.5
        assert f"{best.codec}: {best.ratio:.3f}x" in text
        assert all(k.encode_ms >= 0 for k in c.codecs)


def test_floor_claims_hold_through_the_real_wire(digits) -> None:
    """Each recorded figure is reproduced by the real wire encoder/decoder, sample by
    sample, on the held-out digits; ``meets_floor`` agrees with the bundle's floor."""
    b, _ = digits
    m = b.manifest
    x, _y = zoo.get("digits_cnn").heldout()
    feeds = {m.inputs[0].name: x.astype(np.float32)}
    ref = ortutil.session(b.file(m.full_fp32)).run(None, feeds)
    floor = Floor(cosine=m.quantization.accuracy_floor, top1=m.quantization.top1_floor)
    for c in _interior(b):
        head, tail = ortutil.session(b.file(c.head)), ortutil.session(b.file(c.tail))
        names = [o.name for o in head.get_outputs()]
        mids = dict(zip(names, head.run(names, feeds), strict=True))
        raw_bytes = sum(v[:1].nbytes for v in mids.values())
        for k in c.codecs:
            parts, ratios = [], []
            for i in range(len(x)):
                back, size = _through_wire({n: v[i:i + 1] for n, v in mids.items()}, k.codec)
                parts.append(back)
                ratios.append(size / raw_bytes)
            joined = {n: np.concatenate([p[n] for p in parts]) for n in names}
            got = tail.run(None, {i.name: joined[i.name] for i in tail.get_inputs()})
            cmp = compare(ref, got, classification=True)
            assert k.top1 == pytest.approx(cmp.top1_agreement), (c.id, k)
            assert k.ratio == pytest.approx(np.mean(ratios), rel=1e-3), (c.id, k)
            assert k.meets_floor == floor.met(cmp, None, True), (c.id, k, cmp)
            if k.meets_floor:
                assert cmp.cosine >= 0.99 and cmp.top1_agreement >= 0.99, (c.id, k)


def test_roundtrip_is_the_wire_codec() -> None:
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((1, 8, 5, 5)).astype(np.float32),
               "mask": rng.integers(0, 2, (1, 7)).astype(np.int64)}
    for text in CANDIDATES:
        spec = codecs.parse_spec(text)
        via_wire, wire_bytes = _through_wire(tensors, text)
        ours = {n: roundtrip(v, spec) for n, v in tensors.items()}
        assert sum(size for _, size in ours.values()) == wire_bytes, text
        for n, (back, _) in ours.items():
            np.testing.assert_array_equal(back, via_wire[n])
        np.testing.assert_array_equal(ours["mask"][0], tensors["mask"])  # ints stay exact


@pytest.mark.parametrize("name", ["resnet_like", "mobilenet_like"])
def test_zoo_cnn_bytes_per_codec(name: str, tmp_path: Path) -> None:
    """Random-weight CNNs: bytes only (their accuracy says nothing about quantization)."""
    from partitioner import partition

    path = partition(f"zoo:{name}", None, tmp_path, max_cuts=5, progress=False,
                     device_tails=False)
    b = Bundle.load(path, require_signature=False)
    cuts = _interior(b)
    maps = [c for c in cuts if all(len(t.shape) == 4 for t in c.tensors)]
    assert maps, [[t.shape for t in c.tensors] for c in cuts]  # conv feature maps cross
    for c in cuts:
        ratio = {k.codec: k.ratio for k in c.codecs}
        assert ratio["raw"] == 1.0
        assert ratio["fp16+lz4"] <= 0.51 and ratio["int8+lz4"] < ratio["fp16+lz4"], ratio
    for c in maps:  # per-channel levels pay off where a channel holds a whole map
        ratio = {k.codec: k.ratio for k in c.codecs}
        # int8's (scale, low) in the header weigh on a pooled vector, not on a map
        assert ratio["int8+lz4"] <= 0.26, ratio
        assert ratio["int2c+zstd"] < ratio["int4c+zstd"] < ratio["int8c+zstd"], ratio
        assert ratio["int4c+zstd"] < ratio["int8+lz4"], ratio
        # measured directly on other inputs: 4-bit still below the recorded 8-bit
        x = {b.manifest.inputs[0].name: zoo.get(name).example_inputs(4, 1)[0]}
        ref = ortutil.session(b.file(b.manifest.full_fp32)).run(None, x)
        again = measure_codecs(onnx.load(str(b.file(c.head))),
                               onnx.load(str(b.file(c.tail))), x, ref, Floor(), True,
                               candidates=["int4c+zstd"])
        assert isinstance(again[0], CutCodec) and again[0].ratio < ratio["int8c+zstd"]
