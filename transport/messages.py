"""Message types that travel between edge agents and cloud cores.

Pure data: no sockets, no codecs. ``transport.wire`` turns these into frames and back.
Tensors are numpy arrays; on decode they are views over the received frames
(zero-copy) when the codec is ``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from contract.deadline import Deadline


class Status(IntEnum):
    """Reply status codes. The server edge maps typed errors to these in one place."""

    OK = 0
    INVALID_INPUT = 1  # malformed frame, wrong shape/dtype/size, bad codec
    UNAUTHORIZED = 2  # unknown key, failed AEAD, replay
    MODEL_NOT_FOUND = 3  # unknown model name
    VERSION_MISMATCH = 4  # bundle digest not loaded (stale or unknown version)
    CUT_NOT_FOUND = 5  # cut id not in the manifest
    DEADLINE_EXCEEDED = 6  # deadline passed before compute
    OVERLOADED = 7  # queue full: back-pressure, try elsewhere or locally
    INTERNAL = 8  # backend failure
    UNAVAILABLE = 9  # shutting down / link lost

    @property
    def retryable(self) -> bool:
        """Whether another endpoint (or local execution) may still succeed."""
        return self in (Status.OVERLOADED, Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED,
                        Status.INTERNAL)


@dataclass(slots=True)
class Request:
    """One inference request for a tail.

    Attributes:
        request_id: unique per agent; replies are matched by it (idempotency key).
        agent_id: the sender; servers overwrite it with the authenticated identity.
        model: bundle model name.
        version: bundle version string.
        digest: sha256 hex of the bundle manifest; the cloud refuses any other.
        cut: cut id from the manifest (``"cloud"`` means the raw inputs, whole model).
        deadline: when the answer stops being useful, on the monotonic clock of the
            process holding the request. The wire carries only the budget left
            (``deadline.remaining_ms()`` at encode time) and the receiver re-anchors it on
            its own clock, so no wall clock is compared across machines.
        tensors: name -> array (the crossing tensors of the cut, batch dim first).
        codec: codec spec used on the wire, e.g. ``"raw"``, ``"fp16"``, ``"int8+lz4"``.
        wire_bytes: bytes of the encoded request, set by the client link when it encodes
            it (0 until then; never on the wire), so the sender learns the size it moved
            without encoding twice.
        traceparent: the W3C traceparent of the sender's span (``""``: untraced); the
            receiver's spans continue that trace. On the wire as the header key ``tp``.
    """

    request_id: str
    agent_id: str
    model: str
    version: str
    digest: str
    cut: str
    deadline: Deadline
    tensors: dict[str, np.ndarray]
    codec: str = "raw"
    wire_bytes: int = 0
    traceparent: str = ""


@dataclass(slots=True)
class Reply:
    """The answer to a :class:`Request`: outputs or an explicit error."""

    request_id: str
    status: Status = Status.OK
    error: str = ""
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    queue_ms: float = 0.0
    compute_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


@dataclass(slots=True)
class Ping:
    """RTT/bandwidth probe. ``payload`` (may be empty) measures uplink bandwidth;
    ``reply_bytes`` asks the server to pad the pong for downlink bandwidth."""

    nonce: int
    sent_at: float
    payload: bytes = b""
    reply_bytes: int = 0


@dataclass(slots=True)
class Pong:
    """Answer to a :class:`Ping`; carries the cloud's current load for placement."""

    nonce: int
    sent_at: float  # echoed from the ping
    server_time: float
    received_bytes: int
    load: LoadReport | None = None
    payload: bytes = b""


@dataclass(slots=True)
class LoadReport:
    """Cloud load as seen by one core: what agents feed to placement."""

    queue_depth: int = 0
    queue_ms: float = 0.0  # recent mean time in queue
    utilisation: float = 0.0  # 0..1 busy fraction of backend workers
    inflight: int = 0


@dataclass(slots=True)
class Fetch:
    """Agent -> core: bytes ``[offset, offset + length)`` of one edge file of a bundle.

    Travels on the agent's own authenticated link, so only an allow-listed agent can
    download anything; the core serves edge files only (manifest, signature, heads,
    device tails, the int8 full model), never tails. ``request_id``, ``agent_id``,
    ``deadline`` and ``wire_bytes`` mean what they mean on a :class:`Request` (links
    send and match both the same way).
    """

    request_id: str
    agent_id: str
    model: str
    version: str
    file: str
    offset: int
    length: int
    deadline: Deadline
    wire_bytes: int = 0


@dataclass(slots=True)
class Chunk:
    """Core -> agent: the answer to a :class:`Fetch` (``data`` empty on an error).

    ``total`` is the file's size; ``sha256`` the whole file's hash as the core has it
    (the signed manifest, not this field, is what the agent trusts).
    """

    request_id: str
    status: Status = Status.OK
    error: str = ""
    file: str = ""
    offset: int = 0
    total: int = 0
    sha256: str = ""
    data: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


@dataclass(slots=True)
class Report:
    """Agent -> core: what the agent runs and how its requests went.

    Counters are cumulative since the agent started (a lost report loses nothing):
    ``requests`` finished, ``cloud`` attempts the cloud answered, ``errors`` among them
    answered with an error status; the percentiles are of the agent's recent window.
    ``staged`` is the version being fetched, ``previous`` the one run before;
    ``update_error`` says why the last update attempt failed.
    """

    request_id: str
    agent_id: str
    model: str
    version: str
    digest: str
    deadline: Deadline
    staged: str = ""
    previous: str = ""
    labels: list[str] = field(default_factory=list)
    requests: int = 0
    cloud: int = 0
    errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    update_error: str = ""
    wire_bytes: int = 0


@dataclass(slots=True)
class Directive:
    """Core -> agent: the bundle version this agent should run (the answer to a
    :class:`Report`); ``target`` is ``{"model", "version", "digest"}`` or None (keep
    what you run)."""

    request_id: str
    status: Status = Status.OK
    error: str = ""
    target: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


Message = Request | Reply | Ping | Pong | Fetch | Chunk | Report | Directive
