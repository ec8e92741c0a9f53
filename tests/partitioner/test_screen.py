"""The held-back screen rejects a candidate early only when the whole set provably misses
the floor, and otherwise yields exactly the figures of a full evaluation."""

from __future__ import annotations

import numpy as np

from partitioner.screen import Screen, rejected
from partitioner.split import compare


def _data(n: int = 64, classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, classes)).astype(np.float32)
    return {"x": x}, [x * 2.0]  # the "model" doubles its input: reference = 2x


def _screen(feeds, ref, **kw) -> Screen:
    args = dict(classification=True, cosine_floor=0.99, top1_floor=0.99, batch=16, first=8)
    args.update(kw)
    return Screen(feeds, ref, **args)


def test_a_clear_miss_stops_after_the_first_chunk() -> None:
    feeds, ref = _data()
    calls: list[int] = []

    def bad(f):
        calls.append(len(f["x"]))
        return [-f["x"]]  # cosine -1 everywhere

    _outs, partial = _screen(feeds, ref).run(bad)
    assert calls == [8]
    assert partial is not None and partial.samples == 8 and partial.cosine < 0
    assert rejected(partial, 64, 0.99, 0.99)


def test_a_passing_candidate_gets_the_full_set_figures() -> None:
    feeds, ref = _data()
    calls: list[int] = []

    def good(f):
        calls.append(len(f["x"]))
        return [f["x"] * 2.0 + 1e-4]

    outs, partial = _screen(feeds, ref).run(good)
    assert partial is None and sum(calls) == 64 and calls[0] == 8
    full = compare(ref, [feeds["x"] * 2.0 + 1e-4], True)
    assert compare(ref, outs, True) == full


def test_one_flipped_argmax_rejects_under_a_strict_top1_floor() -> None:
    feeds, ref = _data()

    def one_flip(f):
        out = f["x"] * 2.0
        if len(out) == 8:  # the screening chunk: flip sample 0's winner
            out = out.copy()
            out[0] = -out[0]
        return [out]

    _outs, partial = _screen(feeds, ref, cosine_floor=0.0).run(one_flip)
    # 63/64 < 0.99: no remaining sample can rescue the top-1 agreement
    assert partial is not None and partial.top1_agreement == 7 / 8
    _outs, partial = _screen(feeds, ref, cosine_floor=0.0, top1_floor=0.98).run(one_flip)
    assert partial is None  # 63/64 >= 0.98 is still reachable: evaluated in full


def test_a_rejection_is_a_proof_never_a_guess() -> None:
    rng = np.random.default_rng(3)
    feeds, ref = _data(n=40)
    seen = 0
    for trial in range(40):
        scale, floor = float(rng.uniform(0, 4)), float(rng.uniform(0.5, 0.999))

        def model(f, s=scale):  # error that differs from sample to sample
            x = f["x"]
            return [x * 2.0 + s * np.sin(50 * x) * np.abs(x[:, :1])]

        _got, partial = _screen(feeds, ref, cosine_floor=floor, top1_floor=None,
                                classification=False, batch=8).run(model)
        full = compare(ref, model(feeds), False)
        if partial is not None:
            seen += 1
            assert full.cosine < floor, (trial, full.cosine, floor)
    assert seen > 0  # the property was exercised


def test_disabled_screen_runs_everything() -> None:
    feeds, ref = _data()
    calls: list[int] = []

    def bad(f):
        calls.append(len(f["x"]))
        return [-f["x"]]

    outs, partial = _screen(feeds, ref, enabled=False).run(bad)
    assert partial is None and sum(calls) == 64 and len(outs[0]) == 64
