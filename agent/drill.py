"""Drill-down for `espmeter read`: the tracker's verdict on every ESP datagram, time bins, the trace.

It observes the per-frame reference path (MeterSettings(fast_path=False)), which gives
the same totals as the default path (tests/test_fastpath.py), through two hooks of `Meter._esp`
(before/after the SA table saw a datagram) and one for non-first fragments. The verdict is read off
the tracker's counters around the call, so the tracker itself carries nothing for this. A datagram
held as an implausible jump gets its verdict when the next datagram confirms or refutes it (or the SA
ends), and belongs to the new generation when it was a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.sa import SA
from agent.tracker import LossRun, infer_esn

IN_ORDER, REORDERED, DUPLICATE, LATE = "in_order", "reordered", "duplicate", "late"
JUMP, IMPLAUSIBLE, HELD = "jump", "implausible", "held"  # confirmed jump; refuted (counted late); pending
BIN_FIELDS = ("datagrams", "packets", "octets", "expected", "lost", "reordered", "duplicates", "late")


@dataclass(slots=True)
class Bin:
    datagrams: int = 0
    packets: int = 0
    octets: int = 0
    accepted: int = 0
    lost: int = 0
    reordered: int = 0
    duplicates: int = 0
    late: int = 0

    def json(self, start: float) -> dict[str, Any]:
        return {"start": start, "datagrams": self.datagrams, "packets": self.packets, "octets": self.octets,
                "expected": self.lost + self.accepted, "lost": self.lost, "reordered": self.reordered,
                "duplicates": self.duplicates, "late": self.late}


@dataclass(slots=True)
class Line:
    """One trace line: a datagram (`seq` set) or a loss event made final (`missing` set)."""

    time: float
    seq: int | None = None
    length: int = 0
    verdict: str = ""
    extent: int = 0
    missing: LossRun | None = None

    def json(self) -> dict[str, Any]:
        if self.missing is not None:
            m = self.missing
            return {"time": round(self.time, 6), "missing": {"first": m.first, "last": m.last, "count": m.count}}
        out: dict[str, Any] = {"time": round(self.time, 6), "seq": self.seq, "length": self.length,
                               "verdict": self.verdict}
        if self.verdict == REORDERED:
            out["extent"] = self.extent
        return out


@dataclass(slots=True)
class _Held:
    time: float
    length: int
    line: Line | None


@dataclass(slots=True)
class Observer:
    """Per SA (by id: read mode keeps every SA alive, but for probationers dropped from a full table,
    `forget`): bins of `bin_us` microseconds and trace lines for the SAs `traced` accepts."""

    bin_us: int | None = None
    traced: Any = None  # Callable[[SA], bool] | None
    bins: dict[int, dict[int, Bin]] = field(default_factory=dict)
    lines: dict[int, list[Line]] = field(default_factory=dict)
    held: dict[int, _Held] = field(default_factory=dict)
    shown: dict[int, set[tuple[int, int]]] = field(default_factory=dict)

    # -- hooks of agent.meter.Meter ---------------------------------------------------------------
    def forget(self, sa: SA) -> None:
        key = id(sa)
        for per_sa in (self.bins, self.lines, self.held, self.shown):
            per_sa.pop(key, None)

    def before(self, sa: SA, low: int) -> tuple:
        return sa, sa.held, sa.reordered, sa.duplicates, sa.late, infer_esn(low, sa.last)

    def after(self, sa: SA, mark: tuple, length: int, now: float) -> None:
        old, held0, reordered0, duplicates0, late0, n = mark
        if sa is not old:  # a confirmed restart: the held datagram and this one open the new generation
            held = self.held.pop(id(old))
            self._count(old, held.time, -1, -held.length)
            self._count(sa, held.time, 1, held.length).accepted += 1
            if held.line is not None:
                self._lines(old).remove(held.line)
                held.line.verdict = IN_ORDER
                self._add_line(sa, held.line)
            self._datagram(sa, now, length, sa.last, IN_ORDER)
            return
        late = sa.late - late0
        held = self.held.pop(id(sa), None)
        if held is not None:
            if held0 >= 0 and sa.last >= held0:
                self._settle(id(sa), held, JUMP)
            else:
                self._settle(id(sa), held, IMPLAUSIBLE)
                late -= held0 >= 0  # refuted by this datagram (else the SA ended in between)
        if sa.reordered > reordered0:
            self._datagram(sa, now, length, n, REORDERED, sa.accepted_above(n))
        elif sa.duplicates > duplicates0:
            self._datagram(sa, now, length, n, DUPLICATE)
        elif late:
            self._datagram(sa, now, length, n, LATE)
        elif sa.held >= 0 and sa.held_time == now:
            line = self._datagram(sa, now, length, sa.held, HELD)
            self.held[id(sa)] = _Held(now, length, line)
        else:
            self._datagram(sa, now, length, sa.last, IN_ORDER)
        if sa.events and self.traced is not None and self.traced(sa):
            self.made_final(sa, list(sa.events), now)

    def fragment(self, sa: SA, packets: int, octets: int, now: float) -> None:
        if self.bin_us is not None:
            b = self._bin(id(sa), now)
            b.packets += packets
            b.octets += octets

    def made_final(self, sa: SA, runs: list[LossRun], now: float) -> None:
        """Loss events of `sa` became final at `now` (a trace line each, once)."""
        if self.traced is None or not self.traced(sa):
            return
        shown = self.shown.setdefault(id(sa), set())
        for run in runs:
            if (run.first, run.last) not in shown:
                shown.add((run.first, run.last))
                self._add_line(sa, Line(now, missing=run))

    # -- results ----------------------------------------------------------------------------------
    def finish(self) -> None:
        """After Meter.finish: a held datagram never confirmed is late (the SA ended)."""
        for key, held in self.held.items():
            self._settle(key, held, IMPLAUSIBLE)
        self.held.clear()

    def sa_bins(self, sa: SA, events: list[LossRun]) -> list[dict[str, Any]]:
        """Every bin from the SA's first to its last datagram; loss in the bin of each event's `before`."""
        assert self.bin_us is not None
        for run in events:
            self._bin(id(sa), run.before).lost += run.count
        own = self.bins.get(id(sa), {})
        lo, hi = self._index(sa.first_seen), self._index(sa.last_seen)
        return [own.get(i, Bin()).json(round(i * self.bin_us / 1e6, 6)) for i in range(lo, hi + 1)]

    def sa_lines(self, sa: SA) -> list[Line]:
        return self.lines.get(id(sa), [])

    # -- internals --------------------------------------------------------------------------------
    def _index(self, t: float) -> int:
        assert self.bin_us is not None
        return round(t * 1e6) // self.bin_us

    def _bin(self, key: int, t: float) -> Bin:
        own = self.bins.setdefault(key, {})
        i = self._index(t)
        b = own.get(i)
        if b is None:
            b = own[i] = Bin()
        return b

    def _count(self, sa: SA, t: float, datagrams: int, octets: int) -> Bin:
        if self.bin_us is None:
            return Bin()
        b = self._bin(id(sa), t)
        b.datagrams += datagrams
        b.packets += datagrams
        b.octets += octets
        return b

    def _datagram(self, sa: SA, now: float, length: int, seq: int, verdict: str, extent: int = 0) -> Line | None:
        b = self._count(sa, now, 1, length)
        if verdict in (IN_ORDER, REORDERED):
            b.accepted += 1
        if verdict == REORDERED:
            b.reordered += 1
        elif verdict == DUPLICATE:
            b.duplicates += 1
        elif verdict == LATE:
            b.late += 1
        if self.traced is None or not self.traced(sa):
            return None
        line = Line(now, seq, length, verdict, extent)
        self._add_line(sa, line)
        return line

    def _settle(self, key: int, held: _Held, verdict: str) -> None:
        if held.line is not None:
            held.line.verdict = verdict
        if self.bin_us is not None:
            b = self._bin(key, held.time)
            if verdict == JUMP:
                b.accepted += 1
            else:
                b.late += 1

    def _lines(self, sa: SA) -> list[Line]:
        return self.lines.setdefault(id(sa), [])

    def _add_line(self, sa: SA, line: Line) -> None:
        self._lines(sa).append(line)
