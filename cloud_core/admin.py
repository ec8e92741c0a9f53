"""Authentication, rate limiting and audit for the cloud core's admin API.

Pure logic with no sockets, so every rule is testable in-process; the HTTP layer only
passes in what it saw (bearer header, client-certificate subject, source address) and
maps the :class:`Decision` to a status code.

* Tokens come from a file (a Kubernetes Secret mount or a 0600 file); :meth:`TokenStore.reload`
  re-reads it (called on SIGHUP), so a rotated token takes effect and the old one is
  refused from then on. Comparison is constant-time (:func:`hmac.compare_digest`).
* Failed authentications are limited per source address (a sliding one-minute window);
  beyond the limit a source is refused before its credentials are even looked at.
* Every admin call, allowed or not, becomes one JSON audit record: who (token id or
  certificate subject), what, when, from where, and the result.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from cloud_core.errors import ConfigError

__all__ = ["AuditLog", "Authenticator", "Decision", "FailureLimiter", "TokenStore", "token_id"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("tiersplit.audit")

Result = Literal["ok", "unauthorized", "rate_limited"]


def token_id(token: str) -> str:
    """A short, non-reversible name for a token, fit for audit records (never the token)."""
    return "tok-" + hashlib.sha256(token.encode()).hexdigest()[:12]


class TokenStore:
    """The current admin token, read from ``path``; :meth:`reload` picks up a rotation."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._token = self._read()

    def _read(self) -> bytes:
        try:
            text = self._path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"admin.token_file {self._path} unreadable: {e.strerror}") from e
        if not text:
            raise ConfigError(f"admin.token_file {self._path} is empty; write a random token "
                              "into it (e.g. `openssl rand -hex 32`)")
        if self._path.stat().st_mode & 0o077 and not _is_secret_mount(self._path):
            log.warning("admin token file %s is readable by group/others; chmod 600 it",
                        self._path)
        return text.encode()

    def reload(self) -> None:
        """Re-read the file; on error the previous token stays (and the error is raised)."""
        token = self._read()
        with self._lock:
            self._token = token
        log.info("admin token reloaded from %s", self._path)

    def check(self, presented: str) -> str | None:
        """The token id when ``presented`` matches the current token, else None."""
        with self._lock:
            current = self._token
        if hmac.compare_digest(presented.encode(), current):
            return token_id(presented)
        return None


def _is_secret_mount(path: Path) -> bool:
    # Kubernetes projects Secrets through ..data symlinks with mode 0644 unless told
    # otherwise; the volume is private to the pod, so the mode warning would be noise.
    return (path.parent / "..data").exists()


class FailureLimiter:
    """At most ``per_minute`` failed authentications per source in any 60 s window."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _prune(self, source: str, now: float) -> deque[float]:
        q = self._failures.setdefault(source, deque())
        while q and now - q[0] >= 60.0:
            q.popleft()
        return q

    def blocked(self, source: str) -> bool:
        """Whether ``source`` has used up its failures for the current window."""
        with self._lock:
            q = self._prune(source, self._clock())
            if not q:
                self._failures.pop(source, None)
            return len(q) >= self._limit

    def record_failure(self, source: str) -> None:
        with self._lock:
            now = self._clock()
            self._prune(source, now).append(now)


@dataclass(frozen=True)
class Decision:
    """The outcome of one authentication: ``principal`` names who, when allowed."""

    result: Result
    principal: str | None = None

    @property
    def allowed(self) -> bool:
        return self.result == "ok"


class Authenticator:
    """Decides whether an admin call may proceed.

    A call is allowed by a matching bearer token, or by a client certificate the TLS layer
    already verified against the configured client CA (``cert_subject``). With neither
    configured (only legal on loopback), nothing is allowed: the admin plane is closed
    until credentials exist.
    """

    def __init__(self, tokens: TokenStore | None, limiter: FailureLimiter,
                 mtls: bool = False) -> None:
        self.tokens = tokens
        self._limiter = limiter
        self._mtls = mtls

    def authenticate(self, source: str, authorization: str | None,
                     cert_subject: str | None = None) -> Decision:
        if self._limiter.blocked(source):
            return Decision("rate_limited")
        if self._mtls and cert_subject:
            return Decision("ok", f"cert:{cert_subject}")
        if self.tokens is not None and authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value:
                who = self.tokens.check(value.strip())
                if who is not None:
                    return Decision("ok", who)
        self._limiter.record_failure(source)
        return Decision("unauthorized")


@dataclass(frozen=True)
class AuditRecord:
    """One admin call, as written to the audit log."""

    ts: float
    who: str | None
    source: str
    action: str
    target: str
    result: str
    status: int


class AuditLog:
    """Appends one JSON line per admin call to ``path``, or to the ``tiersplit.audit`` logger."""

    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, *, who: str | None, source: str, action: str, target: str,
               result: str, status: int) -> AuditRecord:
        rec = AuditRecord(ts=round(self._clock(), 3), who=who, source=source, action=action,
                          target=target, result=result, status=status)
        line = json.dumps(asdict(rec), sort_keys=True)
        if self._path is None:
            audit_log.info("%s", line)
        else:
            with self._lock, self._path.open("a") as f:
                f.write(line + "\n")
        return rec
