"""The SA table and its export schedule: two structures, as in softflowd, so no timer scans the table.

`sas` maps key → SA (active or dormant: an SA ended by the idle timeout keeps its sequence state,
so a quiet tunnel that speaks again continues its numbering instead of starting a new "flow").
`schedule` is a heap of (due, SA) (agent.schedule). An active SA is the table's entry for its key (an SA
leaves the table, or is replaced by its next generation, only once inactive) and has exactly one entry
(pushed only for a new SA, a reactivated one, or one whose entry was just popped): the entries of inactive
SAs are skipped.
New SAs are on probation until they show a run of packets in sequence. Nothing is evicted while the
table has room; when it is full, probationers go first (oldest first, counted, not exported one by
one), so a flood of one-packet SPIs evicts its own kind, never the established tunnels.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter

from agent.compiled import fastpath as _fastpath
from agent.pairing import Pairer
from agent.sa import PROBATION_RUN, SA, SAKey
from agent.schedule import Schedule, new_schedule
from agent.tracker import TrackerSettings, Verdict
from exporter.records import END_ACTIVE, END_FORCED, END_IDLE, END_RESOURCES

EVICTION_SAMPLE = 64  # schedule entries examined to find the longest-idle SA when the table is full


@dataclass(frozen=True, slots=True)
class TableSettings:
    tracker: TrackerSettings = TrackerSettings()
    active_timeout: float = 60.0
    idle_timeout: float = 30.0
    max_sas: int = 250_000


ExportFn = Callable[[SA, int, float, float], None]  # (sa, flowEndReason, now, active timeout)


class SATable:
    _epochs = itertools.count(1)
    STALE_MIN, STALE_SHARE = 1024, 4  # dead schedule entries are dropped above 1024 and a quarter of the heap

    def __init__(self, settings: TableSettings, export: ExportFn, keep_history: bool = False,
                 compiled: bool = False) -> None:
        self.settings = settings
        # `create` in C (agent/_fastpath.c): the same steps; a full table and a choice between pairing
        # candidates come back to Python (_make_room, Pairer._place)
        self._create = _fastpath.create if compiled and _fastpath else None
        # changes whenever an entry of `sas` is removed or replaced, unique across tables: the compiled
        # walk's SA cache holds borrowed SA pointers while it is unchanged (agent/_fastpath.c)
        self.epoch = next(self._epochs)
        self.export = export
        self.sas: dict[SAKey, SA] = {}
        # idle-ended SAs and SAs on probation, oldest first: the first evicted from a full table. Ordered
        # dicts: the oldest of a plain dict is found by skipping every entry deleted before it (a flood
        # made that quadratic: 27 s of 43 for 400 000 SPIs)
        self.dormant: OrderedDict[SAKey, SA] = OrderedDict()
        self.probation: OrderedDict[SAKey, SA] = OrderedDict()
        self.schedule: Schedule = new_schedule(compiled)
        self.stale_entries = 0  # schedule entries of SAs no longer in the table
        self.pairer = Pairer()
        self.history: list[SA] | None = [] if keep_history else None  # read mode: ended generations
        self.evictions = 0
        self.unconfirmed_sas = 0  # probationers evicted from a full table: summarised, not exported
        self.unconfirmed_datagrams = 0
        # called with a probationer dropped from a full table, the one SA that leaves without a trace (no
        # history): read mode forgets what it keyed by id(sa) (agent.meter, agent.drill)
        self.dropped: Callable[[SA], None] | None = None

    def __del__(self) -> None:
        """SAs are left to reference counting where their fields are compiled (agent.tracker.untracked): the
        pairs still linked are unlinked, so the table's SAs go with it."""
        for sa in (*self.sas.values(), *(self.history or ())):
            sa.peer = None

    def configure(self, settings: TableSettings) -> None:
        """New settings (a reload): the fast limits that depend on the window or the reorder time (an open
        gap's, a final range's: SA.fast_limits) follow them, or the fast paths would go on taking datagrams
        the tracker must see under the new ones (a gap behind a shrunk window became lost a record late);
        and new timeouts reschedule every active SA, or its interval would end when the old ones said (an
        active timeout reloaded from 60 to 1 s: a first record of 30 s)."""
        old, self.settings = self.settings, settings
        t = settings.tracker
        if (t.window, t.reorder_time) != (old.tracker.window, old.tracker.reorder_time):
            for sa in self.sas.values():
                if sa.fseq >= 0 and (sa.gaps or sa.finals):
                    sa.fast_limits(t.window, t.reorder_time)
        if (settings.active_timeout, settings.idle_timeout) != (old.active_timeout, old.idle_timeout):
            self.schedule.clear()
            self.stale_entries = 0
            for sa in self.sas.values():
                if sa.active:  # due now or past: the next frame or tick ends its interval
                    self.schedule.push(self._due(sa), sa)

    # -- packet path --------------------------------------------------------------------------
    def create(self, key: SAKey, udp: bool, now: float, direction: str | None, local: bool = False) -> SA:
        if self._create is not None:
            return self._create(self, key, udp, now, direction, local)
        self._make_room(now)
        sa = SA(key, udp, now, direction)
        sa.local = local
        self.sas[key] = sa
        self.probation[key] = sa
        self._schedule(sa, now)
        self.pairer.add(sa)
        return sa

    def reactivate(self, sa: SA, now: float) -> None:
        """A dormant SA speaks again: a new flow record interval starts, the numbering continues."""
        del self.dormant[sa.key]
        sa.active = True
        sa.interval_start = now
        if sa.trial:  # still unproven: back under the probation bound
            self.probation[sa.key] = sa
        sa.fast_limits(self.settings.tracker.window, self.settings.tracker.reorder_time)
        self._schedule(sa, now)
        if sa.peer is None:
            self.pairer.add(sa)

    def observe_slow(self, sa: SA, seq: int, octets: int, now: float) -> SA:
        """Everything but an in-order datagram on an established SA (see Meter for the fast case).

        Returns the SA the datagram belongs to: a new generation after a confirmed restart.
        """
        s = self.settings.tracker
        verdict = sa.observe(seq, now, s)
        if verdict is Verdict.HELD:
            sa.held_octets = octets
            sa.held_seen = sa.last_seen
        elif verdict is Verdict.RESTART:
            sa = self._new_generation(sa, now)
            sa.observe(seq, now, s)
        if sa.trial and sa.accepted >= PROBATION_RUN:
            sa.trial = False
            self.probation.pop(sa.key, None)
        sa.fast_limits(s.window, s.reorder_time)
        return sa

    def _new_generation(self, old: SA, now: float) -> SA:
        """Sequence numbers restarted near 1 under the same SPI: end the old generation, start anew."""
        restart_at, restart_time = old.held, old.held_time
        old.held = -1
        old.datagrams -= 1  # the held datagram belongs to the new generation
        old.implausible -= 1
        old.packets -= 1
        old.octets -= old.held_octets
        old.last_seen = old.held_seen
        if old.packets == old.x_packets:  # the held datagram was the interval's only arrival
            old.iv_seen = -1.0
        old.finish()
        self.export(old, END_FORCED, restart_time, self.settings.active_timeout)  # it ended there
        self._deactivate(old)
        new = SA(old.key, old.udp, restart_time, old.direction, old.generation + 1)
        new.packets, new.octets = 1, old.held_octets
        new.local = old.local
        new.trial = False
        self.sas[old.key] = new
        self.epoch = next(self._epochs)
        self.probation.pop(old.key, None)
        self.pairer.inherit(old, new)
        if self.history is not None:
            self.history.append(old)
        self._schedule(new, now)
        new.observe(restart_at, restart_time, self.settings.tracker)
        return new

    # -- timers ---------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Idle and active timeouts for every SA whose schedule entry is due; O(due entries)."""
        s = self.settings
        heap = self.schedule
        while heap.head() <= now:
            due, sa = heap.pop()
            if not sa.active:
                continue
            if now - sa.last_seen >= s.idle_timeout:
                self._end(sa, END_IDLE, now)
            elif now - sa.interval_start >= s.active_timeout:
                self.export(sa, END_ACTIVE, now, self.settings.active_timeout)
                sa.interval_start = now
                self._schedule(sa, now)
            else:
                self._schedule(sa, now)

    def finish(self, now: float) -> None:
        """End of capture or shutdown: every active SA ends with flowEndReason forced end."""
        for sa in list(self.sas.values()):
            if sa.active:
                sa.finish()
                self.export(sa, END_FORCED, now, self.settings.active_timeout)
                self._deactivate(sa)
        self.schedule.clear()

    def all_sas(self) -> list[SA]:
        """Every SA generation seen (read mode), in order of first appearance."""
        sas = [*(self.history or ()), *self.sas.values()]
        # the same order in C, a tenth of the time at 100 000 SAs; None for keys it leaves to Python
        ordered = _fastpath.sa_order(sas) if _fastpath is not None else None
        return ordered if ordered is not None else sorted(sas, key=attrgetter("first_seen", "generation"))

    # -- internals ------------------------------------------------------------------------------
    def _due(self, sa: SA) -> float:
        """When the SA's idle or active timeout runs out, whichever comes first."""
        s = self.settings
        return min(sa.last_seen + s.idle_timeout, sa.interval_start + s.active_timeout)

    def _schedule(self, sa: SA, now: float) -> None:
        due = self._due(sa)
        if due <= now:
            s = self.settings
            due = now + min(s.idle_timeout, s.active_timeout)
        self.schedule.push(due, sa)

    def _stale(self) -> None:
        """An SA left the table with an entry still in the schedule: drop dead entries once they are a
        quarter of the heap (STALE_SHARE), so a flood of evicted SAs is not kept alive by its schedule
        (amortised O(1); at half, a full table under a flood held up to one dead SA per live one). The
        compiled drop of a probationer counts as this does (agent/_fastpath.c)."""
        self.stale_entries += 1
        if self.stale_entries > self.STALE_MIN and self.stale_entries * self.STALE_SHARE > len(self.schedule):
            self._drop_dead()

    def _drop_dead(self) -> None:
        self.schedule.drop_dead()
        self.stale_entries = 0

    @staticmethod
    def _deactivate(sa: SA) -> None:
        sa.active = False
        sa.fseq = -1

    def _end(self, sa: SA, reason: int, now: float) -> None:
        sa.finish()
        self.export(sa, reason, now, self.settings.active_timeout)
        self._deactivate(sa)
        self.probation.pop(sa.key, None)
        self.pairer.remove(sa)
        self.dormant[sa.key] = sa

    def _make_room(self, now: float) -> None:
        """A full table drops, in this order: the oldest probationer, the oldest dormant SA, the
        established SA seen longest ago."""
        while len(self.sas) >= self.settings.max_sas:
            if self.probation:
                self._drop_unconfirmed(self.probation[next(iter(self.probation))])
            elif self.dormant:
                self._forget(self.dormant[next(iter(self.dormant))])
            else:
                self._evict(self._longest_idle(), now)

    def _drop_unconfirmed(self, sa: SA) -> None:
        """An unproven SA leaves a full table: what it has not exported yet is counted, not exported."""
        if sa.active:
            self.unconfirmed_sas += 1
            self.unconfirmed_datagrams += sa.datagrams - sa.x_datagrams
            self._deactivate(sa)
        self.evictions += 1
        self._forget(sa, keep=False)
        if self.dropped is not None:
            self.dropped(sa)

    def _longest_idle(self) -> SA:
        """Approximately the least recently seen active SA, from the front of the schedule."""
        heap = self.schedule
        sample: list[tuple[float, SA]] = []
        while len(heap) and len(sample) < EVICTION_SAMPLE:
            entry = heap.pop()
            if entry[1].active:
                sample.append(entry)
        for entry in sample:
            heap.push(*entry)
        if sample:
            return min(sample, key=lambda e: e[1].last_seen)[1]
        return min((sa for sa in self.sas.values() if sa.active), key=lambda sa: sa.last_seen)

    def _evict(self, sa: SA, now: float) -> None:
        if sa.active:
            sa.finish()
            self.export(sa, END_RESOURCES, now, self.settings.active_timeout)
            self._deactivate(sa)
        self.evictions += 1
        self._forget(sa)

    def _forget(self, sa: SA, keep: bool = True) -> None:
        self._stale()
        del self.sas[sa.key]
        self.epoch = next(self._epochs)
        self.dormant.pop(sa.key, None)
        self.probation.pop(sa.key, None)
        self.pairer.remove(sa)
        survivor = sa.peer
        if survivor is not None and survivor.peer is sa:
            # the partner stays; when the evicted SA's key comes back, the two can pair again
            survivor.peer = survivor.tunnel_id = None
            if self.sas.get(survivor.key) is survivor and survivor.active:
                self.pairer.add(survivor)
        if keep and self.history is not None:
            self.history.append(sa)
