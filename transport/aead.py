"""End-to-end payload encryption for links through an untrusted broker (MQTT). Pure: no I/O.

Keys: X25519 between the agent's static key and the cloud's static key, then HKDF-SHA256
with the agent id and the direction in ``info``, so each (agent, direction) has its own
key and only the agent and the cloud can derive it. The broker sees topics and sizes,
never activations.

Envelope (all integers big-endian)::

    version (1) | alg (1) | sender (8) | seq (8) | nonce (12) | ciphertext + tag (16)

``sender`` is a random id per sealing instance (each cloud replica, each agent run), so
replicas sharing the cloud key keep independent sequence spaces. ``seq`` is a
microsecond timestamp made strictly increasing per sender: receivers refuse repeats,
sequences older than their window, and stamps further than ``max_skew_s`` from their
clock (so even a receiver that restarted with an empty window refuses old captures).

This is the one place a wall clock is compared across machines, and it is bounded: a
sender whose clock is off by less than ``max_skew_s`` (120 s by default) works as if it
were right; beyond that its payloads are refused with :class:`ClockSkewError`, raised
only for payloads that authenticate (so a forged stamp cannot pose as a skewed peer),
carrying the measured skew so the link can say once, plainly, what is wrong and how to
fix it (sync the clock, or raise ``max_skew_s`` on both sides).
Nonces are random (96 bits), so replicas never reuse a (key, nonce) pair.

Associated data binds the envelope header, the agent id and the direction: a payload
moved to another agent's topic or turned from request into reply fails authentication.
The replay window is updated only after successful decryption, so forged envelopes
cannot poison it.
"""

from __future__ import annotations

import heapq
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from transport.errors import AuthError, ClockSkewError, ReplayError

__all__ = [
    "ENVELOPE_OVERHEAD",
    "Algorithm",
    "Direction",
    "Opened",
    "Opener",
    "ReplayWindow",
    "Sealer",
    "derive_key",
]

Algorithm = Literal["chacha20poly1305", "aes256gcm"]
Direction = Literal["req", "rep"]

_VERSION = 1
_ALGS: dict[str, tuple[int, type]] = {"chacha20poly1305": (1, ChaCha20Poly1305),
                                      "aes256gcm": (2, AESGCM)}
_ALG_BY_ID = {v[0]: (k, v[1]) for k, v in _ALGS.items()}
_HEADER = struct.Struct(">BB8sQ12s")
_TAG = 16
ENVELOPE_OVERHEAD = _HEADER.size + _TAG


def derive_key(own: X25519PrivateKey, peer: X25519PublicKey, agent_id: str,
               direction: Direction) -> bytes:
    """The 32-byte key for one (agent, direction) from a static X25519 agreement."""
    shared = own.exchange(peer)
    if shared == bytes(32):  # low-order peer point: refuse rather than use an all-zero key
        raise AuthError("peer public key is not usable for key agreement")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"tiersplit-aead-v1",
                info=f"{direction}|{agent_id}".encode()).derive(shared)


def _aad_prefix(agent_id: str, direction: str) -> bytes:
    return b"tiersplit/" + direction.encode() + b"/" + agent_id.encode() + b"|"


class Sealer:
    """Encrypts outgoing payloads for one (agent, direction). Thread-safe."""

    def __init__(self, key: bytes, agent_id: str, direction: Direction,
                 alg: Algorithm = "chacha20poly1305", sender: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._alg_id, cls = _ALGS[alg]
        self._aead = cls(key)
        self.agent_id, self.direction = agent_id, direction
        self.sender = sender if sender is not None else os.urandom(8)
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()
        self._aad = _aad_prefix(agent_id, direction)

    def _next_seq(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, int(self._clock() * 1_000_000))
            return self._last

    def seal(self, plaintext: bytes | memoryview) -> bytearray:
        """The envelope of ``plaintext`` (header + ciphertext + tag), as a bytearray."""
        header = _HEADER.pack(_VERSION, self._alg_id, self.sender, self._next_seq(),
                              os.urandom(12))
        # Encrypted straight behind the header: no copy of the plaintext or ciphertext.
        size = memoryview(plaintext).nbytes
        out = bytearray(_HEADER.size + size + _TAG)
        out[:_HEADER.size] = header
        self._aead.encrypt_into(header[-12:], plaintext, self._aad + header,
                                memoryview(out)[_HEADER.size:])
        return out


class ReplayWindow:
    """Replay protection per sender: the last ``size`` sequence numbers, plus a clock bound.

    Args:
        size: sequence numbers remembered per sender. A repeat of any of them is refused;
            once ``size`` are remembered, anything not newer than the oldest of them is
            refused as stale (so reordering up to ``size`` messages is tolerated).
        max_skew_s: refuse stamps further than this from the local clock; this bounds
            replays to a receiver that restarted with an empty window.
        max_senders: senders remembered (least recently used forgotten first).
    """

    def __init__(self, size: int = 4096, max_skew_s: float = 120.0, max_senders: int = 4096,
                 clock: Callable[[], float] = time.time) -> None:
        self.size, self.max_skew_us = size, int(max_skew_s * 1_000_000)
        self._max_senders, self._clock = max_senders, clock
        self._peers: OrderedDict[bytes, tuple[list[int], set[int]]] = OrderedDict()
        self._lock = threading.Lock()

    def _check_locked(self, sender: bytes, seq: int) -> None:
        now_us = int(self._clock() * 1_000_000)
        if abs(seq - now_us) > self.max_skew_us:
            skew, limit = (seq - now_us) / 1e6, self.max_skew_us / 1e6
            raise ClockSkewError(f"payload stamped {skew:+.1f} s from this receiver's clock: "
                                 f"clock skew beyond the accepted {limit:g} s", skew_s=skew,
                                 limit_s=limit)
        entry = self._peers.get(sender)
        if entry is None:
            return
        heap, seen = entry
        if seq in seen:
            raise ReplayError("sequence number already seen (replay)")
        if len(seen) >= self.size and seq < heap[0]:
            raise ReplayError("sequence number older than the replay window")

    def check(self, sender: bytes, seq: int) -> None:
        """Raise :class:`ReplayError` if ``seq`` from ``sender`` would be refused."""
        with self._lock:
            self._check_locked(sender, seq)

    def accept(self, sender: bytes, seq: int) -> None:
        """Check and record ``seq`` (call only after the payload authenticated)."""
        with self._lock:
            self._check_locked(sender, seq)
            heap, seen = self._peers.pop(sender, None) or ([], set())
            heapq.heappush(heap, seq)
            seen.add(seq)
            while len(seen) > self.size:
                seen.discard(heapq.heappop(heap))
            self._peers[sender] = (heap, seen)
            while len(self._peers) > self._max_senders:
                self._peers.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Opened:
    """A decrypted payload and who sent it."""

    plaintext: bytes
    sender: bytes
    seq: int


class Opener:
    """Decrypts and replay-checks incoming payloads for one (agent, direction)."""

    def __init__(self, key: bytes, agent_id: str, direction: Direction,
                 window: ReplayWindow | None = None) -> None:
        self._aeads = {alg_id: cls(key) for alg_id, cls in _ALGS.values()}
        self.agent_id, self.direction = agent_id, direction
        self._aad = _aad_prefix(agent_id, direction)
        self.window = window if window is not None else ReplayWindow()

    def open(self, envelope: bytes | memoryview) -> Opened:
        """Authenticate, decrypt and replay-check one envelope.

        Raises:
            AuthError: truncated, tampered, wrong key/agent/direction, unknown version.
            ClockSkewError: authentic, but stamped further than ``max_skew_s`` from this
                receiver's clock.
            ReplayError: repeated or stale sequence number.
        """
        env = bytes(envelope)
        if len(env) < ENVELOPE_OVERHEAD:
            raise AuthError("payload too short to be an envelope (truncated?)")
        version, alg_id, sender, seq, nonce = _HEADER.unpack_from(env, 0)
        if version != _VERSION or alg_id not in self._aeads:
            raise AuthError("unknown envelope version or algorithm")
        try:
            self.window.check(sender, seq)
        except ClockSkewError:
            self._decrypt(env, alg_id, nonce)  # a forged stamp fails here, as AuthError
            raise
        pt = self._decrypt(env, alg_id, nonce)
        self.window.accept(sender, seq)
        return Opened(pt, sender, seq)

    def _decrypt(self, env: bytes, alg_id: int, nonce: bytes) -> bytes:
        header = env[:_HEADER.size]
        try:  # the ciphertext as a view: no copy of it
            return self._aeads[alg_id].decrypt(nonce, memoryview(env)[_HEADER.size:],
                                               self._aad + header)
        except InvalidTag:
            raise AuthError("payload failed authentication (tampered or wrong key)") from None
