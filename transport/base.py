"""The two link interfaces every transport (ZeroMQ, MQTT) implements.

Threads, not asyncio, at this boundary: ONNX Runtime and torch calls block, and paho
runs its own network thread. Callbacks are invoked from the link's I/O thread and must
return quickly (enqueue, never compute). ``Responder.send`` and ``ClientLink.submit`` are
thread-safe.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from transport.messages import LoadReport, Reply, Request


class Responder(Protocol):
    """Sends the reply for one request back to the agent that sent it.

    A link may also give its responders a ``channel`` attribute: an object whose
    ``send_many([(responder, reply), ...])`` answers many requests of that link at once
    (the replies of one batch: encoded together, one hand-off to the link's I/O thread).
    Callers answering a batch use it when it is there and ``send`` otherwise; either way
    each request is answered at most once.
    """

    def send(self, reply: Reply) -> None: ...


class ServerHandler(Protocol):
    """What a cloud core gives a server link."""

    def on_request(self, request: Request, responder: Responder) -> None:
        """A decoded, authenticated request. ``request.agent_id`` is the authenticated id."""

    def on_reject(self, reason: str, agent_id: str | None) -> None:
        """A frame was refused by the link (malformed, auth, replay...). Count it.

        The link has already answered with an error reply when it could recover the
        request id; ``reason`` is a short label (a ``TransportError.reason``)."""

    def load(self) -> LoadReport:
        """Current load, sent back in every pong."""


class ServerLink(ABC):
    """Cloud side: accepts requests from many agents."""

    @abstractmethod
    def start(self, handler: ServerHandler) -> None:
        """Bind/subscribe and start the I/O thread. Raises if already started."""

    @abstractmethod
    def stop(self) -> None:
        """Stop accepting; flush replies already handed to responders; join threads."""

    @property
    @abstractmethod
    def endpoints(self) -> list[str]:
        """The concrete addresses bound (ports resolved), for agents to connect to."""

    def reload_allowed(self) -> int:
        """Re-read the agent allow-list at run time; returns how many agents it allows.

        Links without an allow-list return 0. (Added after the first contract; the ZeroMQ
        and MQTT links override it.)"""
        return 0


@dataclass(slots=True)
class PingResult:
    rtt_ms: float
    up_bytes: int
    down_bytes: int
    load: LoadReport | None


class ClientLink(ABC):
    """Edge side: one connection to one cloud endpoint."""

    @abstractmethod
    def submit(self, request: Request) -> Future[Reply]:
        """Encode (with ``request.codec``) and send; the future resolves with the reply.

        Once the request is encoded, and before it is sent, ``request.wire_bytes`` holds
        the bytes the link moves for it (read it after ``submit`` returns; it stays 0 when
        the request failed before encoding). The future fails with
        ``transport.errors.LinkTimeout`` when ``request.deadline`` (monotonic) passes and
        with ``LinkClosed`` when the peer is lost or the link closes."""

    @abstractmethod
    def ping(self, payload_bytes: int = 0, reply_bytes: int = 0,
             timeout: float = 2.0) -> PingResult:
        """Round trip a probe; raises LinkTimeout/LinkClosed."""

    @property
    @abstractmethod
    def connected(self) -> bool:
        """False once heartbeats (or the broker connection) say the peer is gone."""

    @abstractmethod
    def close(self) -> None:
        """Fail all pending futures with LinkClosed and release sockets/threads."""

    def on_state_change(self, callback: Callable[[bool], None]) -> None:  # noqa: B027
        """Optional hook: called with the new ``connected`` value when it changes."""

    def wait_connected(self, timeout: float = 5.0) -> bool:
        """Block until ``connected`` (True) or ``timeout`` seconds pass (False).

        (Added after the first contract; the links override it with a condition wait.)"""
        deadline = time.monotonic() + timeout
        while not self.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.connected
