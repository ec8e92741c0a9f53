"""Link traces: bandwidth, RTT and loss over time, read from a CSV and validated.

The pure half of trace replay (:class:`transport.linkemu.LinkEmulator.replay` is the
asyncio half): parsing with an error that names the bad line, the row in force at a time,
the sequence of row changes (looping or not) and windows of a trace. Trace CSVs ship in
``configs/traces/`` with their provenance.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["TRACE_COLUMNS", "Trace", "TraceRow"]

#: Columns of a trace CSV, in this order, after an optional header line naming them.
TRACE_COLUMNS = ("t_s", "up_bps", "down_bps", "rtt_ms", "loss")


@dataclass(frozen=True, slots=True)
class TraceRow:
    """The link from ``t_s`` seconds into a trace until the next row.

    Attributes:
        t_s: start of this row, seconds from the start of the trace.
        up_bps: client -> target bandwidth, bits per second (> 0).
        down_bps: target -> client bandwidth, bits per second (> 0).
        rtt_ms: round-trip time, milliseconds (>= 0).
        loss: probability that one TCP segment is lost, in [0, 1).
    """

    t_s: float
    up_bps: float
    down_bps: float
    rtt_ms: float
    loss: float


@dataclass(frozen=True)
class Trace:
    """A link's bandwidth, RTT and loss over time: rows, piecewise constant.

    Row *i* holds from its ``t_s`` until the next row's; the last row holds until
    ``end_s`` or, without one, for as long as the row before it (a uniformly sampled trace
    keeps its sampling period): that is :attr:`duration_s`. At least two rows, the first
    at ``t_s = 0``, times strictly increasing. Build one with :meth:`from_csv` /
    :meth:`parse` (which validate every line and name the bad one) or from rows.
    """

    rows: tuple[TraceRow, ...]
    name: str = "trace"
    end_s: float | None = None

    def __post_init__(self) -> None:
        if len(self.rows) < 2:
            raise ValueError(f"trace {self.name!r}: needs at least two rows")
        if self.rows[0].t_s != 0:
            raise ValueError(f"trace {self.name!r}: the first row must be at t_s = 0")
        for a, b in zip(self.rows, self.rows[1:], strict=False):
            if not b.t_s > a.t_s:
                raise ValueError(f"trace {self.name!r}: times must increase "
                                 f"({a.t_s} then {b.t_s})")
        for r in self.rows:
            _check_row(r)
        if self.end_s is not None and not self.end_s > self.rows[-1].t_s:
            raise ValueError(f"trace {self.name!r}: end_s must be after the last row")

    @property
    def duration_s(self) -> float:
        if self.end_s is not None:
            return self.end_s
        last, before = self.rows[-1].t_s, self.rows[-2].t_s
        return last + (last - before)

    @property
    def times(self) -> list[float]:
        return [r.t_s for r in self.rows]

    def row_at(self, t_s: float, loop: bool = False) -> TraceRow:
        """The row in force ``t_s`` seconds after the start (before 0: the first row;
        past the end: the last row, or the trace again from the start with ``loop``)."""
        if loop:
            t_s %= self.duration_s
        i = bisect.bisect_right(self.times, t_s) - 1
        return self.rows[max(0, i)]

    def steps(self, loop: bool = False) -> Iterator[tuple[float, TraceRow]]:
        """``(offset_s, row)`` in order: when each row takes over, from the start of the
        replay. Endless with ``loop`` (each pass shifted by :attr:`duration_s`)."""
        base = 0.0
        while True:
            for r in self.rows:
                yield base + r.t_s, r
            if not loop:
                return
            base += self.duration_s

    def window(self, start_s: float, length_s: float) -> Trace:
        """The part from ``start_s`` for ``length_s`` seconds, shifted to start at 0 (the
        row in force at ``start_s`` opens it)."""
        if length_s <= 0 or start_s < 0 or start_s >= self.duration_s:
            raise ValueError(f"trace {self.name!r}: no window [{start_s}, "
                             f"{start_s + length_s}) in a {self.duration_s:g} s trace")
        end = min(start_s + length_s, self.duration_s)
        first = self.row_at(start_s)
        rows = [replace(first, t_s=0.0)] + [replace(r, t_s=r.t_s - start_s)
                                             for r in self.rows if start_s < r.t_s < end]
        if len(rows) == 1:  # one row spans the window: a second copy makes it a trace
            rows.append(replace(first, t_s=(end - start_s) / 2))
        return Trace(tuple(rows), f"{self.name}[{start_s:g}:{end:g}]", end_s=end - start_s)

    @classmethod
    def from_csv(cls, path: str | Path) -> Trace:
        """Read a trace CSV (see :meth:`parse`).

        Raises:
            ValueError: the file is not a valid trace; the message names the line.
            OSError: it cannot be read.
        """
        p = Path(path)
        return cls.parse(p.read_text(), name=p.stem, source=str(p))

    @classmethod
    def parse(cls, text: str, name: str = "trace", source: str = "<trace>") -> Trace:
        """Parse trace CSV text.

        Format: one row per line, ``t_s,up_bps,down_bps,rtt_ms,loss`` (seconds, bit/s,
        bit/s, milliseconds, probability); blank lines and lines starting with ``#`` are
        skipped; the first other line may be a header naming exactly these columns.

        Raises:
            ValueError: ``<source>:<line>: <what is wrong>`` for the first bad line.
        """
        rows: list[TraceRow] = []
        header_allowed = True
        for lineno, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
            cells = [f.strip() for f in fields]
            if not cells or cells == [""] or cells[0].startswith("#"):
                continue
            where = f"{source}:{lineno}"
            if header_allowed and cells and not _is_number(cells[0]):
                if tuple(cells) != TRACE_COLUMNS:
                    raise ValueError(f"{where}: header must be {','.join(TRACE_COLUMNS)}, "
                                     f"not {','.join(cells)}")
                header_allowed = False
                continue
            header_allowed = False
            if len(cells) != len(TRACE_COLUMNS):
                raise ValueError(f"{where}: expected {len(TRACE_COLUMNS)} fields "
                                 f"({','.join(TRACE_COLUMNS)}), got {len(cells)}")
            values = []
            for col, cell in zip(TRACE_COLUMNS, cells, strict=True):
                try:
                    v = float(cell)
                except ValueError:
                    raise ValueError(f"{where}: {col} is not a number: {cell!r}") from None
                if not math.isfinite(v):
                    raise ValueError(f"{where}: {col} must be finite, not {cell}")
                values.append(v)
            row = TraceRow(*values)
            try:
                _check_row(row)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            if not rows and row.t_s != 0:
                raise ValueError(f"{where}: the first row must be at t_s = 0, not {row.t_s:g}")
            if rows and not row.t_s > rows[-1].t_s:
                raise ValueError(f"{where}: t_s must increase: {row.t_s:g} after "
                                 f"{rows[-1].t_s:g}")
            rows.append(row)
        if len(rows) < 2:
            raise ValueError(f"{source}: a trace needs at least two rows, found {len(rows)}")
        return cls(tuple(rows), name)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _check_row(r: TraceRow) -> None:
    for col in TRACE_COLUMNS:
        if not math.isfinite(getattr(r, col)):
            raise ValueError(f"{col} must be finite")
    if r.t_s < 0:
        raise ValueError(f"t_s must be non-negative, not {r.t_s:g}")
    if r.up_bps <= 0 or r.down_bps <= 0:
        raise ValueError(f"rates must be positive (up_bps {r.up_bps:g}, "
                         f"down_bps {r.down_bps:g})")
    if r.rtt_ms < 0:
        raise ValueError(f"rtt_ms must be non-negative, not {r.rtt_ms:g}")
    if not 0 <= r.loss < 1:
        raise ValueError(f"loss must be in [0, 1), not {r.loss:g}")
