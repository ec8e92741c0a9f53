"""One transport suite, every link: ``link_env`` is parametrized over ZeroMQ and MQTT and
hands tests a factory that makes fresh keys, configs, servers and clients (like pyzmq's
auth tests override one factory). Links are built from the pydantic configs through
``transport.make_server_link`` / ``make_client_link``, so the configs are exercised too."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import transport
from contract.deadline import Deadline
from transport import keys
from transport.base import ClientLink, Responder, ServerLink
from transport.config import (
    MqttClientConfig,
    MqttServerConfig,
    ZmqClientConfig,
    ZmqServerConfig,
)
from transport.messages import LoadReport, Reply, Request


class RecordingHandler:
    """A ServerHandler that echoes tensors back and records everything it sees.

    ``hold`` makes it keep responders instead of answering (tests release them)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.rejects: list[tuple[str, str | None]] = []
        self.held: list[tuple[Request, Responder]] = []
        self.hold = False
        self.cv = threading.Condition()

    def on_request(self, request: Request, responder: Responder) -> None:
        with self.cv:
            self.requests.append(request)
            if self.hold:
                self.held.append((request, responder))
                self.cv.notify_all()
                return
            self.cv.notify_all()
        responder.send(Reply(request_id=request.request_id, tensors=dict(request.tensors),
                             queue_ms=1.5, compute_ms=2.5))

    def on_reject(self, reason: str, agent_id: str | None) -> None:
        with self.cv:
            self.rejects.append((reason, agent_id))
            self.cv.notify_all()

    def load(self) -> LoadReport:
        return LoadReport(queue_depth=7, queue_ms=3.0, utilisation=0.25, inflight=len(self.held))

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
        with self.cv:
            return self.cv.wait_for(lambda: predicate(self), timeout)

    def release_all(self) -> None:
        with self.cv:
            held, self.held = self.held, []
        for req, resp in held:
            resp.send(Reply(request_id=req.request_id, tensors=dict(req.tensors)))


def make_request(rid: str, tensors: dict[str, np.ndarray], codec: str = "raw",
                 timeout: float = 10.0) -> Request:
    return Request(request_id=rid, agent_id="claimed", model="m", version="1", digest="d" * 64,
                   cut="c1", deadline=Deadline.after_ms(timeout * 1e3), tensors=tensors,
                   codec=codec)


class LinkEnv:
    """Builds servers and clients of one link kind, with fresh keys in ``root``."""

    def __init__(self, kind: str, root: Path, broker=None) -> None:  # type: ignore[no-untyped-def]
        self.kind, self.root, self.broker = kind, root, broker
        self.key_kind = "curve" if kind == "zmq" else "x25519"
        self.allow_dir = root / "allowed"
        self.allow_dir.mkdir(parents=True)
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        keys.generate(self.key_kind, root, "cloud")
        self.servers: list[ServerLink] = []
        self.clients: list[ClientLink] = []
        self._endpoint: str | None = None

    # keys
    def agent_keys(self, agent_id: str, allow: bool = True) -> tuple[Path, Path]:
        secret, public = root_keys = (self.root / f"{agent_id}.key", self.root / f"{agent_id}.pub")
        if not secret.exists():
            keys.generate(self.key_kind, self.root, agent_id)
        if allow:
            shutil.copy(public, self.allow_dir / f"{agent_id}.pub")
        return root_keys

    def revoke(self, agent_id: str) -> None:
        (self.allow_dir / f"{agent_id}.pub").unlink()
        for s in self.servers:
            s.reload_allowed()  # type: ignore[attr-defined]

    # configs
    def server_config(self, **over: object) -> ZmqServerConfig | MqttServerConfig:
        if self.kind == "zmq":
            ep = self._endpoint or "tcp://127.0.0.1:0"
            return ZmqServerConfig(endpoints=[ep], secret_key=self.root / "cloud.key",
                                   allowed_keys_dir=self.allow_dir, heartbeat_ivl_ms=200,
                                   heartbeat_timeout_ms=1000, heartbeat_ttl_ms=2000, **over)
        return MqttServerConfig(broker=self.broker.broker_config(), prefix=self.prefix,
                                secret_key=self.root / "cloud.key",
                                allowed_keys_dir=self.allow_dir, **over)

    def client_config(self, agent_id: str, **over: object) -> ZmqClientConfig | MqttClientConfig:
        secret, _ = self.agent_keys(agent_id, allow=False)
        if self.kind == "zmq":
            assert self._endpoint is not None, "start a server first"
            return ZmqClientConfig(endpoint=self._endpoint, secret_key=secret,
                                   server_public_key=self.root / "cloud.pub",
                                   heartbeat_ivl_ms=200, heartbeat_timeout_ms=1000,
                                   heartbeat_ttl_ms=2000, reconnect_ivl_ms=100,
                                   reconnect_ivl_max_ms=500, **over)
        return MqttClientConfig(broker=self.broker.broker_config(), prefix=self.prefix,
                                secret_key=secret, server_public_key=self.root / "cloud.pub",
                                **over)

    # links
    def server(self, handler: RecordingHandler, **over: object) -> ServerLink:
        link = transport.make_server_link(self.server_config(**over))
        link.start(handler)
        if self.kind == "zmq":
            self._endpoint = link.endpoints[0]
        self.servers.append(link)
        return link

    def client(self, agent_id: str, wait: bool = True, allow: bool = True,
               **over: object) -> ClientLink:
        """A connected client; ``allow`` puts its key on the allow-list first."""
        self.agent_keys(agent_id, allow=allow)
        if allow:
            for s in self.servers:
                s.reload_allowed()  # type: ignore[attr-defined]
        link = transport.make_client_link(self.client_config(agent_id, **over), agent_id)
        self.clients.append(link)
        if wait:
            assert link.wait_connected(15), f"{self.kind} client {agent_id} did not connect"  # type: ignore[attr-defined]
        return link

    def kill_peer(self) -> None:
        """Lose the far side: the cloud server."""
        self.servers[-1].stop()

    def restore_peer(self, handler: RecordingHandler) -> None:
        """A cloud server again (ZeroMQ: on the same endpoint; MQTT: a new replica)."""
        self.server(handler)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for s in self.servers:
            s.stop()


@pytest.fixture(params=["zmq", "mqtt"])
def link_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LinkEnv]:
    """A LinkEnv for each link kind; MQTT uses a fresh real mosquitto per test."""
    broker = None
    if request.param == "mqtt":
        broker = request.getfixturevalue("mosquitto_broker")
    env = LinkEnv(request.param, tmp_path / "env", broker)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()
