"""The core in process, without sockets: one suite over every backend, then
validation, back-pressure, deadlines, versions and draining on the default backend.

Requests enter through ``CloudCore.on_request`` exactly as a link delivers them; replies
come back through a real Responder (:class:`Inbox`)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cloud_core import CloudCore
from tests.cloud.conftest import (
    TRITON_SERVED,
    Inbox,
    make_request,
    metric,
    queue_behind_a_batch,
    wait_busy,
)
from tiersplit.devtools import bundles as test_bundles
from transport.messages import Status

BACKENDS = ["onnxruntime", "torch", "triton"]


@pytest.fixture(params=BACKENDS)
def backend_core(request, core_factory, cloud_repo):
    """A core on each backend (triton: a real PyTriton server, or skip with the reason)."""
    kind = request.param
    over: dict = {"backend": {"kind": kind, "device": "cpu"}}
    if kind == "triton":
        server = request.getfixturevalue("triton_server")
        over["backend"] = {"kind": "triton", "triton_url": server.grpc_url}
        over["models"] = [{"name": n, "versions": [v]} for n, v in TRITON_SERVED]
    return core_factory(**over)


def _tolerance(cut) -> float:
    # The manifest's measured int8 error on its own samples, with margin for other inputs.
    return max(4 * cut.accuracy.max_abs, 1e-3)


def test_outputs_equal_reference_on_every_cut(backend_core: CloudCore) -> None:
    """Every loaded version and cloud cut: output == fp32 tail on the int8 head's output,
    and within the manifest's int8 tolerance of the fp32 full model."""
    inbox = Inbox()
    rng = np.random.default_rng(11)
    checks = []
    for lv in backend_core.repository.all_loaded():
        for cut_id in lv.tails:
            x = test_bundles.sample(lv.bundle.manifest.inputs[0], 3, rng)
            crossing, tail, full = test_bundles.reference(lv.bundle, cut_id, x)
            req = make_request(lv, cut_id, crossing)
            backend_core.on_request(req, inbox)
            checks.append((req.request_id, lv, cut_id, tail, full))
    # mlp v1 + v2 (cloud, h1, h2) and cnn (cloud, c1, p1); triton: mlp v2 and cnn
    assert len(checks) == 3 * len(backend_core.repository.all_loaded())
    assert len(checks) >= 6
    replies = inbox.wait([c[0] for c in checks])
    for reply, (_, lv, cut_id, tail, full) in zip(replies, checks, strict=True):
        assert reply.status == Status.OK, (lv.name, lv.version, cut_id, reply.error)
        y = reply.tensors["y"]
        assert y.shape == (3, 10)
        np.testing.assert_allclose(y, tail, rtol=1e-4, atol=1e-5)
        assert np.abs(y - full).max() <= _tolerance(lv.cut(cut_id))
        assert reply.compute_ms > 0 and reply.queue_ms >= 0


def test_concurrent_requests_are_batched_and_split_back(backend_core: CloudCore,
                                                        cloud_repo) -> None:
    """Many senders at once: batches form (mean batch > 1) and each request gets exactly
    its own rows back."""
    lv = backend_core.repository.active("mlp")
    inbox = Inbox()
    rng = np.random.default_rng(5)
    sent = []
    for i in range(24):
        x = test_bundles.sample(lv.bundle.manifest.inputs[0], 1 + i % 2, rng)
        crossing, tail, _ = test_bundles.reference(lv.bundle, "h1", x)
        sent.append((make_request(lv, "h1", crossing), tail))
    barrier = threading.Barrier(4)

    def sender(part):
        barrier.wait()
        for req, _ in part:
            backend_core.on_request(req, inbox)

    threads = [threading.Thread(target=sender, args=(sent[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    replies = inbox.wait([r.request_id for r, _ in sent])
    for reply, (_req, tail) in zip(replies, sent, strict=True):
        assert reply.status == Status.OK, reply.error
        np.testing.assert_allclose(reply.tensors["y"], tail, rtol=1e-4, atol=1e-5)
    reg = backend_core.metrics.registry
    batches = reg.get_sample_value("tiersplit_cloud_batch_size_count")
    samples = reg.get_sample_value("tiersplit_cloud_batch_size_sum")
    assert samples == sum(r.tensors["h1"].shape[0] for r, _ in sent)
    assert batches < len(sent), "no request was batched with another"


class TestInvalidRequests:
    """Each invalid request gets its status and a message, is counted, and costs no compute."""

    @pytest.fixture
    def core(self, core_factory):
        return core_factory(limits={"max_request_bytes": 4096})

    def _x(self, lv, n=2, cut="h1"):
        spec = lv.cut(cut).tensors[0]
        return {spec.name: np.zeros((n, *spec.sample_shape), np.float32)}

    def test_each_error_answered_and_counted(self, core: CloudCore) -> None:
        v1 = core.repository.resolve("mlp", "1", _digest(core, "mlp", "1"))
        other = "0" * 64
        cases = [
            (make_request(v1, "h1", self._x(v1), digest=other),
             Status.VERSION_MISMATCH, "version_mismatch", "versions loaded: 1"),
            (make_request(v1, "h1", self._x(v1), model="nope"),
             Status.MODEL_NOT_FOUND, "model_not_found", "not loaded"),
            (make_request(v1, "k9", self._x(v1)), Status.CUT_NOT_FOUND, "cut_not_found", "k9"),
            (make_request(v1, "edge", {}), Status.CUT_NOT_FOUND, "cut_not_found", "edge"),
            (make_request(v1, "h1", {"h1": np.zeros((2, 31), np.float32)}),
             Status.INVALID_INPUT, "shape", "expected shape [N, 32], got [2, 31]"),
            (make_request(v1, "h1", {"h1": np.zeros((2, 32), np.float64)}),
             Status.INVALID_INPUT, "dtype", "expected dtype float32, got float64"),
            (make_request(v1, "h1", {"h2": np.zeros((2, 32), np.float32)}),
             Status.INVALID_INPUT, "names", "missing ['h1']"),
            (make_request(v1, "h1", {"h1": np.zeros((40, 32), np.float32)}),
             Status.INVALID_INPUT, "oversize", "over the limit of 4096"),
            (make_request(v1, "h1", {"h1": np.zeros((9, 32), np.float32)}),
             Status.INVALID_INPUT, "batch", "exceeds max_batch 8"),
            (make_request(v1, "h1", self._x(v1), deadline_s=-1.0),
             Status.DEADLINE_EXCEEDED, "deadline", "deadline already passed"),
            (make_request(v1, "h1", self._x(v1), version="2"),
             Status.VERSION_MISMATCH, "version_mismatch", "belongs to mlp:1"),
        ]
        inbox = Inbox()
        for req, *_ in cases:
            core.on_request(req, inbox)
        replies = inbox.wait([c[0].request_id for c in cases], timeout=10)
        for reply, (_req, status, reason, text) in zip(replies, cases, strict=True):
            assert reply.status == status, (reason, reply.error)
            assert text in reply.error, (reason, reply.error)
            assert not reply.tensors
        for reason in {c[2] for c in cases}:
            want = sum(1 for c in cases if c[2] == reason)
            assert metric(core, "tiersplit_cloud_rejected_total", reason=reason) == want
        assert metric(core, "tiersplit_cloud_requests_total", model="_unknown",
                      cut="_unknown", status="MODEL_NOT_FOUND") == 1
        assert metric(core, "tiersplit_cloud_requests_total", model="mlp", cut="h1",
                      status="INVALID_INPUT") == 5
        # Nothing was computed for any of them (warm-up ran before metrics existed).
        assert metric(core, "tiersplit_cloud_backend_calls_total",
                      backend="onnxruntime") == 0
        # And the service keeps serving.
        ok = make_request(v1, "h1", self._x(v1))
        core.on_request(ok, inbox)
        assert inbox.wait([ok.request_id])[0].status == Status.OK
        assert metric(core, "tiersplit_cloud_backend_items_total", backend="onnxruntime") == 2

    def test_link_rejects_are_counted(self, core: CloudCore) -> None:
        core.on_reject("unknown_key", None)
        core.on_reject("malformed", "agent-1")
        assert metric(core, "tiersplit_cloud_rejected_total", reason="unknown_key") == 1
        assert metric(core, "tiersplit_cloud_rejected_total", reason="malformed") == 1


def _digest(core: CloudCore, name: str, version: str) -> str:
    return next(m["digest"] for m in core.models()
                if m["name"] == name and m["version"] == version)


def test_each_digest_runs_on_its_own_version(core_factory) -> None:
    core = core_factory()
    inbox = Inbox()
    rng = np.random.default_rng(3)
    sent = []
    for version in ("1", "2"):
        lv = core.repository.resolve("mlp", version, _digest(core, "mlp", version))
        x = test_bundles.sample(lv.bundle.manifest.inputs[0], 2, rng)
        crossing, tail, _ = test_bundles.reference(lv.bundle, "h2", x)
        req = make_request(lv, "h2", crossing)
        core.on_request(req, inbox)
        sent.append((req, tail))
    r1, r2 = inbox.wait([r.request_id for r, _ in sent])
    np.testing.assert_allclose(r1.tensors["y"], sent[0][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r2.tensors["y"], sent[1][1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(sent[0][1], sent[1][1]), "versions should differ"


def test_full_queue_answers_overloaded(core_factory) -> None:
    core = core_factory(batching={"max_batch": 1, "max_queue": 2}, executor_workers=1,
                        debug={"tail_delay_ms": 300})
    lv = core.repository.active("mlp")
    inbox = Inbox()
    reqs = [make_request(lv, "h1", {"h1": np.ones((1, 32), np.float32)}) for _ in range(8)]
    for r in reqs:
        core.on_request(r, inbox)
    replies = inbox.wait([r.request_id for r in reqs])
    statuses = [r.status for r in replies]
    assert Status.OVERLOADED in statuses
    assert statuses.count(Status.OK) >= 2
    assert set(statuses) <= {Status.OK, Status.OVERLOADED}
    assert metric(core, "tiersplit_cloud_rejected_total", reason="overloaded") == \
        statuses.count(Status.OVERLOADED)
    assert "max_queue 2" in next(r.error for r in replies if r.status == Status.OVERLOADED)


def test_expired_in_queue_dropped_before_compute(core_factory) -> None:
    core = core_factory(batching={"max_batch": 1}, executor_workers=1,
                        debug={"tail_delay_ms": 400})
    lv = core.repository.active("mlp")
    inbox = Inbox()
    slow = make_request(lv, "h1", {"h1": np.ones((1, 32), np.float32)})
    core.on_request(slow, inbox)
    wait_busy(core)  # the first batch runs, so the next one queues behind it
    late = make_request(lv, "h1", {"h1": np.ones((1, 32), np.float32)}, deadline_s=0.1)
    core.on_request(late, inbox)
    r_slow, r_late = inbox.wait([slow.request_id, late.request_id])
    assert r_slow.status == Status.OK
    assert r_late.status == Status.DEADLINE_EXCEEDED and "in the queue" in r_late.error
    assert metric(core, "tiersplit_cloud_backend_items_total", backend="onnxruntime") == 1


def test_stop_drains_in_flight_then_refuses(core_factory) -> None:
    core = core_factory(batching={"max_batch": 1}, executor_workers=1,
                        debug={"tail_delay_ms": 100})
    lv = core.repository.active("cnn")
    inbox = Inbox()
    reqs = [make_request(lv, "p1", {"p1": np.ones((1, 4, 4, 4), np.float32)})
            for _ in range(5)]
    for r in reqs:
        core.on_request(r, inbox)
    core.stop(grace=30)
    assert all(r.status == Status.OK for r in inbox.wait([r.request_id for r in reqs]))
    after = make_request(lv, "p1", {"p1": np.ones((1, 4, 4, 4), np.float32)})
    core.on_request(after, inbox)
    reply = inbox.wait([after.request_id])[0]
    assert reply.status == Status.UNAVAILABLE


def test_stop_past_grace_fails_leftovers_unavailable(core_factory) -> None:
    core = core_factory(batching={"max_batch": 1}, executor_workers=1,
                        debug={"tail_delay_ms": 400})
    inbox, reqs = queue_behind_a_batch(core, 6)
    core.stop(grace=0.2)
    replies = inbox.wait([r.request_id for r in reqs])
    statuses = [r.status for r in replies]
    assert statuses[0] == Status.OK  # in flight when stop began: finished
    assert Status.UNAVAILABLE in statuses
    assert set(statuses) <= {Status.OK, Status.UNAVAILABLE}


def test_load_report_reflects_queue(core_factory) -> None:
    core = core_factory(batching={"max_batch": 1}, executor_workers=1,
                        debug={"tail_delay_ms": 300})
    inbox, reqs = queue_behind_a_batch(core, 3)
    report = core.load()
    assert report.queue_depth >= 1
    assert report.utilisation == 1.0 and report.inflight == 1
    inbox.wait([r.request_id for r in reqs])
    assert core.load().queue_ms > 0


@pytest.mark.parametrize("adaptive", [True, False])
def test_lone_sender_stops_paying_the_queue_delay(core_factory, adaptive: bool) -> None:
    """One closed-loop sender: with adaptive_delay the core soon stops waiting for company
    that never comes (probing every 16th batch); without it every batch waits."""
    core = core_factory(batching={"max_batch": 8, "max_queue_delay_ms": 20,
                                  "disable_idle_gap": True, "adaptive_delay": adaptive})
    lv = core.repository.active("mlp")
    inbox = Inbox()
    for _ in range(48):
        req = make_request(lv, "h1", {"h1": np.ones((1, 32), np.float32)})
        core.on_request(req, inbox)
        assert inbox.wait([req.request_id])[0].ok
    if adaptive:
        assert core.batcher.waits <= 16
    else:
        # Every batch waits, except one whose delay already ran out before the dispatcher
        # looked at it (a stalled, shared machine).
        assert core.batcher.waits >= 32
