"""Cloud endpoints: which ones may receive data at all, and the live state of each.

Data residency is decided here and nowhere else: :func:`region_allowed` is the one rule
(an endpoint is usable when ``allowed_regions`` is unset or names its region), and
:func:`resident` applies it to any list of things with a ``region``. The config, the
agent's connection step and the policy all call it, so they cannot disagree about where
data may go.

:class:`Endpoint` is one connected endpoint as the request path sees it: its link, its
circuit breaker and the bookkeeping that tells a solo transfer (a bandwidth sample) from
one that shared the link with other requests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from edge_agent.breaker import CircuitBreaker
from transport.base import ClientLink

__all__ = ["Endpoint", "EndpointInfo", "Flight", "region_allowed", "resident"]

log = logging.getLogger(__name__)


class _HasRegion(Protocol):
    @property
    def region(self) -> str: ...


R = TypeVar("R", bound=_HasRegion)


def region_allowed(region: str, allowed_regions: Collection[str] | None) -> bool:
    """The data residency rule: ``None`` allows every region, else only those listed."""
    return allowed_regions is None or region in allowed_regions


def resident(endpoints: Iterable[R], allowed_regions: Collection[str] | None) -> list[R]:
    """The endpoints data may be sent to, in their given order."""
    return [e for e in endpoints if region_allowed(e.region, allowed_regions)]


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """What the policy knows of an endpoint before any measurement: its name and region."""

    name: str
    region: str = "default"


@dataclass(frozen=True, slots=True)
class Flight:
    """How a request entered its endpoint's link (see :meth:`Endpoint.enter`).

    Attributes:
        alone: nothing else was in flight when it was sent.
        sends_before: the endpoint's send counter at that moment.
        ahead_bytes: wire bytes of the requests already in flight ahead of it.
        own_bytes: the wire bytes this request was entered with.
    """

    alone: bool
    sends_before: int
    ahead_bytes: int
    own_bytes: int


@dataclass
class Endpoint:
    """One connected cloud endpoint: link, breaker and in-flight bookkeeping.

    A transfer is *solo* (its timing is a bandwidth sample) only when nothing was in
    flight when it was sent and nothing else was sent before it finished; probes count
    as sends so a ping cannot overlap a solo sample unnoticed.
    """

    name: str
    region: str
    link: ClientLink
    breaker: CircuitBreaker
    lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: int = 0
    inflight_bytes: int = 0  # wire bytes of requests sent and not yet answered
    sends: int = 0
    ok: int = 0
    failed: int = 0
    last_error: str = ""

    @property
    def usable(self) -> bool:
        """Connected and not refused by the breaker (without claiming a probe slot)."""
        return self.link.connected and self.breaker.usable()

    def enter(self, own_bytes: int) -> Flight:
        """A request of ``own_bytes`` (estimated) is about to be sent."""
        with self.lock:
            flight = Flight(self.inflight == 0, self.sends, self.inflight_bytes, own_bytes)
            self.inflight += 1
            self.inflight_bytes += own_bytes
            self.sends += 1
        return flight

    def resize(self, flight: Flight, actual_bytes: int) -> Flight:
        """The link encoded the request: replace the estimate by the real size."""
        if actual_bytes <= 0 or actual_bytes == flight.own_bytes:
            return flight
        with self.lock:
            self.inflight_bytes += actual_bytes - flight.own_bytes
        return Flight(flight.alone, flight.sends_before, flight.ahead_bytes, actual_bytes)

    def leave(self, flight: Flight) -> bool:
        """The request is answered (or failed); returns whether its transfer was solo."""
        with self.lock:
            self.inflight -= 1
            self.inflight_bytes -= flight.own_bytes
            return flight.alone and self.sends == flight.sends_before + 1

    def claim_idle_send(self) -> bool:
        """For probes: count a send if nothing is in flight; False if something is."""
        with self.lock:
            if self.inflight:
                return False
            self.sends += 1
            return True

    def succeeded(self) -> None:
        self.breaker.record_success()
        with self.lock:
            self.ok += 1

    def failed_with(self, outcome: str, detail: str, *, breaker: bool) -> None:
        """Record a failed attempt; ``breaker``: it says the endpoint is unhealthy."""
        if breaker:
            self.breaker.record_failure()
        else:
            self.breaker.release()
        with self.lock:
            self.failed += 1
            self.last_error = f"{outcome} {detail}".strip()
        log.info("request to %s failed: %s", self.name, outcome)

    def status(self) -> dict[str, Any]:
        return {"region": self.region, "connected": self.link.connected,
                "breaker": self.breaker.state.value, "breaker_opened": self.breaker.opened,
                "inflight": self.inflight, "ok": self.ok, "failed": self.failed,
                "last_error": self.last_error}
