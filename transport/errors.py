"""Typed errors of the transport floor.

Every failure to decode, authenticate or deliver raises one of these; the server edge
maps them to a :class:`transport.messages.Status` via ``status``. Messages never contain
key material or tensor contents.
"""

from __future__ import annotations

from transport.messages import Status


class TransportError(Exception):
    """Base of every transport failure. ``status`` is what a reply should carry."""

    status: Status = Status.INTERNAL
    reason: str = "transport"


class WireError(TransportError):
    """A frame could not be decoded (malformed, lying header, limits). Reply INVALID_INPUT."""

    status = Status.INVALID_INPUT
    reason = "malformed"


class VersionError(WireError):
    """Unknown wire version byte."""

    reason = "wire_version"


class LimitError(WireError):
    """A declared size exceeds the configured limits (checked before allocation)."""

    reason = "oversize"


class DTypeError(WireError):
    """A dtype outside the allow-list."""

    reason = "dtype"


class CodecError(WireError):
    """Unknown codec or a payload the codec cannot decode."""

    reason = "codec"


class AuthError(TransportError):
    """Peer not authenticated, decryption failed, or replayed/stale sequence. UNAUTHORIZED."""

    status = Status.UNAUTHORIZED
    reason = "auth"


class ReplayError(AuthError):
    """Sequence number already seen or older than the replay window."""

    reason = "replay"


class ClockSkewError(ReplayError):
    """An authentic payload stamped further from the receiver's clock than the link's
    ``max_skew_s``: the sender's wall clock is off, or the payload is an old capture.

    Attributes:
        skew_s: the stamp minus the receiver's clock, in seconds (positive: ahead).
        limit_s: the accepted skew.
    """

    reason = "clock_skew"

    def __init__(self, message: str, skew_s: float, limit_s: float) -> None:
        super().__init__(message)
        self.skew_s, self.limit_s = skew_s, limit_s


class KeyFileError(TransportError):
    """A key file is missing, malformed or has unsafe permissions."""

    reason = "key_file"


class LinkClosed(TransportError):
    """The link is closed or the peer was lost; in-flight requests fail with this."""

    status = Status.UNAVAILABLE
    reason = "link_closed"


class LinkTimeout(TransportError):
    """No reply before the deadline."""

    status = Status.DEADLINE_EXCEEDED
    reason = "timeout"
