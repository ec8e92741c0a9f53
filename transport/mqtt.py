"""MQTT link (paho-mqtt 2.x, MQTT v5, QoS 1) with end-to-end AEAD payloads.

Topics, per agent::

    <prefix>/req/<agent_id>    agent -> cloud   (cloud replicas read them through
                               ``$share/<group>/<prefix>/req/+``: adding a replica scales out)
    <prefix>/rep/<agent_id>    cloud -> agent

Cloud presence: ``<prefix>/cloud/<client_id>`` (retained, cleared by a will), so agents
see whether any cloud replica is up, not only the broker.

The broker is trusted with delivery, not with activations: every payload is the packed
wire frames sealed by :mod:`transport.aead` with a key only that agent and the cloud can
derive. The allow-list is a directory of agent X25519 public keys ``<agent_id>.pub``; a
message on the topic of an unknown agent, or one that fails authentication or the replay
window, never reaches the handler (it is counted through ``handler.on_reject``) and is not
answered: the link cannot tell a real request id from a forged one.

TLS to the broker is on by default, with username/password and/or a client certificate.

Replay protection is per replica: each replica remembers what it has opened. With several
replicas a replayed request (within ``max_skew_s``) may be delivered to a replica that
has not seen the original and be computed once more; its reply is sealed to the real
agent, which drops it (unknown request id, and replies have their own replay window), so
the cost is wasted compute, never leaked data. Lower ``max_skew_s`` to narrow it.

Clock skew: the replay check compares the sender's wall-clock stamp with the receiver's
clock, within ``max_skew_s`` (120 s by default). A device whose clock is off by less
works as if it were right (deadlines never depend on wall clocks: they travel as a
budget). Beyond it, its payloads are refused as possible replays and the receiving link
logs one warning per peer naming the measured skew and the fix (sync the device clock,
or raise ``max_skew_s`` on both sides); the agent finishes those requests on the device.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from transport import aead, keys, wire
from transport._common import (
    LinkState,
    Pending,
    ReplyChannel,
    dispatch_client,
    dispatch_server,
)
from transport.base import ClientLink, PingResult, ServerHandler, ServerLink
from transport.config import MqttBrokerConfig, MqttClientConfig, MqttServerConfig
from transport.errors import (
    ClockSkewError,
    KeyFileError,
    LinkClosed,
    TransportError,
    WireError,
)
from transport.messages import Ping, Pong, Reply, Request

__all__ = ["MqttClientLink", "MqttServerLink", "load_x25519_allow_list"]

log = logging.getLogger(__name__)

_AGENT_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_CONNECT_TIMEOUT_S = 10.0
_FLUSH_TIMEOUT_S = 5.0
_PRUNE_MIN = 256  # replies remembered before published ones are forgotten


def load_x25519_allow_list(directory: Path) -> dict[str, X25519PublicKey]:
    """agent id -> X25519 public key from ``<agent_id>.pub`` files in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"allow-list directory not found: {directory}")
    out: dict[str, X25519PublicKey] = {}
    for path in sorted(directory.glob("*.pub")):
        if not _AGENT_ID.match(path.stem):
            log.warning("skipping %s: not a valid agent id", path.name)
            continue
        try:
            out[path.stem] = keys.load_x25519_public(path)
        except KeyFileError:
            log.warning("skipping unreadable agent key %s", path.name)
    return out


def _password(cfg: MqttBrokerConfig) -> str | None:
    if cfg.password is not None:
        return cfg.password.get_secret_value()
    if cfg.password_file is not None:
        keys.check_secret_permissions(Path(cfg.password_file))
        return Path(cfg.password_file).read_text().strip()
    return None


def _nodelay(client: paho.Client) -> None:
    """Disable Nagle on the broker connection (paho leaves it on): small QoS 1 packets
    would otherwise wait for delayed ACKs, adding tens of ms to every round trip."""
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_paho_client(cfg: MqttBrokerConfig, client_id: str) -> paho.Client:
    """A paho v5 client configured for ``cfg`` (not yet connected)."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5, reconnect_on_failure=True)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, _password(cfg))
    if cfg.tls:
        if cfg.client_key is not None:
            keys.check_secret_permissions(Path(cfg.client_key))
        client.tls_set(ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                       certfile=str(cfg.client_cert) if cfg.client_cert else None,
                       keyfile=str(cfg.client_key) if cfg.client_key else None,
                       cert_reqs=ssl.CERT_REQUIRED)
    else:
        log.warning("MQTT to %s:%d without TLS: credentials travel in clear "
                    "(payloads stay end-to-end encrypted)", cfg.host, cfg.port)
    client.reconnect_delay_set(max(1, int(cfg.reconnect_min_s)),
                               max(1, int(cfg.reconnect_max_s)))
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    return client


class _SkewLog:
    """Says once per peer, in one line, that its payloads are refused for clock skew,
    with the measured skew and the fix; later refusals of that peer are logged at debug.

    Args:
        what: names whose payloads are refused (``{peer}`` is replaced by the peer).
        whose: whose clock the skew is measured against (``"the cloud's"``).
    """

    _MAX_PEERS = 4096

    def __init__(self, what: str, whose: str) -> None:
        self._what, self._whose = what, whose
        self._told: set[str] = set()
        self._lock = threading.Lock()

    def report(self, peer: str, e: ClockSkewError) -> None:
        with self._lock:
            first = peer not in self._told
            if first:
                if len(self._told) >= self._MAX_PEERS:
                    self._told.clear()
                self._told.add(peer)
        what = self._what.format(peer=peer)
        if not first:
            log.debug("%s refused: %s", what, e)
            return
        log.warning("%s refused: they are stamped %+.1f s from %s clock, beyond max_skew_s="
                    "%g s. Sync the clocks (NTP/chrony on the device) or raise max_skew_s in "
                    "both link configs; if the clocks are right these are replayed captures.",
                    what, e.skew_s, self._whose, e.limit_s)


@dataclass(slots=True)
class _AgentCrypto:
    public: bytes
    opener: aead.Opener
    sealer: aead.Sealer


class MqttServerLink(ServerLink):
    """Cloud side of the MQTT link (one replica; run several with the same ``group``).

    Args:
        cfg: the broker, the cloud's X25519 private key and the allow-list directory of
            ``<agent_id>.pub`` X25519 public keys (read here), the topic prefix, the
            shared-subscription group, the MQTT client id (random when None), the AEAD
            algorithm for replies, the replay window, the accepted clock skew of payload
            stamps and the decoder bounds.

    Raises:
        KeyFileError: a key file is missing, malformed or readable by group/others.
    """

    def __init__(self, cfg: MqttServerConfig) -> None:
        self.config = cfg
        self._broker = cfg.broker
        self._secret = keys.load_x25519_private(cfg.secret_key)
        self._allow_dir = Path(cfg.allowed_keys_dir)
        self._prefix, self._group = cfg.prefix, cfg.group
        self._client_id = cfg.client_id or f"tiersplit-cloud-{uuid.uuid4().hex[:12]}"
        self._alg: aead.Algorithm = cfg.aead
        self._window, self._skew = cfg.replay_window, cfg.max_skew_s
        self._limits = cfg.limits
        self._lock = threading.Lock()
        self._agents: dict[str, _AgentCrypto] = {}
        self._sender = uuid.uuid4().bytes[:8]
        self._handler: ServerHandler | None = None
        self._client: paho.Client | None = None
        self._subscribed = threading.Event()
        self._inflight: set[Any] = set()
        self._inflight_lock = threading.Lock()
        self._prune_at = _PRUNE_MIN
        self.presence_topic = f"{cfg.prefix}/cloud/{self._client_id}"
        self._skew_log = _SkewLog("requests of agent {peer}", "the cloud's")
        self._replies = ReplyChannel(self._publish_many)
        self.reload_allowed()

    @property
    def request_filter(self) -> str:
        return f"$share/{self._group}/{self._prefix}/req/+"

    @property
    def endpoints(self) -> list[str]:
        scheme = "mqtts" if self._broker.tls else "mqtt"
        return [f"{scheme}://{self._broker.host}:{self._broker.port}/{self._prefix}"]

    # -- allow-list -------------------------------------------------------------------

    def reload_allowed(self) -> int:
        """Re-read the allow-list; agents whose key is unchanged keep their replay state."""
        from cryptography.hazmat.primitives import serialization

        found = load_x25519_allow_list(self._allow_dir)
        fresh: dict[str, _AgentCrypto] = {}
        for agent_id, pub in found.items():
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            with self._lock:
                old = self._agents.get(agent_id)
            if old is not None and old.public == raw:
                fresh[agent_id] = old
                continue
            try:
                fresh[agent_id] = _AgentCrypto(
                    public=raw,
                    opener=aead.Opener(aead.derive_key(self._secret, pub, agent_id, "req"),
                                       agent_id, "req",
                                       aead.ReplayWindow(self._window, self._skew)),
                    sealer=aead.Sealer(aead.derive_key(self._secret, pub, agent_id, "rep"),
                                       agent_id, "rep", self._alg, sender=self._sender))
            except TransportError:
                log.warning("skipping agent %s: unusable public key", agent_id)
        with self._lock:
            self._agents = fresh
        log.info("mqtt allow-list: %d agent keys from %s", len(fresh), self._allow_dir)
        return len(fresh)

    @property
    def allowed_agents(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._agents)

    # -- life cycle -------------------------------------------------------------------

    def start(self, handler: ServerHandler) -> None:
        if self._client is not None:
            raise RuntimeError("MqttServerLink already started")
        self._handler = handler
        client = make_paho_client(self._broker, self._client_id)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        # Presence: retained "1" while up; the broker clears it (will) if we vanish.
        client.will_set(self.presence_topic, b"", qos=1, retain=True)
        self._client = client
        client.connect_async(self._broker.host, self._broker.port, self._broker.keepalive_s,
                             clean_start=True)
        client.loop_start()
        if not self._subscribed.wait(_CONNECT_TIMEOUT_S):
            client.loop_stop()
            self._client = None
            raise LinkClosed(f"could not subscribe at the broker {self.endpoints[0]} within "
                             f"{_CONNECT_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.on_disconnect = None
        client.unsubscribe(self.request_filter)
        deadline = time.monotonic() + _FLUSH_TIMEOUT_S
        with self._inflight_lock:  # agents see this replica leave
            self._inflight.add(client.publish(self.presence_topic, b"", qos=1, retain=True))
        with self._inflight_lock:
            infos = list(self._inflight)
        for info in infos:  # replies already handed to responders
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(left)
        client.disconnect()
        client.loop_stop()

    # -- paho callbacks (network thread) ----------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        if rc.is_failure:
            log.warning("broker refused the cloud's connection: %s", rc)
            return
        _nodelay(client)
        client.publish(self.presence_topic, b"1", qos=1, retain=True)
        client.subscribe(self.request_filter, qos=1)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, rcs: Any,
                      props: Any) -> None:
        if rcs and not rcs[0].is_failure:
            log.info("mqtt server consuming %s", self.request_filter)
            self._subscribed.set()
        else:
            log.error("broker refused the subscription %s: %s", self.request_filter, rcs)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        log.warning("mqtt server lost the broker (%s); reconnecting", rc)

    def _reject(self, reason: str, agent_id: str | None) -> None:
        if self._handler is not None:
            try:
                self._handler.on_reject(reason, agent_id)
            except Exception:
                log.exception("handler.on_reject failed")

    def _on_message(self, client: paho.Client, userdata: Any, msg: Any) -> None:
        agent_id = msg.topic.rsplit("/", 1)[-1]
        with self._lock:
            crypto = self._agents.get(agent_id)
        if crypto is None:
            log.info("message for unknown agent %s refused", agent_id[:128])
            self._reject("unknown_agent", agent_id[:128])
            return
        try:
            opened = crypto.opener.open(msg.payload)
            frames = wire.unpack_frames(opened.plaintext, self._limits)
        except ClockSkewError as e:
            self._skew_log.report(agent_id, e)
            self._reject(e.reason, agent_id)
            return
        except (TransportError, WireError) as e:
            log.info("payload from %s refused: %s", agent_id, e)
            self._reject(e.reason, agent_id)
            return
        assert self._handler is not None
        try:
            dispatch_server(frames, agent_id, self._handler, self._limits,
                            lambda m: self._send(agent_id, m), channel=self._replies,
                            target=agent_id)
        except Exception:
            log.exception("server handler failed on a message from %s", agent_id)

    def _send(self, agent_id: str, msg: Reply | Pong) -> None:
        self._publish_many([(agent_id, wire.encode(msg))])

    def _publish_many(self, messages: list[tuple[str, list]]) -> None:
        """Seal and publish encoded messages, each ``(agent_id, frames)``, in one loop
        (a batch's replies: the allow-list read once, the in-flight set locked once)."""
        with self._lock:
            agents = self._agents
        client = self._client
        infos = []
        for agent_id, frames in messages:
            crypto = agents.get(agent_id)
            if crypto is None or client is None:
                log.info("reply to %s dropped: agent revoked or link stopped", agent_id)
                continue
            payload = crypto.sealer.seal(wire.pack_frames(frames))
            infos.append(client.publish(f"{self._prefix}/rep/{agent_id}", payload, qos=1))
        with self._inflight_lock:
            self._inflight.update(infos)
            if len(self._inflight) > self._prune_at:
                # Forget published replies in bulk, not on every reply: the set only
                # serves stop(), to wait for replies still on their way.
                self._inflight = {i for i in self._inflight if not i.is_published()}
                self._prune_at = max(_PRUNE_MIN, 2 * len(self._inflight))


class MqttClientLink(LinkState, ClientLink):
    """Edge side of the MQTT link. Connects in the background at construction.

    ``connected`` is True while the broker connection is up, the reply topic is
    subscribed and at least one cloud replica is present: replicas publish a retained
    ``<prefix>/cloud/<client_id>`` marker while up and clear it on stop, and the broker
    clears it (their MQTT will) when one vanishes, after 1.5 x its keepalive. Requests in
    flight fail with ``LinkClosed`` when ``connected`` goes False.

    Args:
        cfg: the broker, the agent's X25519 private key and the cloud's public key (read
            here), the topic prefix, AEAD algorithm, replay window, accepted clock skew and
            decoder bounds.
        agent_id: this agent's id (it names the agent's topics).

    Raises:
        KeyFileError: a key file is missing, malformed or readable by group/others.
        ValueError: ``agent_id`` cannot be a topic level.
    """

    def __init__(self, cfg: MqttClientConfig, agent_id: str) -> None:
        if not _AGENT_ID.match(agent_id):
            raise ValueError(f"agent id {agent_id!r} must match {_AGENT_ID.pattern}")
        self.config = cfg
        self.agent_id, self._prefix, self._limits = agent_id, cfg.prefix, cfg.limits
        self._broker = broker = cfg.broker
        secret_key = keys.load_x25519_private(cfg.secret_key)
        server_public_key = keys.load_x25519_public(cfg.server_public_key)
        self._sealer = aead.Sealer(aead.derive_key(secret_key, server_public_key, agent_id,
                                                   "req"), agent_id, "req", cfg.aead)
        self._opener = aead.Opener(aead.derive_key(secret_key, server_public_key, agent_id,
                                                   "rep"), agent_id, "rep",
                                   aead.ReplayWindow(cfg.replay_window, cfg.max_skew_s))
        self._pending = Pending()
        self._skew_log = _SkewLog("replies of the cloud", f"agent {agent_id}'s")
        self._init_state()
        self._subscribed = False
        self._replicas: set[str] = set()
        client_id = f"tiersplit-agent-{agent_id}-{uuid.uuid4().hex[:8]}"
        self._client = make_paho_client(broker, client_id)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.connect_async(broker.host, broker.port, broker.keepalive_s,
                                   clean_start=True)
        self._client.loop_start()
        self._reaper = threading.Thread(target=self._reap, name="tiersplit-mqtt-deadlines",
                                        daemon=True)
        self._reaper.start()

    @property
    def request_topic(self) -> str:
        return f"{self._prefix}/req/{self.agent_id}"

    @property
    def reply_topic(self) -> str:
        return f"{self._prefix}/rep/{self.agent_id}"

    @property
    def presence_filter(self) -> str:
        return f"{self._prefix}/cloud/+"

    @property
    def cloud_replicas(self) -> frozenset[str]:
        """Client ids of the cloud replicas currently present on the broker."""
        with self._cv:
            return frozenset(self._replicas)

    # -- ClientLink -------------------------------------------------------------------

    def _seal(self, frames: list) -> bytearray:
        return self._sealer.seal(wire.pack_frames(frames))

    def _publish(self, payload: bytes | bytearray) -> None:
        info = self._client.publish(self.request_topic, payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise LinkClosed(f"publish failed: {paho.error_string(info.rc)}")

    def submit(self, request: Request) -> Future[Reply]:
        request.agent_id = self.agent_id
        fut = self._pending.add(request.request_id, request.deadline)
        if fut.done():
            return fut
        if self._closed.is_set() or not self._connected:
            self._pending.discard(request.request_id, LinkClosed(
                "link closed" if self._closed.is_set()
                else "not connected (broker unreachable or no cloud replica present)"))
            return fut
        try:
            payload = self._seal(wire.encode(request))
            # Set before publishing: the reply may race back before publish() returns.
            request.wire_bytes = len(payload)
            self._publish(payload)
        except Exception as e:
            self._pending.discard(request.request_id, e)
            return fut
        with self._cv:
            self._cv.notify_all()  # the reaper may need an earlier wake-up
        return fut

    def ping(self, payload_bytes: int = 0, reply_bytes: int = 0,
             timeout: float = 2.0) -> PingResult:
        if self._closed.is_set() or not self._connected:
            raise LinkClosed("link closed" if self._closed.is_set()
                             else "not connected (broker unreachable or no cloud replica)")
        nonce, fut = self._pending.add_ping(0)
        frames = wire.encode(Ping(nonce=nonce, sent_at=time.time(),
                                  payload=bytes(payload_bytes), reply_bytes=reply_bytes))
        try:
            self._publish(self._seal(frames))
        except LinkClosed:
            self._pending.drop_ping(nonce)
            raise
        return self._pending.await_pong(nonce, fut, timeout, frames)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._cv:
            self._cv.notify_all()
        self._client.disconnect()
        self._client.loop_stop()
        if threading.current_thread() is not self._reaper:
            self._reaper.join()
        self._pending.fail_all(lambda: LinkClosed("link closed"))
        self._set_connected(False)

    # -- threads ----------------------------------------------------------------------

    def _reap(self) -> None:
        while not self._closed.is_set():
            nxt = self._pending.expire()
            wait = 0.5 if nxt is None else min(0.5, max(0.0, nxt - time.monotonic()) + 0.001)
            with self._cv:
                self._cv.wait(wait)

    def _set_connected(self, value: bool) -> None:
        # "connected" means the broker is up and a cloud replica is present
        self._change_state(value, f"mqtt link of agent {self.agent_id}",
                           "lost the broker connection")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        if rc.is_failure:
            log.warning("broker refused agent %s: %s", self.agent_id, rc)
            return
        _nodelay(client)
        client.subscribe([(self.reply_topic, 1), (self.presence_filter, 1)])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, rcs: Any,
                      props: Any) -> None:
        if rcs and not any(rc.is_failure for rc in rcs):
            with self._cv:
                self._subscribed = True
            self._update_state()
        else:
            log.error("broker refused the subscriptions %s: %s", self.reply_topic, rcs)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        with self._cv:
            self._subscribed = False
            self._replicas.clear()
        self._update_state()

    def _update_state(self) -> None:
        # Usable = broker up, reply topic subscribed and at least one cloud replica present.
        with self._cv:
            up = self._subscribed and bool(self._replicas)
        self._set_connected(up)

    def _on_message(self, client: paho.Client, userdata: Any, msg: Any) -> None:
        if msg.topic.startswith(f"{self._prefix}/cloud/"):
            replica = msg.topic.rsplit("/", 1)[-1]
            with self._cv:
                if msg.payload:
                    self._replicas.add(replica)
                else:
                    self._replicas.discard(replica)
            self._update_state()
            return
        try:
            opened = self._opener.open(msg.payload)
            frames = wire.unpack_frames(opened.plaintext, self._limits)
        except ClockSkewError as e:
            self._skew_log.report("cloud", e)
            return
        except TransportError as e:
            log.warning("reply payload refused: %s", e)
            return
        dispatch_client(frames, self._pending, self._limits, len(msg.payload))
