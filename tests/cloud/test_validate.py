"""Validation at the cut: dynamic dimensions, fixed ones, and batching by sample shape.

Requests whose non-batch dimensions differ (text of 8 vs 32 tokens for one cut) are all
valid when the manifest declares that dimension dynamic, and must never share a batch:
the batcher only concatenates along the batch dimension.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from cloud_core import CloudCore
from cloud_core.batcher import Batcher, Entry
from cloud_core.errors import CutNotFound, DeadlineExceeded, InvalidInput
from cloud_core.validate import Target, Validated, check_request, is_dynamic, resolve_target
from contract.bundle import CutSpec, TensorSpec
from contract.deadline import Deadline

from .conftest import make_request


@pytest.fixture
def core(core_factory: Callable[..., CloudCore]) -> CloudCore:
    return core_factory()


def _target(core: CloudCore, *specs: TensorSpec) -> Target:
    """A real loaded version and backend, with a cut whose crossing tensors are ``specs``
    (as a manifest of a sequence model would declare them)."""
    lv = core.repository.active("mlp")
    assert lv is not None
    base = lv.cut("h1")
    cut = CutSpec.model_construct(**{**dict(base), "tensors": list(specs)})
    return Target(version=lv, cut=cut, backend=lv.tails["h1"])


def _tokens(core: CloudCore, n: int, seq: int, **over: Any):  # type: ignore[no-untyped-def]
    ids = np.ones((n, seq), np.int64)
    return make_request(core.repository.active("mlp"), "h1",
                        {"input_ids": ids, "attention_mask": ids.copy()}, **over)


def _check(req, target: Target) -> Validated:  # type: ignore[no-untyped-def]
    return check_request(req, target, max_request_bytes=1 << 20, max_batch=8)


def _specs(dyn: Any) -> list[TensorSpec]:
    """A sequence model's inputs with the sequence axis dynamic: as the manifest writes
    it (``dynamic: [1]``, the shape holding the length seen at partition time), or as a
    ``None``/named/negative shape entry."""
    if dyn == "listed":
        return [TensorSpec(name=n, shape=[-1, 16], dtype="int64", dynamic=[1])
                for n in ("input_ids", "attention_mask")]
    assert is_dynamic(dyn)
    return [TensorSpec.model_construct(name=n, shape=[-1, dyn], dtype="int64", dynamic=[])
            for n in ("input_ids", "attention_mask")]


@pytest.mark.parametrize("dyn", ["listed", -1, None, "seq"])
def test_dynamic_dims_accept_any_size(core: CloudCore, dyn: Any) -> None:
    target = _target(core, *_specs(dyn))
    shapes = {_check(_tokens(core, 2, seq), target).sample_shapes for seq in (8, 32, 1)}
    assert shapes == {((8,), (8,)), ((32,), (32,)), ((1,), (1,))}


def test_fixed_dims_still_refused_with_expected_and_actual(core: CloudCore) -> None:
    specs = [TensorSpec.model_construct(name="input_ids", shape=[-1, "seq", 4], dtype="int64",
                                        dynamic=[])]
    target = _target(core, *specs)
    ok = make_request(core.repository.active("mlp"), "h1",
                      {"input_ids": np.zeros((3, 17, 4), np.int64)})
    assert _check(ok, target).sample_shapes == ((17, 4),)
    bad = make_request(core.repository.active("mlp"), "h1",
                       {"input_ids": np.zeros((3, 17, 5), np.int64)})
    with pytest.raises(InvalidInput, match=r"dimension 2 is fixed at 4, got 5 \(expected "
                                           r"shape \[N, seq, 4\], got \[3, 17, 5\]\)"):
        _check(bad, target)
    listed = _target(core, TensorSpec(name="input_ids", shape=[-1, 16, 4], dtype="int64",
                                      dynamic=[1]))
    assert _check(ok, listed).sample_shapes == ((17, 4),)
    with pytest.raises(InvalidInput, match=r"dimension 2 is fixed at 4, got 5 \(expected "
                                           r"shape \[N, \?, 4\], got \[3, 17, 5\]\)"):
        _check(bad, listed)
    rank = make_request(core.repository.active("mlp"), "h1",
                        {"input_ids": np.zeros((3, 17), np.int64)})
    with pytest.raises(InvalidInput, match=r"expected shape \[N, seq, 4\] \(rank 3\), "
                                           r"got \[3, 17\]"):
        _check(rank, target)


def test_deadline_is_checked_on_the_monotonic_clock(core: CloudCore) -> None:
    lv = core.repository.active("mlp")
    x = {"h1": np.ones((1, 32), np.float32)}
    target = resolve_target(make_request(lv, "h1", x), core.repository)
    late = make_request(lv, "h1", x, deadline=Deadline.after_ms(-5))
    with pytest.raises(DeadlineExceeded, match="already passed"):
        _check(late, target)
    # ``now`` is a point on the same monotonic clock as the deadline, nothing else.
    req = make_request(lv, "h1", x, deadline=Deadline(100.0))
    limits = {"max_request_bytes": 1 << 20, "max_batch": 8}
    assert check_request(req, target, now=99.9, **limits).items == 1
    with pytest.raises(DeadlineExceeded, match=r"passed 50\.0 ms before"):
        check_request(req, target, now=100.05, **limits)


def test_cut_id_checked_once_where_the_request_enters(core: CloudCore) -> None:
    lv = core.repository.active("mlp")
    x = {"h1": np.ones((1, 32), np.float32)}
    with pytest.raises(CutNotFound, match="runs entirely on the edge"):
        resolve_target(make_request(lv, "edge", x), core.repository)
    with pytest.raises(CutNotFound, match="has no cut 'nope'"):
        resolve_target(make_request(lv, "nope", x), core.repository)
    target = resolve_target(make_request(lv, "h1", x), core.repository)
    assert target.cut.id == "h1" and target.backend is lv.tails["h1"]


def test_batch_key_includes_the_sample_shape(core: CloudCore) -> None:
    target = _target(core, *_specs("listed"))
    short, long_, short2 = (_check(_tokens(core, 1, s), target) for s in (8, 32, 8))
    assert short.batch_key != long_.batch_key
    assert short.batch_key == short2.batch_key
    assert short.batch_key[:3] == (target.version.name, target.version.version, "h1")


def test_batcher_never_mixes_sample_shapes(core: CloudCore) -> None:
    """A real batcher fed requests of two sequence lengths for one cut, queued while its
    only worker is busy: every batch it forms holds one sequence length."""
    target = _target(core, *_specs("listed"))
    batches: list[list[int]] = []
    gate, done = threading.Event(), threading.Event()
    lock = threading.Lock()

    def execute(key: Any, batch: list[Entry]) -> None:
        gate.wait(30)
        with lock:
            batches.append([e.payload.sample_shapes[0][0] for e in batch])
            if sum(len(b) for b in batches) == 13:
                done.set()

    batcher = Batcher(max_batch=16, max_delay_s=0.05, max_queue=64, workers=1,
                      execute=execute, on_expired=lambda e: None,
                      on_failed=lambda e, err: None)
    try:
        first = _check(_tokens(core, 1, 4), target)
        batcher.submit(first.batch_key, Entry(1, Deadline.after_ms(60e3), first))
        for i in range(12):  # queued behind the held batch, interleaved lengths
            v = _check(_tokens(core, 1, 8 if i % 2 else 32), target)
            batcher.submit(v.batch_key, Entry(1, Deadline.after_ms(60e3), v))
        gate.set()
        assert done.wait(60), batches
    finally:
        batcher.stop(5)
    assert all(len(set(b)) == 1 for b in batches), batches
    assert sorted(x for b in batches for x in b) == [4] + [8] * 6 + [32] * 6
    assert any(len(b) > 1 for b in batches)  # it did batch, per length
