"""Pieces both links share, free of any socket: the table of requests in flight on the
client, the server-side dispatch of decoded frames, and a self-pipe to wake a poller."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from contract.deadline import Deadline
from transport import wire
from transport.base import PingResult, ServerHandler
from transport.errors import LinkClosed, LinkTimeout, TransportError, WireError
from transport.messages import Chunk, Directive, Fetch, Ping, Pong, Reply, Report, Request, Status

__all__ = ["LinkState", "Pending", "ReplyChannel", "Waker", "dispatch_client",
           "dispatch_server", "refuse", "settle"]

log = logging.getLogger(__name__)


def settle(fut: Future, result: Any = None, exc: BaseException | None = None) -> bool:
    """Resolve ``fut`` unless something else already did (timeouts race replies)."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
        return True
    except InvalidStateError:
        return False


class Pending:
    """Requests and pings in flight on one client link, with their deadlines (monotonic:
    a request fails here when its own :class:`Deadline` passes, whatever the wall clock
    does)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, Future[Reply]] = {}
        self._pings: dict[int, tuple[Future[PingResult], float, int]] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._nonces = itertools.count(1)

    def add(self, request_id: str, deadline: Deadline) -> Future[Reply]:
        fut: Future[Reply] = Future()
        fut.set_running_or_notify_cancel()
        with self._lock:
            if request_id in self._requests:
                settle(fut, exc=ValueError(f"request id {request_id!r} already in flight"))
                return fut
            self._requests[request_id] = fut
            heapq.heappush(self._deadlines, (deadline.at, next(self._seq), request_id))
        return fut

    def discard(self, request_id: str, exc: BaseException) -> None:
        with self._lock:
            fut = self._requests.pop(request_id, None)
        if fut is not None:
            settle(fut, exc=exc)

    def add_ping(self, up_bytes: int) -> tuple[int, Future[PingResult]]:
        fut: Future[PingResult] = Future()
        fut.set_running_or_notify_cancel()
        with self._lock:
            nonce = next(self._nonces)
            self._pings[nonce] = (fut, time.perf_counter(), up_bytes)
        return nonce, fut

    def drop_ping(self, nonce: int) -> None:
        with self._lock:
            self._pings.pop(nonce, None)

    def await_pong(self, nonce: int, fut: Future, timeout: float,
                   frames: Sequence[bytes | memoryview]) -> PingResult:
        """The pong of a sent ping, with the ping's wire size as its uplink bytes.

        Raises:
            LinkTimeout: no pong within ``timeout`` (the ping is forgotten).
        """
        try:
            res = fut.result(timeout)
        except TimeoutError:
            self.drop_ping(nonce)
            raise LinkTimeout(f"no pong within {timeout:.1f} s") from None
        res.up_bytes = wire.wire_bytes(frames)
        return res

    def resolve(self, reply: Reply) -> None:
        with self._lock:
            fut = self._requests.pop(reply.request_id, None)
        if fut is None:
            log.debug("reply for unknown or expired request %s dropped", reply.request_id)
        else:
            settle(fut, reply)

    def resolve_pong(self, pong: Pong, down_bytes: int) -> None:
        with self._lock:
            entry = self._pings.pop(pong.nonce, None)
        if entry is not None:
            fut, t0, up = entry
            settle(fut, PingResult(rtt_ms=(time.perf_counter() - t0) * 1000.0,
                                   up_bytes=up, down_bytes=down_bytes, load=pong.load))

    def expire(self, now: float | None = None) -> float | None:
        """Fail requests past their deadline; return the next deadline (monotonic
        seconds, like ``now``), if any."""
        now = time.monotonic() if now is None else now
        expired = []
        with self._lock:
            while self._deadlines:
                deadline, _, rid = self._deadlines[0]
                if rid not in self._requests:
                    heapq.heappop(self._deadlines)
                    continue
                if deadline > now:
                    break
                heapq.heappop(self._deadlines)
                expired.append(self._requests.pop(rid))
            nxt = self._deadlines[0][0] if self._deadlines else None
        for fut in expired:
            settle(fut, exc=LinkTimeout("no reply before the request deadline"))
        return nxt

    def fail_all(self, exc_factory: Callable[[], BaseException]) -> int:
        with self._lock:
            futs = list(self._requests.values()) + [p[0] for p in self._pings.values()]
            self._requests.clear()
            self._pings.clear()
            self._deadlines.clear()
        for fut in futs:
            settle(fut, exc=exc_factory())
        return len(futs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._requests)


class LinkState:
    """The ``connected`` flag both client links keep, as a mixin (put it before
    ``ClientLink``): waiting for it, state-change callbacks, and failing every request in
    flight with ``LinkClosed`` on a loss, at once (failover is the caller's job, and it
    should not wait for the deadlines).

    The link's ``__init__`` calls :meth:`_init_state`; ``self._pending`` must exist.
    """

    _pending: Pending

    def _init_state(self) -> None:
        self._connected = False
        self._cv = threading.Condition()  # the link may wait on it for its own reasons too
        self._callbacks: list[Callable[[bool], None]] = []
        self._closed = threading.Event()

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_connected(self, timeout: float = 5.0) -> bool:
        """Block until the link is usable (True) or ``timeout`` (False)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._connected or self._closed.is_set(),
                                     timeout) and self._connected

    def on_state_change(self, callback: Callable[[bool], None]) -> None:
        self._callbacks.append(callback)

    def _change_state(self, connected: bool, what: str, lost: str) -> None:
        """Set the flag; on a change log it (``what`` names the link), tell the
        subscribers and, on a loss, fail what is in flight with ``LinkClosed(lost)``."""
        with self._cv:
            if connected == self._connected:
                return
            self._connected = connected
            self._cv.notify_all()
        log.info("%s %s", what, "up" if connected else "down")
        for cb in list(self._callbacks):
            try:
                cb(connected)
            except Exception:
                log.exception("on_state_change callback failed")
        if not connected:
            n = self._pending.fail_all(lambda: LinkClosed(lost))
            if n:
                log.warning("%d requests in flight failed: %s", n, lost)


class Waker:
    """A self-pipe: other threads wake an I/O thread blocked in poll()."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        self._armed = False
        self._closed = False
        self._lock = threading.Lock()

    def wake(self) -> None:
        with self._lock:  # never write to a closed (and possibly reused) descriptor
            if self._armed or self._closed:
                return
            self._armed = True
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._w, b"x")

    def drain(self) -> None:
        with self._lock:
            self._armed = False
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self.fd, 4096):
                    pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self.fd, self._w):
                with contextlib.suppress(OSError):
                    os.close(fd)


def dispatch_server(frames: Sequence[Any], agent_id: str | None, handler: ServerHandler,
                    limits: wire.WireLimits, send: Callable[[Reply | Pong], None],
                    trust_claimed_id: bool = False, channel: ReplyChannel | None = None,
                    target: Any = None) -> None:
    """Decode one incoming message and hand it to the handler, or refuse it.

    Args:
        frames: the message frames.
        agent_id: the authenticated agent id (None when the link has none).
        handler: the cloud core.
        limits: decoder bounds.
        send: how to answer this peer (called with a Reply or a Pong).
        trust_claimed_id: plaintext links take the agent id the request claims.
        channel: the link's batch path for replies, and ``target`` this peer's address
            on it (see :class:`_OnceResponder`).
    """
    try:
        msg = wire.decode(frames, limits)
    except WireError as e:
        rid = wire.peek_request_id(frames)
        log.info("refused a malformed message from %s: %s", agent_id, e)
        handler.on_reject(e.reason, agent_id)
        if rid is not None:
            send(Reply(request_id=rid, status=e.status, error=str(e)))
        return
    if isinstance(msg, Request):
        if not trust_claimed_id or agent_id is not None:
            msg.agent_id = agent_id or ""
        responder = _OnceResponder(send, msg.request_id, channel, target)
        try:
            handler.on_request(msg, responder)
        except Exception as e:
            # A request always ends in a result or an explicit error, never in silence.
            log.exception("handler.on_request failed for request %s", msg.request_id)
            with contextlib.suppress(RuntimeError):
                responder.send(Reply(request_id=msg.request_id, status=Status.INTERNAL,
                                     error=f"server error: {type(e).__name__}"))
    elif isinstance(msg, Ping):
        try:
            load = handler.load()
        except Exception:  # a failing load report must not kill the I/O thread
            log.exception("handler.load() failed; pong without load")
            load = None
        # server_time is informational (shown to operators), never compared by peers.
        send(Pong(nonce=msg.nonce, sent_at=msg.sent_at, server_time=time.time(),
                  received_bytes=len(msg.payload), load=load,
                  payload=bytes(msg.reply_bytes)))
    elif isinstance(msg, Fetch | Report):
        _dispatch_control(msg, agent_id, handler, send, trust_claimed_id)
    else:
        handler.on_reject("unexpected_message", agent_id)


def _dispatch_control(msg: Fetch | Report, agent_id: str | None, handler: ServerHandler,
                      send: Callable[[Any], None], trust_claimed_id: bool) -> None:
    """Model distribution and rollout reports: to ``handler.on_control`` (a core without
    one answers UNAVAILABLE). The agent id is the authenticated one, as for requests."""
    if not trust_claimed_id or agent_id is not None:
        msg.agent_id = agent_id or ""
    control = getattr(handler, "on_control", None)
    if control is None:
        handler.on_reject("unexpected_message", agent_id)
        kind = Chunk if isinstance(msg, Fetch) else Directive
        send(kind(request_id=msg.request_id, status=Status.UNAVAILABLE,
                  error="this core does not distribute models"))
        return
    try:
        control(msg, send)
    except Exception as e:
        log.exception("handler.on_control failed for %s", msg.request_id)
        kind = Chunk if isinstance(msg, Fetch) else Directive
        send(kind(request_id=msg.request_id, status=Status.INTERNAL,
                  error=f"server error: {type(e).__name__}"))


def refuse(frames: Sequence[Any], agent_id: str | None, handler: ServerHandler,
           reason: str, error: TransportError, send: Callable[[Reply], None]) -> None:
    """Count a refused message and answer it when its request id can be read."""
    handler.on_reject(reason, agent_id)
    rid = wire.peek_request_id(frames)
    if rid is not None:
        send(Reply(request_id=rid, status=error.status, error=str(error)))


class _OnceResponder:
    """Responder for one request: refuses a second reply (it would confuse the agent).

    ``channel`` (None when the link has none) is the link's :class:`ReplyChannel`, and
    ``target`` what that channel needs to address this peer: a server answering a whole
    batch hands all its replies to the channel at once (one pass, one wake-up of the
    link's I/O thread) instead of one :meth:`send` each.
    """

    __slots__ = ("_send", "_slot", "channel", "request_id", "target")

    def __init__(self, send: Callable[[Reply], None], request_id: str,
                 channel: ReplyChannel | None = None, target: Any = None) -> None:
        self._send, self.request_id = send, request_id
        self.channel, self.target = channel, target
        self._slot = [True]  # popped by the one reply: list.pop is atomic, no lock needed

    def claim(self) -> None:
        """Mark this request answered; raises RuntimeError if it already was."""
        try:
            self._slot.pop()
        except IndexError:
            raise RuntimeError(f"request {self.request_id!r} already answered") from None

    def send(self, reply: Reply) -> None:
        self.claim()
        if reply.request_id != self.request_id:
            reply.request_id = self.request_id
        self._send(reply)


class ReplyChannel:
    """A server link's path for many replies at once (the replies of one batch).

    :meth:`send_many` claims each request's responder (a request answered already is
    skipped, never answered twice), encodes the replies together
    (:func:`transport.wire.encode_replies`; a reply that cannot be encoded is answered
    INTERNAL instead, the others are not held up) and hands the encoded messages to the
    link with one call of ``put`` (a list of ``(target, frames)``: the link sends each to
    its peer).
    """

    __slots__ = ("_put",)

    def __init__(self, put: Callable[[list[tuple[Any, list[Any]]]], None]) -> None:
        self._put = put

    def send_many(self, pairs: Sequence[tuple[_OnceResponder, Reply]]) -> None:
        claimed: list[tuple[_OnceResponder, Reply]] = []
        for responder, reply in pairs:
            try:
                responder.claim()
            except RuntimeError as e:
                log.warning("reply not sent: %s", e)
                continue
            if reply.request_id != responder.request_id:
                reply.request_id = responder.request_id
            claimed.append((responder, reply))
        if not claimed:
            return
        try:
            encoded = wire.encode_replies([reply for _, reply in claimed])
        except Exception:  # one of them cannot be encoded: find it, answer the rest
            encoded = [_encode_or_internal(reply) for _, reply in claimed]
        self._put([(responder.target, frames)
                   for (responder, _), frames in zip(claimed, encoded, strict=True)])


def _encode_or_internal(reply: Reply) -> list[Any]:
    """The frames of ``reply``, or of an INTERNAL answer to it when it cannot be encoded
    (the requester learns at once instead of waiting for its deadline)."""
    try:
        return wire.encode(reply)
    except Exception as e:
        log.error("reply %s could not be encoded (%s); answering INTERNAL",
                  reply.request_id, e)
        return wire.encode(Reply(request_id=reply.request_id, status=Status.INTERNAL,
                                 error=f"server error: reply not encodable "
                                       f"({type(e).__name__})"))


def dispatch_client(frames: Sequence[Any], pending: Pending, limits: wire.WireLimits,
                    nbytes: int) -> None:
    """Route one message from the cloud to the future waiting for it."""
    try:
        msg = wire.decode(frames, limits)
    except WireError as e:
        rid = wire.peek_request_id(frames)
        log.warning("undecodable reply from the cloud: %s", e)
        if rid is not None:
            pending.discard(rid, e)
        return
    if isinstance(msg, Reply | Chunk | Directive):
        pending.resolve(msg)  # type: ignore[arg-type]
    elif isinstance(msg, Pong):
        pending.resolve_pong(msg, nbytes)
    else:
        log.warning("unexpected %s from the cloud dropped", type(msg).__name__)

