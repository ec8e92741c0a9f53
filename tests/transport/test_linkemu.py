"""The link emulator, measured through a real socket pair against its configured profile.

These compare a measured rate/delay with the configured one (within 10%), not our code's
speed with a wall-clock bound; transfers are large enough to average out timer noise."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from transport.linkemu import Fault, LinkEmulator, LinkProfile, _Direction, load_profiles

REPO = Path(__file__).resolve().parents[2]


class Sink:
    """A TCP server: answers b"P" with b"P" (RTT probes), counts everything else, and
    records when the first and last bulk byte arrived."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen()
        self.port = self.srv.getsockname()[1]
        self.received = 0
        self.first = self.last = 0.0
        self.expect = 0
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.srv.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                try:
                    data = conn.recv(1 << 20)
                except OSError:
                    return
                if not data:
                    return
                if data == b"P" and not self.expect:
                    conn.sendall(b"P")
                    continue
                now = time.perf_counter()
                if not self.received:
                    self.first = now
                self.received += len(data)
                self.last = now
                self.samples.append((now, self.received))
                if self.expect and self.received >= self.expect:
                    self.done.set()

    def close(self) -> None:
        self.srv.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


def _connect(port: int) -> socket.socket:
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def _rtts(c: socket.socket, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c.sendall(b"P")
        assert c.recv(1) == b"P"
        out.append(time.perf_counter() - t)
    return out


def test_profiles_file() -> None:
    profiles = load_profiles(REPO / "configs" / "links.yaml")
    expect = {"3g": (1e6, 100), "4g": (10e6, 40), "wifi": (50e6, 5), "lan": (1e9, 0.5)}
    for name, (rate, rtt) in expect.items():
        p = profiles[name]
        assert (p.up_bps, p.down_bps, p.rtt_ms) == (rate, rate, rtt)
        assert p.one_way_delay_s == rtt / 2000  # rtt_ms is a round trip
    assert profiles["4g-jitter"].up_bps != profiles["4g-jitter"].down_bps


def test_bad_profiles_refused(tmp_path: Path) -> None:
    bad = tmp_path / "links.yaml"
    bad.write_text("profiles:\n  x: {rate_mbit: 1}\n")
    with pytest.raises(ValueError, match="rtt_ms"):
        load_profiles(bad)
    bad.write_text("profiles:\n  x: {rate_mbit: 1, rtt_ms: 3, loss: 0.1}\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_profiles(bad)
    with pytest.raises(ValueError):
        LinkProfile(0, 1, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["3g", "4g"])
def test_measured_rate_and_delay_match_the_profile(sink: Sink, name: str) -> None:
    profile = load_profiles(REPO / "configs" / "links.yaml")[name]
    with LinkEmulator(("127.0.0.1", sink.port), profile, seed=1) as emu:
        c = _connect(emu.port)
        with c:
            # Propagation delay as ping reports it: the minimum RTT over a few probes
            # (a busy CI machine can only add to a probe's time, never remove from it).
            one_way = min(_rtts(c, 15)) / 2
            assert one_way == pytest.approx(profile.one_way_delay_s, rel=0.10)
            size = int(profile.up_bps / 8 * 2)  # a 2 s transfer
            sink.expect = size
            c.sendall(b"x" * size)
            assert sink.done.wait(30)
        # The rate over the middle 80 % of the bytes (start-up and tail effects aside).
        samples = sink.samples
        ta, na = next((t, n) for t, n in samples if n >= 0.1 * size)
        tb, nb = next((t, n) for t, n in samples if n >= 0.9 * size)
        rate = (nb - na) * 8 / (tb - ta)
        assert rate == pytest.approx(profile.up_bps, rel=0.10)
        deadline = time.monotonic() + 5
        while emu.bytes_up < size + 15 and time.monotonic() < deadline:
            time.sleep(0.01)  # the counter moves after the write completes
        assert emu.bytes_up == size + 15


def test_schedule_is_deterministic_with_a_seed() -> None:
    def plan(seed: int) -> list[float]:
        d = _Direction(random.Random(f"{seed}:0:up"))
        return [d.schedule(i * 0.001, 1500, 10e6, 0.02, 0.005) for i in range(200)]

    a, b, c = plan(7), plan(7), plan(8)
    assert a == b and a != c
    assert a == sorted(a)  # in order despite jitter, as TCP presents bytes
    d = _Direction(random.Random(0))
    assert d.schedule(0.0, 1250, 10e6, 0.02, 0.0) == pytest.approx(0.001 + 0.02)
    assert d.schedule(0.0, 1250, 10e6, 0.02, 0.0) == pytest.approx(0.002 + 0.02)  # queued
    assert d.schedule(0.0, 1250, 10e6, 0.02, 0.0, blackout_until=5.0) == pytest.approx(5.021)


def test_blackout_holds_bytes_then_delivers(sink: Sink) -> None:
    with LinkEmulator(("127.0.0.1", sink.port), LinkProfile.symmetric(100e6, 2)) as emu, \
            _connect(emu.port) as c:
        _rtts(c, 1)
        emu.blackout(1.0)
        time.sleep(0.05)
        assert _rtts(c, 1)[0] >= 0.8  # held for (most of) the blackout
        assert _rtts(c, 1)[0] < 0.5  # and the link is back afterwards


def test_reset_connections_aborts_both_ends(sink: Sink) -> None:
    with LinkEmulator(("127.0.0.1", sink.port), LinkProfile.symmetric(100e6, 1)) as emu:
        c = _connect(emu.port)
        _rtts(c, 1)
        assert emu.connections == 1
        emu.reset_connections()
        c.settimeout(10)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(50):
                c.sendall(b"P")
                if not c.recv(1):
                    raise ConnectionResetError("closed")
                time.sleep(0.02)
        c.close()


def test_scripted_rate_change(sink: Sink) -> None:
    """At T = 0.5 s the rate drops 16x: fast before, at most the new rate after."""
    fast, slow = 16e6, 1e6
    faults = [Fault(at_s=0.5, kind="rate", up_bps=slow)]
    with LinkEmulator(("127.0.0.1", sink.port), LinkProfile.symmetric(fast, 2),
                      faults=faults) as emu, _connect(emu.port) as c:
        size = int(fast / 8 * 0.5 + slow / 8 * 1.5)
        sink.expect = size
        t0 = time.perf_counter()
        c.sendall(b"x" * size)
        assert sink.done.wait(60)
        samples = list(sink.samples)
    early = max(n for t, n in samples if t - t0 <= 0.45)
    assert early >= 3 * slow / 8 * 0.45  # clearly faster than the later rate
    late = [(t, n) for t, n in samples if t - t0 >= 1.0]
    (ta, na), (tb, nb) = late[0], late[-1]
    assert (nb - na) * 8 / (tb - ta) <= slow * 1.15
    assert emu.profile.up_bps == slow and emu.profile.down_bps == fast


def test_fault_validation() -> None:
    for bad in (dict(kind="meltdown"), dict(kind="rate"), dict(kind="blackout", at_s=-1),
                dict(kind="rate", up_bps=-5.0)):
        with pytest.raises(ValueError):
            Fault(**{"at_s": 0.0, **bad})  # type: ignore[arg-type]
