"""Trace replay: CSV parsing and validation, the shipped traces, and real transfers through
the link emulator that see a trace's steps.

Transfers compare one phase of a trace with another (per-byte time, RTT) rather than with
wall-clock bounds, so a slow machine changes both alike."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.transport.test_linkemu import Sink, _connect, _rtts
from tiersplit.cli import app
from transport.linkemu import LinkEmulator, LinkProfile, _Direction
from transport.linktrace import TRACE_COLUMNS, Trace, TraceRow

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO / "configs" / "traces"
HEADER = ",".join(TRACE_COLUMNS)


def _trace(*rows: tuple[float, float, float, float, float], name: str = "t",
           end_s: float | None = None) -> Trace:
    return Trace(tuple(TraceRow(*r) for r in rows), name, end_s)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


# ----------------------------------------------------------------------------- parsing
def test_parse_rows_comments_and_lookup() -> None:
    text = (f"# a comment\n{HEADER}\n\n0,1e6,2e6,10,0\n0.5,4000000,8e6,20.5,0.01\n"
            "1.5,2e6,2e6,30,0\n")
    t = Trace.parse(text, name="x")
    assert [r.t_s for r in t.rows] == [0.0, 0.5, 1.5]
    assert t.rows[1] == TraceRow(0.5, 4e6, 8e6, 20.5, 0.01)
    assert t.duration_s == pytest.approx(2.5)  # the last row lasts as long as the one before
    assert t.row_at(0.49).up_bps == 1e6
    assert t.row_at(0.5).up_bps == 4e6
    assert t.row_at(99).up_bps == 2e6  # past the end: the last row holds
    assert t.row_at(2.6, loop=True).up_bps == 1e6  # looping: from the start again
    assert t.row_at(3.1, loop=True).up_bps == 4e6
    # a header is optional
    assert Trace.parse("0,1,1,0,0\n1,2,2,0,0\n").rows[1].up_bps == 2


def test_steps_and_windows() -> None:
    t = _trace((0, 1e6, 1e6, 10, 0), (1, 2e6, 2e6, 20, 0))
    once = list(t.steps())
    assert [o for o, _ in once] == [0.0, 1.0]
    looped = [step for _, step in zip(range(5), t.steps(loop=True), strict=False)]
    assert [o for o, _ in looped] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [r.up_bps for _, r in looped] == [1e6, 2e6, 1e6, 2e6, 1e6]
    w = t.window(0.5, 1.0)
    assert w.duration_s == pytest.approx(1.0)
    assert [(r.t_s, r.up_bps) for r in w.rows] == [(0.0, 1e6), (0.5, 2e6)]
    inside = t.window(1.2, 0.4)  # inside one row
    assert inside.duration_s == pytest.approx(0.4)
    assert {r.up_bps for r in inside.rows} == {2e6}
    with pytest.raises(ValueError, match="no window"):
        t.window(5.0, 1.0)


@pytest.mark.parametrize(("body", "line", "what"), [
    ("0,1e6,1e6,10,0\n1,1e6,1e6,10,0\n1,1e6,1e6,10,0\n", 4, "t_s must increase"),
    ("0,1e6,1e6,10,0\n2,1e6,1e6,10,0\n1,1e6,1e6,10,0\n", 4, "t_s must increase"),
    ("0,1e6,1e6,10,0\n1,0,1e6,10,0\n", 3, "rates must be positive"),
    ("0,1e6,1e6,10,0\n1,1e6,-3,10,0\n", 3, "rates must be positive"),
    ("0,1e6,1e6,nan,0\n1,1e6,1e6,10,0\n", 2, "rtt_ms must be finite"),
    ("0,inf,1e6,10,0\n1,1e6,1e6,10,0\n", 2, "up_bps must be finite"),
    ("0,1e6,1e6,10,0\n1,1e6,1e6,10,1.0\n", 3, "loss must be in"),
    ("0,1e6,1e6,-1,0\n1,1e6,1e6,10,0\n", 2, "rtt_ms must be non-negative"),
    ("0,1e6,1e6,10\n1,1e6,1e6,10,0\n", 2, "expected 5 fields"),
    ("0,1e6,fast,10,0\n1,1e6,1e6,10,0\n", 2, "down_bps is not a number"),
    ("0.5,1e6,1e6,10,0\n1,1e6,1e6,10,0\n", 2, "first row must be at t_s = 0"),
])
def test_bad_rows_are_refused_with_their_line(tmp_path: Path, body: str, line: int,
                                              what: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"{HEADER}\n{body}")
    with pytest.raises(ValueError, match=what) as e:
        Trace.from_csv(path)
    assert f"{path}:{line}:" in str(e.value)


def test_bad_header_and_too_short_refused() -> None:
    with pytest.raises(ValueError, match="<trace>:2: header must be t_s,up_bps"):
        Trace.parse("# c\ntime,up,down,rtt,loss\n0,1,1,1,0\n1,1,1,1,0\n")
    with pytest.raises(ValueError, match="at least two rows"):
        Trace.parse(f"{HEADER}\n0,1,1,1,0\n")
    with pytest.raises(ValueError, match="times must increase"):
        _trace((0, 1, 1, 1, 0), (0, 1, 1, 1, 0))
    with pytest.raises(ValueError, match="loss must be in"):
        LinkProfile(1e6, 1e6, 10, loss=1.5)


# ----------------------------------------------------------------------------- shipped
@pytest.mark.parametrize("name", ["lte_drive", "wifi_congestion", "handover_3g_wifi"])
def test_shipped_traces_load(name: str) -> None:
    t = Trace.from_csv(TRACES / f"{name}.csv")
    assert t.name == name
    assert t.duration_s == pytest.approx(60.0)
    ups = [r.up_bps for r in t.rows]
    assert max(ups) / min(ups) > 10  # each trace has a change worth adapting to


def test_shipped_traces_are_what_the_generator_writes(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(TRACES / "generate.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("lte_drive", "wifi_congestion", "handover_3g_wifi"):
        assert (tmp_path / f"{name}.csv").read_bytes() == (TRACES / f"{name}.csv").read_bytes()
    assert "provenance" in (TRACES / "README.md").read_text().lower()


# ----------------------------------------------------------------------------- loss model
def test_loss_delays_a_fraction_of_pieces_by_one_rtt() -> None:
    d = _Direction(random.Random(3))
    rtt, one_way, n = 0.1, 0.05, 2000
    late = 0
    for i in range(n):
        now = i * 1.0  # far apart: no queueing, only the loss delay varies
        at = d.schedule(now, 100, 1e9, one_way, 0.0, loss=0.2, retransmit_s=rtt)
        extra = at - now - one_way
        assert extra == pytest.approx(0.0, abs=1e-5) or extra == pytest.approx(rtt, abs=1e-5)
        late += extra > rtt / 2
    assert late / n == pytest.approx(0.2, abs=0.04)
    # a piece of 10 segments is hit with probability 1 - 0.8**10 (about 0.89)
    big = sum(d.schedule(i * 1.0 + 1e4, 14600, 1e12, 0.0, 0.0, loss=0.2,
                         retransmit_s=rtt) - (i * 1.0 + 1e4) > rtt / 2 for i in range(n))
    assert big / n == pytest.approx(1 - 0.8 ** 10, abs=0.04)
    clean = _Direction(random.Random(3))
    assert clean.schedule(0.0, 100, 1e9, one_way, 0.0) == pytest.approx(one_way + 8e-7)


# ----------------------------------------------------------------------------- real links
@pytest.mark.slow
def test_rate_step_is_seen_by_a_real_transfer(sink: Sink) -> None:
    """A trace at 16 Mbit/s for 0.6 s, then 2 Mbit/s: a bulk transfer's bytes per second in
    the slow phase are several times fewer than in the fast phase."""
    fast, slow = 16e6, 2e6
    trace = _trace((0, fast, fast, 2, 0), (0.6, slow, slow, 2, 0), (1.2, slow, slow, 2, 0))
    with LinkEmulator(("127.0.0.1", sink.port), LinkProfile.symmetric(1e9, 0)) as emu, \
            _connect(emu.port) as c:
        size = int(fast / 8 * 0.6 + slow / 8 * 1.2)
        sink.expect = size
        origin = emu.replay(trace)
        c.sendall(b"x" * size)
        assert sink.done.wait(60)
        samples = list(sink.samples)
    assert emu.profile.up_bps == slow  # the last row holds after the end

    def rate(a: float, b: float) -> float:
        part = [(t, n) for t, n in samples if a <= t - origin <= b]
        (ta, na), (tb, nb) = part[0], part[-1]
        return (nb - na) * 8 / (tb - ta)

    fast_rate, slow_rate = rate(0.05, 0.5), rate(0.9, 1.6)
    assert fast_rate / slow_rate > 4  # configured ratio 8
    assert slow_rate <= slow * 1.15


def test_rtt_and_loss_steps_and_looping(sink: Sink) -> None:
    """RTT 2 ms for 1 s, then 60 ms with loss: probes see the longer RTT, some of them one
    retransmission RTT later still; with ``trace_loop`` the first row comes back."""
    trace = _trace((0, 50e6, 50e6, 2, 0), (1.0, 50e6, 50e6, 60, 0.3), end_s=4.0)
    with LinkEmulator(("127.0.0.1", sink.port), LinkProfile.symmetric(1e9, 0), seed=5,
                      trace=trace, trace_loop=True) as emu, _connect(emu.port) as c:
        before = _rtts(c, 10)
        while emu.trace_time() % trace.duration_s < 1.05:
            time.sleep(0.01)
        after = _rtts(c, 12)
        assert emu.trace is trace
        while emu.profile.rtt_ms != 2:  # looped back to the first row
            time.sleep(0.01)
        emu.stop_replay()
        assert emu.trace is None
    assert min(after) > 5 * min(before)
    # loss 0.3 per probe and per echo: some round trips carry a retransmission (+60 ms)
    assert max(after) > min(after) + 0.04


def test_replays_share_an_origin(sink: Sink) -> None:
    """Two emulators given one origin apply the same row at the same moment."""
    trace = _trace((0, 1e6, 1e6, 1, 0), (0.3, 5e6, 5e6, 1, 0))
    prof = LinkProfile.symmetric(1e9, 0)
    with LinkEmulator(("127.0.0.1", sink.port), prof) as a, \
            LinkEmulator(("127.0.0.1", sink.port), prof) as b:
        origin = time.monotonic() + 0.2
        assert a.replay(trace, origin=origin) == b.replay(trace, origin=origin) == origin
        while a.profile.up_bps != 5e6 or b.profile.up_bps != 5e6:
            time.sleep(0.01)
        assert a.trace_time() >= 0.3 and b.trace_time() >= 0.3
        # an origin in the past: the rows already due are in force when replay returns
        a.replay(_trace((0, 2e6, 2e6, 1, 0), (1, 3e6, 3e6, 1, 0), (2, 4e6, 4e6, 1, 0)),
                 origin=time.monotonic() - 1.5)
        assert a.profile.up_bps == 3e6


# ----------------------------------------------------------------------------- CLI
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_refuses_a_bad_trace_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{HEADER}\n0,1e6,1e6,10,0\n1,1e6,1e6,10,2\n")
    r = CliRunner().invoke(app, ["link", "emulate", "--listen", "0", "--target",
                                 "127.0.0.1:9", "--trace", str(bad)])
    assert r.exit_code == 2
    assert f"{bad}:3: loss must be in" in " ".join(r.output.split())


def test_cli_replays_a_trace(sink: Sink) -> None:
    port = _free_port()
    result: dict[str, object] = {}

    def run() -> None:
        result["r"] = CliRunner().invoke(app, [
            "link", "emulate", "--listen", str(port), "--target", f"127.0.0.1:{sink.port}",
            "--trace", str(TRACES / "handover_3g_wifi.csv"), "--duration", "1.5"])

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            c = _connect(port)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with c:
        assert _rtts(c, 1)
    t.join(60)
    r = result["r"]
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    out = " ".join(r.output.split())  # type: ignore[attr-defined]
    assert "link trace handover_3g_wifi" in out and "120 rows, 60 s" in out
