"""The transport suite, run against both links (ZeroMQ+Curve and MQTT+TLS+AEAD)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import transport
from transport import wire
from transport.errors import KeyFileError, LinkClosed, LinkTimeout
from transport.messages import Reply, Status

from .conftest import LinkEnv, RecordingHandler, make_request

pytestmark = pytest.mark.integration

CASES = [
    ("float32", (2, 16, 8, 8), "raw"),
    ("float32", (2, 16, 8, 8), "fp16"),
    ("float32", (2, 16, 8, 8), "int8"),
    ("float32", (2, 16, 8, 8), "int8c+zstd"),
    ("float32", (3, 5, 7), "int8+lz4"),
    ("float16", (4, 33), "raw+lz4"),
    ("float64", (5,), "raw"),
    ("int64", (2, 3), "int8+lz4"),  # integers travel raw whatever the codec
    ("uint8", (1, 3, 4, 4), "raw+zstd"),
    ("bool", (6,), "raw"),
    ("float32", (), "int8c"),  # a scalar has no channel axis
    ("float32", (0, 4), "int8"),
]


def _tensor(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0, 100, size=shape).astype(dtype)
    return np.maximum(rng.standard_normal(shape), 0).astype(dtype)


def test_round_trips(link_env: LinkEnv, handler: RecordingHandler) -> None:
    link_env.server(handler)
    client = link_env.client("agent-1")
    rng = np.random.default_rng(0)
    for i, (dtype, shape, codec) in enumerate(CASES):
        x = _tensor(dtype, shape, rng)
        extra = rng.integers(0, 9, size=(3,)).astype(np.int32)
        reply = client.submit(make_request(f"r{i}", {"x": x, "ids": extra}, codec)).result(15)
        assert reply.status == Status.OK, reply.error
        assert (reply.queue_ms, reply.compute_ms) == (1.5, 2.5)
        got = reply.tensors["x"]
        assert got.shape == x.shape
        np.testing.assert_array_equal(reply.tensors["ids"], extra)
        lossy = codec.split("+")[0] != "raw" and x.dtype.kind == "f"
        if lossy:
            assert got.dtype == np.float32
            tol = 2e-3 if codec.startswith("fp16") else (float(x.max() - x.min()) / 255 + 1e-6
                                                         if x.size else 0)
            np.testing.assert_allclose(got, x.astype(np.float32), atol=tol, rtol=1e-3)
        else:
            assert got.dtype == x.dtype
            np.testing.assert_array_equal(got, x)
    # The server saw the authenticated id, not what the request claimed.
    assert {r.agent_id for r in handler.requests} == {"agent-1"}
    assert handler.rejects == []


def test_hundred_in_flight(link_env: LinkEnv, handler: RecordingHandler) -> None:
    link_env.server(handler)
    client = link_env.client("agent-1")
    handler.hold = True  # answer only once all 100 are in: they are truly concurrent
    x = np.arange(256, dtype=np.float32)
    futs = [client.submit(make_request(f"q{i}", {"x": x + i}, timeout=60)) for i in range(100)]
    assert handler.wait_for(lambda h: len(h.held) == 100, 30), len(handler.held)
    assert not any(f.done() for f in futs)
    handler.release_all()
    for i, f in enumerate(futs):
        reply = f.result(30)
        assert reply.ok and reply.request_id == f"q{i}"
        np.testing.assert_array_equal(reply.tensors["x"], x + i)


def test_ping_reports_load(link_env: LinkEnv, handler: RecordingHandler) -> None:
    link_env.server(handler)
    client = link_env.client("agent-1")
    res = client.ping(payload_bytes=10_000, reply_bytes=20_000, timeout=10)
    assert res.rtt_ms > 0
    assert res.up_bytes >= 10_000 and res.down_bytes >= 20_000
    assert res.load is not None and res.load.queue_depth == 7


def test_unknown_agent_key_refused(link_env: LinkEnv, handler: RecordingHandler) -> None:
    link_env.server(handler)
    client = link_env.client("stranger", wait=False, allow=False)
    time.sleep(1.0)  # give the handshake / broker delivery a chance
    fut = client.submit(make_request("s1", {"x": np.ones(4, np.float32)}, timeout=2))
    with pytest.raises((LinkClosed, LinkTimeout)):
        fut.result(15)
    assert handler.wait_for(lambda h: len(h.rejects) > 0, 10)
    assert handler.requests == []  # never reached the application
    assert all(reason in ("unknown_key", "unknown_agent") for reason, _ in handler.rejects)


def test_revocation_at_run_time(link_env: LinkEnv, handler: RecordingHandler) -> None:
    link_env.server(handler)
    client = link_env.client("agent-1")
    x = np.ones(8, np.float32)
    assert client.submit(make_request("ok", {"x": x})).result(15).ok
    link_env.revoke("agent-1")
    fut = client.submit(make_request("after", {"x": x}, timeout=3))
    try:
        reply = fut.result(15)
        assert reply.status == Status.UNAUTHORIZED  # ZeroMQ answers on the live connection
    except LinkTimeout:
        assert link_env.kind == "mqtt"  # MQTT cannot answer an agent it no longer knows
    assert handler.wait_for(lambda h: any(a == "agent-1" for _, a in h.rejects), 10)
    assert [r.request_id for r in handler.requests] == ["ok"]


def test_deadline_fails_with_timeout(link_env: LinkEnv, handler: RecordingHandler) -> None:
    link_env.server(handler)
    client = link_env.client("agent-1")
    handler.hold = True
    fut = client.submit(make_request("slow", {"x": np.ones(2, np.float32)}, timeout=0.5))
    with pytest.raises(LinkTimeout):
        fut.result(15)


def test_peer_loss_flips_connected_and_fails_futures(link_env: LinkEnv,
                                                     handler: RecordingHandler) -> None:
    link_env.server(handler)
    client = link_env.client("agent-1")
    states: list[bool] = []
    client.on_state_change(states.append)
    handler.hold = True
    fut = client.submit(make_request("lost", {"x": np.ones(2, np.float32)}, timeout=120))
    assert handler.wait_for(lambda h: len(h.held) == 1, 15)
    link_env.kill_peer()
    with pytest.raises(LinkClosed):
        fut.result(30)
    assert client.connected is False
    assert False in states
    with pytest.raises(LinkClosed):
        client.submit(make_request("while-down", {"x": np.ones(2, np.float32)})).result(5)
    # The peer comes back: the link reconnects by itself.
    handler.hold = False
    link_env.restore_peer(handler)
    assert client.wait_connected(30)  # type: ignore[attr-defined]
    assert client.submit(make_request("back", {"x": np.ones(2, np.float32)})).result(15).ok


def test_world_readable_secret_key_refused(link_env: LinkEnv, handler: RecordingHandler) -> None:
    link_env.server(handler)
    cfg = link_env.client_config("agent-1")
    os.chmod(cfg.secret_key, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        transport.make_client_link(cfg, "agent-1")
    os.chmod(link_env.root / "cloud.key", 0o640)
    with pytest.raises(KeyFileError):
        transport.make_server_link(link_env.server_config())


def test_submit_from_many_threads(link_env: LinkEnv, handler: RecordingHandler) -> None:
    """Links are shared by the agent's worker threads: submit is thread-safe (the ZeroMQ
    client sends on the caller's thread under the socket's lock), every thread gets its
    own replies, pings take the same path, and a closed link refuses at once."""
    link_env.server(handler)
    client = link_env.client("agent-1")
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        codec = "raw" if t % 2 == 0 else "int8+lz4"
        try:
            for i in range(20):
                x = np.full((1, 8), t * 100 + i, np.float32)
                r = client.submit(make_request(f"t{t}-{i}", {"x": x}, codec)).result(30)
                assert r.ok and r.request_id == f"t{t}-{i}"
                if codec == "raw":
                    np.testing.assert_array_equal(r.tensors["x"], x)
                else:
                    assert float(r.tensors["x"][0, 0]) == pytest.approx(t * 100 + i, abs=1)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert errors == []
    assert len(handler.requests) == 160
    assert client.ping().rtt_ms > 0
    client.close()
    with pytest.raises(LinkClosed):
        client.submit(make_request("late", {"x": np.ones((1, 8), np.float32)})).result(5)


def test_a_batch_of_replies_reaches_each_requester_once_in_order(
        link_env: LinkEnv, handler: RecordingHandler) -> None:
    """Replies handed to the link's batch path together (as the cloud core answers a
    batch) reach every requester exactly once, in the batch's order; a reply that cannot
    be encoded is answered INTERNAL and holds none of the others up."""
    handler.hold = True
    link_env.server(handler)
    client = link_env.client("agent-1")
    order: list[int] = []
    futs = []
    for i in range(6):
        fut = client.submit(make_request(f"r{i}", {"x": np.full(4, i, np.float32)}))
        fut.add_done_callback(lambda _, i=i: order.append(i))
        futs.append(fut)
    assert handler.wait_for(lambda h: len(h.held) == 6)
    with handler.cv:
        held, handler.held = sorted(handler.held, key=lambda p: p[0].request_id), []
    channel = held[0][1].channel  # type: ignore[attr-defined]
    assert channel is not None and all(r.channel is channel for _, r in held)  # type: ignore[attr-defined]
    pairs = [(resp, Reply(request_id=req.request_id, tensors=dict(req.tensors)))
             for req, resp in held]
    pairs[3] = (held[3][1], Reply(request_id="r3", tensors={"y": np.zeros(2, np.complex64)}))
    channel.send_many(pairs)
    replies = [f.result(15) for f in futs]
    assert [r.request_id for r in replies] == [f"r{i}" for i in range(6)]
    for i, r in enumerate(replies):
        if i == 3:
            assert r.status == Status.INTERNAL and "not encodable" in r.error
        else:
            assert r.ok and float(r.tensors["x"][0]) == i
    assert order == list(range(6))
    with pytest.raises(RuntimeError, match="already answered"):
        held[0][1].send(Reply(request_id="r0"))
    channel.send_many(pairs[:1])  # answered already: skipped, not sent twice
    handler.hold = False
    assert client.submit(make_request("after", {"x": np.ones(4, np.float32)})).result(15).ok


def test_replaced_key_revokes_the_old_one(link_env: LinkEnv, handler: RecordingHandler) -> None:
    """Rotating an agent's key: the old key, still connected, gets no more compute."""
    link_env.server(handler)
    old = link_env.client("agent-1")
    x = np.ones(4, np.float32)
    assert old.submit(make_request("before", {"x": x})).result(15).ok
    for suffix in (".key", ".pub"):
        (link_env.root / f"agent-1{suffix}").unlink()
    link_env.agent_keys("agent-1")  # a new key pair under the same agent id
    for s in link_env.servers:
        s.reload_allowed()
    fut = old.submit(make_request("old-key", {"x": x}, timeout=3))
    try:
        assert fut.result(15).status == Status.UNAUTHORIZED  # ZeroMQ answers
    except LinkTimeout:
        assert link_env.kind == "mqtt"  # MQTT: fails authentication, not answered
    assert handler.wait_for(lambda h: len(h.rejects) >= 1, 10)
    new = link_env.client("agent-1")
    assert new.submit(make_request("new-key", {"x": x})).result(15).ok
    assert [r.request_id for r in handler.requests] == ["before", "new-key"]


def test_failing_handler_still_answers(link_env: LinkEnv) -> None:
    class Broken(RecordingHandler):
        def on_request(self, request, responder) -> None:  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    link_env.server(Broken())
    client = link_env.client("agent-1")
    reply = client.submit(make_request("b", {"x": np.ones(1, np.float32)})).result(15)
    assert reply.status == Status.INTERNAL and "RuntimeError" in reply.error
    assert "boom" not in reply.error  # internals stay in the server log


def test_submit_reports_the_bytes_it_moved(link_env: LinkEnv, handler: RecordingHandler) -> None:
    """The link sets ``request.wire_bytes`` when it encodes, so the sender learns the
    size of what it sent without encoding it a second time."""
    link_env.server(handler)
    client = link_env.client("agent-1")
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    sizes = {}
    for codec in ("raw", "int8"):
        req = make_request(f"wb-{codec}", {"x": x}, codec=codec)
        assert req.wire_bytes == 0
        fut = client.submit(req)
        sizes[codec] = req.wire_bytes
        assert fut.result(15).ok
    frames = wire.wire_bytes(wire.encode(make_request("same", {"x": x})))
    if link_env.kind == "zmq":  # the frames themselves (headers differ by a few digits)
        assert abs(sizes["raw"] - frames) < 32
    else:  # packed into one payload and sealed: a little more than the frames
        assert frames < sizes["raw"] < frames + 200
    assert sizes["int8"] < sizes["raw"] / 3
    # A request refused before encoding moved nothing.
    client.close()
    late = make_request("closed", {"x": x})
    with pytest.raises(LinkClosed):
        client.submit(late).result(5)
    assert late.wire_bytes == 0
