"""ZeroMQ link: the cloud binds ROUTER, agents connect DEALER; CurveZMQ by default.

Authentication is pyzmq's ZAP (:class:`zmq.auth.thread.ThreadAuthenticator`) with a
callback over an allow-list read from a directory of agent Curve certificates named
``<agent_id>.pub``. An unknown key fails the handshake, so its frames never reach the
server's socket, let alone the handler. The authenticated ``User-Id`` of each message
(the client's public key) is mapped to an agent id through the *current* allow-list on
every message, so a key removed or replaced at run time
(:meth:`ZmqServerLink.reload_allowed`) stops getting compute on an established
connection too.

Heartbeats (ZMQ_HEARTBEAT_IVL/TIMEOUT/TTL) on both sides make a lost peer visible within
``heartbeat_timeout_ms``: the client's ``connected`` flips to False and requests in
flight fail with :class:`~transport.errors.LinkClosed`. DEALER reconnects by itself when
the server comes back. Requests submitted while not connected fail at once with
``LinkClosed`` (ZMQ_IMMEDIATE), so an agent can fail over without waiting.

Each link owns one I/O thread and one zmq context (ZAP is per context). On the client, a
caller sends its request itself, under the socket's lock (see :class:`_SharedSocket`),
and the I/O thread only receives; on the server, other threads hand the I/O thread
outgoing frames through a queue and a self-pipe, and it sends a batch's replies in one
burst (measured cheaper in CPU per request than each worker sending its own: libzmq's
I/O thread then wakes once per burst, not once per reply). ``handler.on_reject("unknown_key",
None)`` is called from the ZAP thread, every other handler call from the I/O thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zmq
import zmq.auth.thread
from zmq.utils.monitor import recv_monitor_message

from transport import keys, wire
from transport._common import (
    LinkState,
    Pending,
    ReplyChannel,
    Waker,
    dispatch_client,
    dispatch_server,
    refuse,
)
from transport.base import ClientLink, PingResult, ServerHandler, ServerLink
from transport.config import ZmqClientConfig, ZmqServerConfig
from transport.errors import AuthError, KeyFileError, LinkClosed
from transport.messages import Ping, Pong, Reply, Request

__all__ = ["ZmqClientLink", "ZmqServerLink", "load_curve_allow_list"]

log = logging.getLogger(__name__)

_ZAP_DOMAIN = "tiersplit"
_START_TIMEOUT_S = 10.0


def load_curve_allow_list(directory: Path) -> dict[bytes, str]:
    """Z85 public key -> agent id from ``<agent_id>.pub`` certificates in ``directory``.

    Unreadable files are skipped with a warning naming the file (never its contents).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"allow-list directory not found: {directory}")
    allowed: dict[bytes, str] = {}
    for path in sorted(directory.glob("*.pub")):
        try:
            allowed[keys.load_curve_public(path)] = path.stem
        except KeyFileError:
            log.warning("skipping unreadable agent certificate %s", path.name)
    return allowed


# Plain ints: pyzmq's flag enums cost an enum operation per frame on the hot path.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.NOBLOCK | zmq.SNDMORE)


def _recv_frames(sock: zmq.Socket) -> list[zmq.Frame]:
    """One whole multipart message without blocking (:class:`zmq.Again` when none waits).

    ``Frame.more`` instead of a RCVMORE ``getsockopt`` per frame; a multipart message is
    delivered atomically, so its later frames are there once its first one is.
    """
    frame = sock.recv(_NOBLOCK, copy=False)
    parts = [frame]
    while frame.more:
        frame = sock.recv(_NOBLOCK, copy=False)
        parts.append(frame)
    return parts


def _send_frames(sock: zmq.Socket, frames: list) -> None:
    """Send one multipart message without blocking, large frames without a copy (pyzmq
    copies those under its ``copy_threshold`` itself)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, _MORE_NOBLOCK if i < last else _NOBLOCK, copy=False)


_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class _SharedSocket:
    """One ZeroMQ socket that several threads use, each use under one lock.

    The I/O thread waits on the socket's ``ZMQ_FD`` (an OS descriptor: waiting on it
    touches no socket state) instead of on the socket itself, so any thread may send at
    any time under the lock, with no hand-off to the I/O thread. ``ZMQ_FD`` is
    edge-triggered: whatever processes the socket's commands (a send, a receive) may
    consume its signal, so readability is always re-read from ``ZMQ_EVENTS``: the I/O
    thread drains while it says readable, and a sender reports it (the caller then wakes
    the I/O thread).
    """

    __slots__ = ("_lock", "_sock", "fd")

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock: zmq.Socket | None = sock
        self._lock = threading.Lock()
        self.fd = sock.getsockopt(zmq.FD)

    def send(self, frames: list) -> bool | None:
        """Send one message without blocking; whether the socket is readable afterwards
        (None: already closed). Raises :class:`zmq.ZMQError` as a send does."""
        with self._lock:
            sock = self._sock
            if sock is None:
                return None
            _send_frames(sock, frames)
            return bool(sock.getsockopt(_EVENTS) & _POLLIN)

    def drain(self, limit: int) -> tuple[list[list[zmq.Frame]], bool]:
        """Up to ``limit`` waiting messages, and whether more are waiting."""
        out: list[list[zmq.Frame]] = []
        with self._lock:
            sock = self._sock
            if sock is None:
                return out, False
            while sock.getsockopt(_EVENTS) & _POLLIN:
                if len(out) >= limit:
                    return out, True
                try:
                    out.append(_recv_frames(sock))
                except zmq.Again:  # readable said yes, the queue said no: wait again
                    break
        return out, False

    def close(self, before: Callable[[], object] | None = None) -> None:
        """Close the socket (``before`` runs first, under the lock); later sends and
        drains find it closed."""
        with self._lock:
            sock, self._sock = self._sock, None
            if sock is not None:
                if before is not None:
                    before()
                sock.close(0)


def _heartbeats(sock: zmq.Socket, ivl: int, timeout: int, ttl: int) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout)
    sock.setsockopt(zmq.HEARTBEAT_TTL, ttl)


class _Authenticator(zmq.auth.thread.ThreadAuthenticator):
    """ZAP over the link's allow-list."""

    def __init__(self, context: zmq.Context, link: ZmqServerLink) -> None:
        super().__init__(context, log=logging.getLogger(__name__ + ".zap"))
        self._link = link

    def callback(self, domain: str, key: bytes) -> bool:  # credentials provider protocol
        allowed = self._link._agent_for(key) is not None
        if not allowed:
            self._link._count_reject("unknown_key", None)
        return allowed

    # The User-Id stays pyzmq's default, the client's Z85 public key: the server maps it
    # to an agent id on every message, so replacing an agent's key revokes the old one.


class _RouterResponder:
    """Sends frames back to one peer through the server's I/O thread."""

    __slots__ = ("_identity", "_link")

    def __init__(self, link: ZmqServerLink, identity: bytes) -> None:
        self._link, self._identity = link, identity

    def __call__(self, msg: Reply | Pong) -> None:
        self._link._enqueue(self._identity, wire.encode(msg))


class ZmqServerLink(ServerLink):
    """Cloud side of the ZeroMQ link.

    Args:
        cfg: endpoints to bind (port 0 or ``*`` picks a free port; see :attr:`endpoints`
            after start), the Curve certificate and allow-list directory (read here),
            heartbeats and decoder bounds.

    Raises:
        KeyFileError: a key file is missing, malformed or readable by group/others.
    """

    def __init__(self, cfg: ZmqServerConfig) -> None:
        self.config = cfg
        self._want = [e.replace(":0", ":*") if e.endswith(":0") else e for e in cfg.endpoints]
        self._keys = keys.load_curve_secret(cfg.secret_key) if cfg.secret_key else None
        self._allow_dir = Path(cfg.allowed_keys_dir) if cfg.allowed_keys_dir else None
        self._insecure = cfg.insecure
        self._hb = (cfg.heartbeat_ivl_ms, cfg.heartbeat_timeout_ms, cfg.heartbeat_ttl_ms)
        self._limits = cfg.limits
        self._allowed: dict[bytes, str] = {}
        self._allowed_ids: frozenset[str] = frozenset()
        self._revoked: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self._outbox: collections.deque[tuple[bytes, list]] = collections.deque()
        self._waker = Waker()
        self._replies = ReplyChannel(self._enqueue_many)
        self._bound: list[str] = []
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._handler: ServerHandler | None = None
        self._ctx: zmq.Context | None = None
        self._auth: _Authenticator | None = None
        if self._allow_dir is not None:
            self.reload_allowed()

    # -- allow-list -------------------------------------------------------------------

    def reload_allowed(self) -> int:
        """Re-read the allow-list directory; returns how many agents it allows.

        New handshakes and every later message of an established connection are checked
        against the new list.
        """
        if self._allow_dir is None:
            return 0
        allowed = load_curve_allow_list(self._allow_dir)
        with self._lock:
            # Remember who a removed key belonged to, to name it when it is refused.
            for key, agent in self._allowed.items():
                if key not in allowed:
                    self._revoked[key] = agent
            self._allowed = allowed
            self._allowed_ids = frozenset(allowed.values())
        log.info("zmq allow-list: %d agent keys from %s", len(allowed), self._allow_dir)
        return len(allowed)

    @property
    def allowed_agents(self) -> frozenset[str]:
        return self._allowed_ids

    def _agent_for(self, z85_key: bytes) -> str | None:
        # No lock: reload_allowed swaps the whole dict, and reading one reference is
        # atomic, so a message sees either the old list or the new one.
        return self._allowed.get(bytes(z85_key))

    def _count_reject(self, reason: str, agent_id: str | None) -> None:
        if self._handler is not None:
            try:
                self._handler.on_reject(reason, agent_id)
            except Exception:
                log.exception("handler.on_reject failed")

    # -- life cycle -------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return list(self._bound)

    def start(self, handler: ServerHandler) -> None:
        if self._thread is not None:
            raise RuntimeError("ZmqServerLink already started")
        self._handler = handler
        self._ctx = zmq.Context()
        if self._insecure:
            log.warning("zmq server on %s is INSECURE: plaintext, no authentication",
                        self._want)
        else:
            self._auth = _Authenticator(self._ctx, self)
            self._auth.start()
            self._auth.configure_curve_callback(domain=_ZAP_DOMAIN, credentials_provider=self._auth)
        self._thread = threading.Thread(target=self._run, name="tiersplit-zmq-server",
                                        daemon=True)
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT_S):
            raise RuntimeError("zmq server I/O thread did not start")
        if self._start_error is not None:
            self._thread.join()
            self._cleanup_context()
            raise self._start_error

    def stop(self) -> None:
        if self._thread is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._waker.wake()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._cleanup_context()
        self._waker.close()

    def _cleanup_context(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _enqueue(self, identity: bytes, frames: list) -> None:
        self._enqueue_many([(identity, frames)])

    def _enqueue_many(self, messages: list[tuple[bytes, list]]) -> None:
        """Replies (a batch's: queued together, the I/O thread woken once for all)."""
        self._outbox.extend(messages)
        if threading.current_thread() is not self._thread:
            self._waker.wake()  # the I/O thread flushes after each batch anyway

    def _make_socket(self) -> zmq.Socket:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A peer sending a frame larger than any the decoder would accept is cut off by
        # libzmq before the frame is buffered whole.
        lim = self._limits
        sock.setsockopt(zmq.MAXMSGSIZE, max(lim.max_header_bytes, lim.max_tensor_bytes,
                                            lim.max_total_bytes) + 64)
        _heartbeats(sock, *self._hb)
        if not self._insecure:
            assert self._keys is not None
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = self._keys
            sock.zap_domain = _ZAP_DOMAIN.encode()
        try:
            for ep in self._want:
                sock.bind(ep)
                self._bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        except BaseException:
            sock.close(0)  # else terminating the context would wait for it forever
            raise
        return sock

    def _run(self) -> None:
        try:
            sock = self._make_socket()
        except BaseException as e:  # surfaced to start()
            self._start_error = e
            self._started.set()
            return
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._waker.fd, zmq.POLLIN)
        self._started.set()
        try:
            while not self._stopping.is_set():
                events = dict(poller.poll(1000))
                if self._waker.fd in events:
                    self._waker.drain()
                self._flush(sock)
                if sock in events:
                    for _ in range(256):  # bounded batch so replies are not starved
                        try:
                            msg = _recv_frames(sock)
                        except zmq.Again:
                            break
                        self._on_message(msg)
                    self._flush(sock)  # replies a synchronous handler just gave
            self._flush(sock)
        finally:
            sock.close()

    def _flush(self, sock: zmq.Socket) -> None:
        while self._outbox:
            identity, frames = self._outbox.popleft()
            try:
                _send_frames(sock, [identity, *frames])
            except zmq.Again:
                log.warning("reply dropped: peer's queue is full")
            except zmq.ZMQError as e:
                log.info("reply dropped: peer gone (%s)", e.strerror)

    def _on_message(self, msg: list[Any]) -> None:
        identity, frames = msg[0].bytes, msg[1:]
        send = _RouterResponder(self, identity)
        assert self._handler is not None
        if not frames:
            self._count_reject("malformed", None)
            return
        agent_id: str | None = None
        if not self._insecure:
            try:
                user_key = frames[0].get("User-Id") or ""
            except zmq.ZMQError:
                user_key = ""
            agent_id = self._agent_for(user_key.encode())
            if agent_id is None:
                # Authenticated earlier, no longer allowed: revoked at run time.
                with self._lock:
                    former = self._revoked.get(user_key.encode())
                refuse(frames, former, self._handler, "revoked",
                       AuthError("agent key is not (or no longer) allowed"), send)
                return
        try:
            dispatch_server(frames, agent_id, self._handler, self._limits, send,
                            trust_claimed_id=self._insecure, channel=self._replies,
                            target=identity)
        except Exception:
            log.exception("server handler failed on a message from %s", agent_id)


class ZmqClientLink(LinkState, ClientLink):
    """Edge side of the ZeroMQ link: one DEALER connected to one cloud endpoint.

    Connects in the background at construction; see :attr:`connected` and
    :meth:`wait_connected`.

    Args:
        cfg: the endpoint, the agent's Curve certificate and the cloud's public key (read
            here), heartbeats, reconnection and decoder bounds.
        agent_id: this agent's id.

    Raises:
        KeyFileError: a key file is missing, malformed or readable by group/others.
    """

    def __init__(self, cfg: ZmqClientConfig, agent_id: str) -> None:
        self.config = cfg
        if cfg.insecure:
            log.warning("zmq client to %s is INSECURE: plaintext, no authentication",
                        cfg.endpoint)
        self.endpoint, self.agent_id = cfg.endpoint, agent_id
        self._keys = keys.load_curve_secret(cfg.secret_key) if cfg.secret_key else None
        self._server_key = (keys.load_curve_public(cfg.server_public_key)
                            if cfg.server_public_key else None)
        self._insecure = cfg.insecure
        self._hb = (cfg.heartbeat_ivl_ms, cfg.heartbeat_timeout_ms, cfg.heartbeat_ttl_ms)
        self._reconnect = (cfg.reconnect_ivl_ms, cfg.reconnect_ivl_max_ms)
        self._limits = cfg.limits
        self._pending = Pending()
        self._shared: _SharedSocket | None = None  # set by the I/O thread once connected
        self._waker = Waker()
        self._init_state()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._ctx = zmq.Context()
        self._thread = threading.Thread(target=self._run, name="tiersplit-zmq-client",
                                        daemon=True)
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT_S) or self._start_error is not None:
            self.close()
            raise self._start_error or RuntimeError("zmq client I/O thread did not start")

    # -- ClientLink -------------------------------------------------------------------

    def submit(self, request: Request) -> Future[Reply]:
        request.agent_id = self.agent_id
        fut = self._pending.add(request.request_id, request.deadline)
        if fut.done():
            return fut
        if self._closed.is_set() or not self._connected:
            self._pending.discard(request.request_id, LinkClosed(
                "link closed" if self._closed.is_set() else f"not connected to {self.endpoint}"))
            return fut
        try:
            frames = wire.encode(request)
        except Exception as e:
            self._pending.discard(request.request_id, e)
            return fut
        request.wire_bytes = wire.wire_bytes(frames)
        err = self._send(frames)
        if err is not None:
            self._pending.discard(request.request_id, err)
        return fut

    def _send(self, frames: list) -> LinkClosed | None:
        """Send on the caller's thread (no hand-off to the I/O thread); the error to fail
        the message with, if it could not be sent."""
        shared = self._shared
        try:
            readable = shared.send(frames) if shared is not None else None
        except zmq.Again:
            return LinkClosed(f"not connected to {self.endpoint}")
        except zmq.ZMQError as e:
            return LinkClosed(f"send failed: {e.strerror}")
        if readable is None:
            return LinkClosed("link closed")
        if readable:
            self._waker.wake()  # the send may have taken the I/O thread's wake-up signal
        return None

    def ping(self, payload_bytes: int = 0, reply_bytes: int = 0,
             timeout: float = 2.0) -> PingResult:
        if self._closed.is_set():
            raise LinkClosed("link closed")
        if not self._connected:
            raise LinkClosed(f"not connected to {self.endpoint}")
        nonce, fut = self._pending.add_ping(0)
        frames = wire.encode(Ping(nonce=nonce, sent_at=time.time(),
                                  payload=bytes(payload_bytes), reply_bytes=reply_bytes))
        err = self._send(frames)
        if err is not None:
            self._pending.drop_ping(nonce)
            raise err
        return self._pending.await_pong(nonce, fut, timeout, frames)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._waker.wake()
        in_io_thread = threading.current_thread() is self._thread
        if not in_io_thread and self._thread.is_alive():
            self._thread.join()
        if self._start_error is not None or not self._started.is_set():
            self._ctx.term()  # the I/O thread never got to own the context
        self._pending.fail_all(lambda: LinkClosed("link closed"))
        if not in_io_thread:
            self._waker.close()
        self._set_connected(False)

    # -- I/O thread -------------------------------------------------------------------

    def _set_connected(self, value: bool) -> None:
        self._change_state(value, f"zmq link to {self.endpoint}",
                           f"lost the cloud at {self.endpoint}")

    def _make_socket(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, self._reconnect[0])
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self._reconnect[1])
        _heartbeats(sock, *self._hb)
        if not self._insecure:
            assert self._keys is not None and self._server_key is not None
            sock.curve_publickey, sock.curve_secretkey = self._keys
            sock.curve_serverkey = self._server_key
        return sock

    def _run(self) -> None:
        sock = mon = None
        try:
            sock = self._make_socket()
            mon = sock.get_monitor_socket()
            sock.connect(self.endpoint)
        except BaseException as e:  # surfaced to the constructor
            for s in (mon, sock):
                if s is not None:
                    s.close(0)
            self._start_error = e
            self._started.set()
            return
        shared = _SharedSocket(sock)
        poller = zmq.Poller()
        poller.register(shared.fd, zmq.POLLIN)
        poller.register(mon, zmq.POLLIN)
        poller.register(self._waker.fd, zmq.POLLIN)
        self._shared = shared
        self._started.set()
        more = False
        try:
            while not self._closed.is_set():
                nxt = self._pending.expire()
                wait_ms = 500 if nxt is None else max(0, min(500, int(
                    (nxt - time.monotonic()) * 1000) + 1))
                events = dict(poller.poll(0 if more else wait_ms))
                if mon in events:
                    self._on_monitor(mon)
                if self._waker.fd in events:
                    self._waker.drain()
                # Always drain: a caller's send may have consumed the descriptor's signal.
                msgs, more = shared.drain(256)
                for msg in msgs:
                    nbytes = sum(len(f.buffer) for f in msg)
                    dispatch_client(msg, self._pending, self._limits, nbytes)
        finally:
            self._shared = None
            shared.close(before=sock.disable_monitor)
            mon.close(0)
            self._ctx.term()  # here, so that close() from a callback cannot deadlock

    def _on_monitor(self, mon: zmq.Socket) -> None:
        while True:
            try:
                ev = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = ev["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._set_connected(True)
            elif kind in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                self._set_connected(False)
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                log.warning("the cloud at %s refused this agent's key", self.endpoint)
                self._set_connected(False)
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                log.warning("handshake with %s failed (wrong server key or mechanism?)",
                            self.endpoint)

