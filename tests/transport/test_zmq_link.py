"""ZeroMQ specifics: malformed frames from an authenticated peer, several endpoints,
plaintext mode, a wrong server key, and links carried through the link emulator."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import transport
from transport import keys, wire
from transport.config import ZmqClientConfig, ZmqServerConfig
from transport.errors import LinkClosed
from transport.linkemu import LinkEmulator, LinkProfile
from transport.messages import Reply, Status

from .conftest import LinkEnv, RecordingHandler, make_request

pytestmark = pytest.mark.integration


@pytest.fixture
def zenv(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = LinkEnv("zmq", tmp_path / "env")
    yield e
    e.close()


def test_malformed_frames_get_an_error_reply(zenv: LinkEnv, handler: RecordingHandler) -> None:
    zenv.agent_keys("a1")
    server = zenv.server(handler)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.curve_publickey, sock.curve_secretkey = keys.load_curve_secret(zenv.root / "a1.key")
        sock.curve_serverkey = keys.load_curve_public(zenv.root / "cloud.pub")
        sock.rcvtimeo = 10_000
        sock.connect(server.endpoints[0])
        good = wire.encode(make_request("bad-1", {"x": np.ones((2, 2), np.float32)}))
        sock.send_multipart([bytes(good[0]), b"12345"])  # frame shorter than the shape says
        reply = wire.decode(sock.recv_multipart())
        assert isinstance(reply, Reply)
        assert reply.request_id == "bad-1" and reply.status == Status.INVALID_INPUT
        sock.send_multipart([b"\x07garbage"])  # no recoverable id: counted, not answered
        assert handler.wait_for(lambda h: len(h.rejects) == 2)
        assert [a for _, a in handler.rejects] == ["a1", "a1"]
        assert handler.requests == []
        sock.send_multipart([bytes(f) for f in good])  # and it still serves
        assert wire.decode(sock.recv_multipart()).status == Status.OK
    finally:
        sock.close(0)
        ctx.term()


def test_several_endpoints(zenv: LinkEnv, handler: RecordingHandler, tmp_path: Path) -> None:
    zenv.agent_keys("a1")
    ipc = f"ipc://{tmp_path}/cloud.sock"
    server = transport.make_server_link(ZmqServerConfig(
        endpoints=["tcp://127.0.0.1:0", ipc], secret_key=zenv.root / "cloud.key",
        allowed_keys_dir=zenv.allow_dir))
    server.start(handler)
    zenv.servers.append(server)
    assert len(server.endpoints) == 2 and server.endpoints[1] == ipc
    for ep in server.endpoints:
        link = transport.make_client_link(ZmqClientConfig(
            endpoint=ep, secret_key=zenv.root / "a1.key",
            server_public_key=zenv.root / "cloud.pub"), "a1")
        zenv.clients.append(link)
        assert link.wait_connected(10)  # type: ignore[attr-defined]
        assert link.submit(make_request(ep, {"x": np.ones(1, np.float32)})).result(10).ok


def test_insecure_needs_explicit_flag_and_warns(handler: RecordingHandler,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="insecure"):
        ZmqServerConfig(endpoints=["tcp://127.0.0.1:0"])
    caplog.set_level(logging.WARNING, logger="transport.zmq")
    server = transport.make_server_link(ZmqServerConfig(endpoints=["tcp://127.0.0.1:0"],
                                                        insecure=True))
    server.start(handler)
    client = transport.make_client_link(ZmqClientConfig(endpoint=server.endpoints[0],
                                                        insecure=True), "plain-agent")
    try:
        assert client.wait_connected(10)  # type: ignore[attr-defined]
        assert client.submit(make_request("p", {"x": np.ones(1, np.float32)})).result(10).ok
        assert handler.requests[0].agent_id == "plain-agent"  # claimed, not authenticated
        assert sum("INSECURE" in r.message for r in caplog.records) == 2
    finally:
        client.close()
        server.stop()


def test_wrong_server_key_never_connects(zenv: LinkEnv, handler: RecordingHandler) -> None:
    zenv.server(handler)
    keys.generate("curve", zenv.root, "impostor")
    cfg = zenv.client_config("a1").model_copy(
        update={"server_public_key": zenv.root / "impostor.pub"})
    zenv.agent_keys("a1")
    zenv.servers[0].reload_allowed()  # type: ignore[attr-defined]
    link = transport.make_client_link(cfg, "a1")
    zenv.clients.append(link)
    assert not link.wait_connected(2)  # type: ignore[attr-defined]
    with pytest.raises(LinkClosed):
        link.submit(make_request("x", {})).result(5)
    assert handler.requests == []


@pytest.mark.slow
def test_zmq_through_emulated_link_and_blackout(zenv: LinkEnv,
                                                handler: RecordingHandler) -> None:
    server = zenv.server(handler)
    port = int(server.endpoints[0].rsplit(":", 1)[1])
    profile = LinkProfile.symmetric(20e6, rtt_ms=20)
    with LinkEmulator(("127.0.0.1", port), profile, seed=3) as emu:
        zenv._endpoint = f"tcp://127.0.0.1:{emu.port}"
        client = zenv.client("a1")
        x = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
        t0 = time.perf_counter()
        reply = client.submit(make_request("through", {"x": x}, "raw")).result(20)
        elapsed = time.perf_counter() - t0
        np.testing.assert_array_equal(reply.tensors["x"], x)  # Curve bytes carried intact
        assert elapsed >= 2 * x.nbytes * 8 / profile.up_bps  # it really went through the link
        handler.hold = True
        fut = client.submit(make_request("in-blackout", {"x": x[:1]}, timeout=60))
        assert handler.wait_for(lambda h: len(h.held) == 1, 10)
        emu.blackout(4.0)  # longer than the 1 s heartbeat timeout
        with pytest.raises(LinkClosed):
            fut.result(20)
        assert client.connected is False
        handler.hold = False
        assert client.wait_connected(30)  # type: ignore[attr-defined]
        assert client.submit(make_request("after", {"x": x[:1]})).result(20).ok


@pytest.mark.slow
@pytest.mark.mqtt
def test_mqtt_through_emulated_link(mosquitto_broker, tmp_path: Path,  # type: ignore[no-untyped-def]
                                    handler: RecordingHandler) -> None:
    env = LinkEnv("mqtt", tmp_path / "m", mosquitto_broker)
    try:
        env.server(handler)
        profile = LinkProfile.symmetric(50e6, rtt_ms=10)
        with LinkEmulator((mosquitto_broker.host, mosquitto_broker.port), profile) as emu:
            cfg = env.client_config("a1")
            cfg = cfg.model_copy(update={"broker": cfg.broker.model_copy(
                update={"port": emu.port})})
            env.agent_keys("a1")
            env.servers[0].reload_allowed()  # type: ignore[attr-defined]
            link = transport.make_client_link(cfg, "a1")
            env.clients.append(link)
            assert link.wait_connected(15)  # type: ignore[attr-defined]
            x = np.arange(100_000, dtype=np.float32)
            reply = link.submit(make_request("m", {"x": x}, "int8c+zstd")).result(20)
            assert reply.ok and reply.tensors["x"].shape == x.shape
            assert emu.bytes_up > 0 and emu.bytes_down > 0  # TLS went through the proxy
            states: list[bool] = []
            link.on_state_change(states.append)
            emu.reset_connections()
            deadline = time.monotonic() + 15
            while False not in states and time.monotonic() < deadline:
                time.sleep(0.05)
            assert False in states  # the reset was seen...
            assert link.wait_connected(15)  # type: ignore[attr-defined]  # ...and healed
            assert link.submit(make_request("m2", {"x": x[:10]})).result(20).ok
    finally:
        env.close()


def test_bad_endpoints_fail_cleanly(zenv: LinkEnv, handler: RecordingHandler) -> None:
    busy = zenv.server(handler)
    taken = busy.endpoints[0]
    clash = transport.make_server_link(ZmqServerConfig(
        endpoints=[taken], secret_key=zenv.root / "cloud.key", allowed_keys_dir=zenv.allow_dir))
    with pytest.raises(zmq.ZMQError):
        clash.start(handler)  # address in use: raised, nothing left hanging
    with pytest.raises(zmq.ZMQError):
        transport.make_client_link(ZmqClientConfig(endpoint="tcp://", insecure=True), "a1")
