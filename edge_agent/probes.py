"""Ping probes: one thread per endpoint measures RTT and bandwidth while its link is idle.

An empty ping measures the round trip, a padded one the uplink; the pong also carries the
cloud's queueing. A failed ping counts against the endpoint's breaker; one that gets
through may close it (the way a restarted core is found again without risking a request).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable

from edge_agent.endpoints import Endpoint
from edge_agent.estimators import Estimates
from transport.errors import TransportError

__all__ = ["Prober"]

log = logging.getLogger(__name__)


class Prober:
    """Probe threads for a set of endpoints.

    Args:
        endpoints: the endpoints to probe.
        estimates: where RTT, bandwidth and queue samples go.
        interval_s: mean seconds between probes of one endpoint (jittered +-25%); a
            quarter of it while no request used the link since the last probe (the agent
            runs on the device: only probes can see the link come back, and they delay
            nobody).
        timeout_s: how long one ping may take.
        padded: also send a padded ping (bandwidth) after the empty one.
    """

    def __init__(self, endpoints: Iterable[Endpoint], estimates: Estimates, *,
                 interval_s: float, timeout_s: float, padded: bool) -> None:
        self._endpoints = list(endpoints)
        self._estimates = estimates
        self._interval = interval_s
        self._timeout = timeout_s
        self._padded = padded
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for ep in self._endpoints:
            t = threading.Thread(target=self._loop, args=(ep,), daemon=True,
                                 name=f"edge-probe-{ep.name}")
            t.start()
            self._threads.append(t)

    def stop(self, join_s: float = 5.0) -> None:
        self._stop.set()
        self._estimates.suspect.set()  # wakes the loops
        for t in self._threads:
            t.join(timeout=join_s)

    def _loop(self, ep: Endpoint) -> None:
        rng = random.Random(hash(ep.name))
        while not self._stop.is_set():
            try:
                if ep.link.connected and ep.inflight == 0:
                    self.probe(ep)
            except Exception:  # a probe must never kill its thread
                log.exception("probe of %s failed unexpectedly", ep.name)
            sends = ep.sends
            wait = self._interval * (0.75 + 0.5 * rng.random())
            # a request's suspicious bandwidth sample wakes the probe early
            self._pause(wait / 4)
            if ep.sends != sends and not self._estimates.suspect.is_set():
                self._pause(wait * 3 / 4)  # requests use the link
            self._estimates.suspect.clear()

    def _pause(self, seconds: float) -> None:
        """Wait (woken early by a suspicion); how late a timed-out wait wakes is the
        scheduling noise the estimates allow for."""
        t0 = time.monotonic()
        if not self._estimates.suspect.wait(seconds):
            self._estimates.noise.observe((time.monotonic() - t0 - seconds) * 1e3)

    def probe(self, ep: Endpoint) -> None:
        """An empty ping (RTT) then, if configured, a padded one (bandwidth); a padded
        ping whose sample the estimate held back as out of band is checked at once by a
        second one, so a change seen by a probe is confirmed (or refuted) now rather than
        a probe interval later."""
        payloads = [0, self._estimates.probe_bytes(ep.name)]
        confirm = confirm_rtt = True  # at most one confirmation ping of each kind
        while payloads:
            payload = payloads.pop(0)
            if not ep.claim_idle_send():  # a request now in flight must not count as solo
                return
            # in flight like a request: a slow probe is evidence for decisions meanwhile
            token = self._estimates.begin_transfer(ep.name, payload)
            try:
                res = ep.link.ping(payload_bytes=payload, timeout=self._timeout)
            except TransportError as e:
                ep.breaker.record_failure()
                with ep.lock:
                    ep.last_error = f"ping: {e.reason}"
                return
            finally:
                self._estimates.end_transfer(token)
            ep.breaker.probe_ok()
            queue = res.load.queue_ms if res.load is not None else None
            self._estimates.observe_ping(ep.name, payload, res.rtt_ms, queue)
            if payload == 0 and confirm_rtt and self._estimates.rtt_pending(ep.name):
                confirm_rtt = False  # an RTT change is confirmed (or refuted) now, too
                payloads.insert(0, 0)
                continue
            if payload == 0 and not self._padded:
                return
            if payload and confirm and self._estimates.link_pending(ep.name):
                confirm = False
                payloads.append(self._estimates.probe_bytes(ep.name))
