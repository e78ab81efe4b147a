"""Per-SA ESP sequence tracker: loss, reordering, duplicates and late datagrams.

The contract (docs/read-json.md): a datagram is accepted unless it is late; `first`/`last` are the
lowest/highest accepted numbers; a missing number becomes final (lost) when it falls behind the
reorder window, when it has been missing longer than the reorder time, or when the SA ends; an
arrival whose number is already final is late and never un-counts loss.

Memory: instead of a bitmap, the tracker keeps the *missing* ranges inside the window. An SA with
no open gap holds two empty lists, whatever its rate; the ranges are bounded by the window size.
Gaps open in sequence order, so older gaps are always lower: finalisation by time or by window
always removes a prefix of `gaps`, never scans the whole list.

Loss events (maximal runs of lost numbers) are built here and only here, when a gap's last number
becomes final, so every packet path shares them. A gap carries the arrival times of the numbers
around it. The arrival time of `last` is `last_seen` (the time of the latest datagram of any
verdict) unless a datagram that did not advance `last` came since: such a datagram first pins
(`last`, its time) in `anchor`, so a clean SA holds no extra state and the in-order fast paths
only move `last` and `last_seen`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from agent.compiled import sastate as _sastate
from agent.sakey import Obs, key_ident, key_obs

_NONE: tuple = ()
# The highest number an SA may reach: 2^62 datagrams is beyond any SA's life, while a forged jump past
# the jump limit, confirmed by the next datagram, moves `last` by up to 2^31; numbers and the limits
# derived from them (+ a window) stay inside the signed 64 bits the compiled fields hold (agent/sastate.h)
SEQ_LIMIT = 1 << 62
_WRAP = 1 << 32
_HALF = 1 << 31
_LOW_MASK = _WRAP - 1


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    window: int = 1024
    reorder_time: float = 2.0
    jump_limit: int = 1_000_000
    restart_limit: int = 1024


class Verdict(IntEnum):
    ACCEPTED = 0  # new highest number (in order or after a gap)
    REORDERED = 1
    DUPLICATE = 2
    LATE = 3
    HELD = 4  # implausible number held until the next datagram confirms or refutes it
    RESTART = 5  # confirmed restart near 1: the caller starts a new generation


def infer_esn(low: int, last: int) -> int:
    """64-bit sequence number for the 32 low bits on the wire, nearest to `last` (RFC 4303 A2.2)."""
    if last < 0:
        return low
    cand = (last & ~_LOW_MASK) | low
    if cand + _HALF < last:
        return cand + _WRAP
    if cand > last + _HALF and cand >= _WRAP:
        return cand - _WRAP
    return cand


class LossRun(NamedTuple):
    """Lost numbers first..last (final); `after`/`before`: arrival of the first copy of first-1 / last+1."""

    first: int
    last: int
    after: float
    before: float

    @property
    def count(self) -> int:
        return self.last - self.first + 1


FIELDS = (
    "last", "fseq", "ftime", "datagrams", "packets", "octets", "last_seen", "iv_min", "iv_seen",
    "first", "held", "lost", "reordered", "duplicates", "late", "implausible", "max_extent", "iv_max",
    "iv_extent", "started", "held_time", "gaps", "finals", "anchor", "first_at", "events",
    "key", "ident", "obs", "direction", "peer", "tunnel_id", "name", "generation", "incomplete", "held_octets",
    "x_packets", "x_octets", "x_datagrams", "x_lost", "x_reordered", "x_duplicates", "x_late", "x_incomplete",
    "x_last", "first_seen", "interval_start", "held_seen", "udp", "active", "trial", "local",
)
"""Every field of an SA generation, the tracker's (SeqTracker) and the SA's (agent.sa.SA): one base class
holds them all, compiled where it is built (agent/sastate.h: numbers unboxed, the walk's fields adjacent, the
rare ones in a block allocated on first use); `obs` and `ident` are read from `key` (agent.sakey)."""


class _SAFields:
    """The Python twin of agent._sastate.SAFields: the fallback where nothing compiles, and the oracle."""

    __slots__ = tuple(k for k in FIELDS if k not in ("obs", "ident"))

    @property
    def obs(self) -> Obs:
        return key_obs(self.key)

    @property
    def ident(self) -> bytes:
        return key_ident(self.key)


SAFields: type = _sastate.SAFields if _sastate is not None else _SAFields
# SeqTracker's and agent.sa.SA's instances outside the cyclic collector where the fields are compiled (16 B
# an SA: agent/_sastate.c says why that is safe); the twin's stay in it. Only as a class's decorator.
untracked: Callable[[type], type] = _sastate.untracked if _sastate is not None else lambda cls: cls


@untracked
class SeqTracker(SAFields):
    """Sequence-space state of one SA generation. Times are epoch seconds from the caller's clock."""

    __slots__ = ()

    def __init__(self) -> None:
        self.first = -1
        self.last = -1
        self.started = 0.0
        # pending missing ranges [lo, hi, opened_at, after, before, event_first] and finalised ones
        # [lo, hi] still inside the window, ascending; a shared empty tuple until the first gap, so a
        # clean SA allocates no list at all. `after`/`before` are the arrival times of lo-1 / hi+1;
        # event_first < lo once the gap's lower part is final (behind the window)
        self.gaps: list[list] | tuple = _NONE
        self.finals: list[list] | tuple = _NONE
        self.held = -1  # implausible number awaiting confirmation
        self.held_time = 0.0
        self.datagrams = 0
        self.lost = 0
        self.reordered = 0
        self.duplicates = 0
        self.late = 0
        self.implausible = 0
        self.max_extent = 0
        # per export interval: lowest accepted number, highest reordered one, largest extent
        self.iv_min = -1
        self.iv_max = -1
        self.iv_extent = 0
        self.last_seen = 0.0  # arrival of the latest datagram, any verdict: set by the caller
        self.anchor: tuple = _NONE  # (n, arrival of n), pinned while last_seen is not the arrival of last
        self.first_at: float | None = None  # arrival of `first` when it is not `started` (reordered start)
        self.events: list[LossRun] | tuple = _NONE  # final loss events not yet taken

    # -- derived figures -------------------------------------------------------------------
    @property
    def accepted(self) -> int:
        return self.datagrams - self.duplicates - self.late

    @property
    def expected(self) -> int:
        return self.last - self.first + 1 if self.last >= 0 else 0

    # -- the per-datagram entry point ------------------------------------------------------
    def observe(self, low: int, now: float, s: TrackerSettings) -> Verdict:
        """Account one ESP datagram whose wire sequence number is `low` (32 bits)."""
        self.datagrams += 1
        if self.last < 0:
            self._start(low, now)
            return Verdict.ACCEPTED
        n = infer_esn(low, self.last)
        if self.held >= 0:
            verdict = self._resolve_held(n, now, s)
            if verdict is not None:
                return verdict
        if self.gaps and now - self.gaps[0][2] > s.reorder_time:
            self.finalize_by_time(now, s.reorder_time)
        last = self.last
        if n > last:
            if n > SEQ_LIMIT:  # never a new `last` (nor held): only a hostile run of jumps gets here
                self.pin()
                self.implausible += 1
                self.late += 1
                return Verdict.LATE
            if n - last > s.jump_limit:
                self.pin()
                return self._hold(n, low, now, s)
            self._advance(n, now, s.window)
            return Verdict.ACCEPTED
        self.pin()
        if n == last:
            self.duplicates += 1
            return Verdict.DUPLICATE
        if n <= last - s.window:
            if low <= s.restart_limit and last > s.restart_limit + s.window:
                return self._hold(low, low, now, s)
            self.late += 1
            return Verdict.LATE
        if n < self.first:
            return self._below_first(n, now, s)
        return self._inside(n, now)

    def _start(self, n: int, now: float) -> None:
        self.first = self.last = n
        self.started = now
        self.iv_min = n  # (iv_max stays unset: `last` moved, so take_interval reads it instead)

    def pin(self) -> None:
        """`last_seen` is about to move for a datagram that is not a new `last`: keep when `last` came."""
        a = self.anchor
        if not a or a[0] != self.last:
            self.anchor = (self.last, self.last_seen)

    def _last_arrival(self) -> float:
        a = self.anchor
        return a[1] if a and a[0] == self.last else self.last_seen

    def _advance(self, n: int, now: float, window: int) -> None:
        last = self.last
        if n > last + 1:
            gap = [last + 1, n - 1, now, self._last_arrival(), now, last + 1]
            if self.gaps:
                self.gaps.append(gap)
            else:
                self.gaps = [gap]
        self.last = n
        if self.iv_min < 0:
            self.iv_min = n
        self._behind_window(n - window)

    def _behind_window(self, floor: int) -> None:
        """Numbers <= floor fell behind the window: their gaps are lost, their final ranges forgotten."""
        gaps = self.gaps
        if gaps and gaps[0][0] <= floor:
            while gaps and gaps[0][0] <= floor:
                g = gaps[0]
                if g[1] <= floor:
                    self.lost += g[1] - g[0] + 1
                    self._event(g)
                    del gaps[0]
                else:
                    self.lost += floor - g[0] + 1
                    g[0] = floor + 1
                    break
        finals = self.finals
        while finals and finals[0][1] <= floor:
            del finals[0]

    def _below_first(self, n: int, now: float, s: TrackerSettings) -> Verdict:
        """Reordering at the very start of an SA: accepted while the SA is younger than the reorder time."""
        if now - self.started > s.reorder_time:
            self.late += 1
            return Verdict.LATE
        extent = self.accepted_above(n)
        if n + 1 <= self.first - 1:
            first_at = self.started if self.first_at is None else self.first_at
            self.gaps = [[n + 1, self.first - 1, self.started, now, first_at, n + 1], *self.gaps]
        self.first = n
        self.first_at = now
        self._count_reordered(n, extent)
        return Verdict.REORDERED

    def _inside(self, n: int, now: float) -> Verdict:
        """first <= n < last, inside the window: fills a pending gap, or is late or a duplicate."""
        gaps = self.gaps
        i = bisect_right(gaps, n, key=_lo) - 1
        if i >= 0 and gaps[i][1] >= n:
            extent = self.accepted_above(n)
            g = gaps[i]
            lo, hi = g[0], g[1]
            if n == lo and g[5] < lo:  # the final lower part ends here: a complete event
                self._event([g[5], lo - 1, g[2], g[3], now, g[5]])
            if lo == hi:
                del gaps[i]
            elif n == lo:
                g[0] = g[5] = n + 1
                g[3] = now
            elif n == hi:
                g[1] = n - 1
                g[4] = now
            else:
                gaps.insert(i + 1, [n + 1, hi, g[2], now, g[4], n + 1])
                g[1] = n - 1
                g[4] = now
            self._count_reordered(n, extent)
            return Verdict.REORDERED
        finals = self.finals
        j = bisect_right(finals, n, key=_lo) - 1
        if j >= 0 and finals[j][1] >= n:
            self.late += 1
            return Verdict.LATE
        self.duplicates += 1
        return Verdict.DUPLICATE

    def accepted_above(self, n: int) -> int:
        """Distinct accepted numbers higher than n (the reorder extent of an arrival of n)."""
        missing = 0
        for ranges in (self.gaps, self.finals):
            for g in ranges:
                if g[1] > n:
                    missing += g[1] - max(g[0], n + 1) + 1
        top = self.last - max(n, self.first - 1)
        return top - missing

    def _count_reordered(self, n: int, extent: int) -> None:
        self.reordered += 1
        if extent > self.max_extent:
            self.max_extent = extent
        if extent > self.iv_extent:
            self.iv_extent = extent
        if self.iv_min < 0 or n < self.iv_min:
            self.iv_min = n
        if n > self.iv_max:
            self.iv_max = n

    # -- implausible numbers -----------------------------------------------------------------
    def _hold(self, n: int, low: int, now: float, s: TrackerSettings) -> Verdict:
        self.implausible += 1
        self.held = low if low <= s.restart_limit and (n > self.last + s.jump_limit or n < self.last) else n
        self.held_time = now
        return Verdict.HELD

    def _resolve_held(self, n: int, now: float, s: TrackerSettings) -> Verdict | None:
        """A datagram just after the held number confirms it; anything else refutes it."""
        held = self.held
        low = n & _LOW_MASK
        restart = held <= s.restart_limit
        cand = low if restart else n
        if held < cand <= held + s.window:
            if restart:
                self.datagrams -= 1  # the caller replays this datagram on the new generation
                return Verdict.RESTART  # `held` stays set: the caller starts the new generation there
            self.held = -1
            self._advance(held, self.held_time, s.window)
            self.anchor = (held, self.held_time)
            return None
        self.held = -1
        self.late += 1
        return None

    # -- finalisation ------------------------------------------------------------------------
    def finalize_by_time(self, now: float, reorder_time: float) -> None:
        gaps = self.gaps
        while gaps and now - gaps[0][2] > reorder_time:
            g = gaps.pop(0)
            lo, hi = g[0], g[1]
            self.lost += hi - lo + 1
            self._event(g)
            if self.finals:
                self.finals.append([lo, hi])
            else:
                self.finals = [[lo, hi]]

    def finish(self) -> None:
        """The SA ended: every pending gap is lost, an unconfirmed held number is late.

        The finalised ranges are kept (bounded by the window) so that an SA which comes back after
        an idle end still tells late arrivals from duplicates.
        """
        finals = list(self.finals)
        for g in self.gaps:
            lo, hi = g[0], g[1]
            self.lost += hi - lo + 1
            self._event(g)
            finals.append([lo, hi])
        self.gaps = _NONE
        self.finals = finals or _NONE
        if self.held >= 0:
            self.held = -1
            self.late += 1

    def _event(self, g: list) -> None:
        """Gap `g` is final up to its last number: one loss event."""
        event = LossRun(g[5], g[1], g[3], g[4])
        if self.events:
            self.events.append(event)
        else:
            self.events = [event]

    def take_events(self) -> list[LossRun]:
        """The loss events that became final since the previous call, in sequence order."""
        events = self.events
        self.events = _NONE
        return list(events)

    def take_interval(self, last_before: int) -> tuple[int | None, int | None, int]:
        """First/last accepted number and max reorder extent since the previous call; resets them.

        `last` only moves on acceptance, so a moved `last` is the interval's highest; lower
        arrivals (reordered) are tracked in iv_max.
        """
        hi = self.last if self.last != last_before else (self.iv_max if self.iv_max >= 0 else None)
        lo = self.iv_min if self.iv_min >= 0 else None
        extent = self.iv_extent
        self.iv_min = self.iv_max = -1
        self.iv_extent = 0
        return lo, hi, extent


def _lo(g: list) -> int:
    return g[0]
