"""The packet path: batches of frames → decoder → SA table / tracker → record producer.

`feed()` walks one pcapy `next_batch` result. The common frame (Ethernet, IPv4 without options,
unfragmented ESP, the next number of an established SA with no open gap) is handled inline with
one struct unpack, one slice and one dict lookup: that is most of the traffic of a healthy tunnel,
and the general decoder costs several times more per frame (see bench/). Everything else goes
through `agent.decode` and `SATable.observe_slow`, which give identical results (tested by
running every ground-truth capture with the fast path on and off).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np

from agent import decode as d
from agent import vector
from agent.fragments import FragEntry, FragmentTable
from agent.ike import IkePair, IkeTable
from agent.records import Producer, RecordSink
from agent.sa import NEVER, SA, esp_ident, udp_ident
from agent.satable import PROBATION_RUN, SATable, TableSettings
from exporter.records import MeteringStats

if os.environ.get("ESPMETER_PURE_PYTHON"):  # force the Python path (tests, or to compare)
    _fastpath = None
else:
    try:
        from agent import _fastpath  # compiled agent/_fastpath.c (setup.py); optional
    except ImportError:  # nothing compiled here: the Python path gives the same results, slower
        _fastpath = None

_META = struct.Struct("=IIII")  # pcapy next_batch: sec, usec, offset, caplen (native endian)
_ETH_IP4_ESP = struct.Struct("!HBxHxxHxB")  # at +12: ethertype, ver/ihl, total length, frag, protocol
_SEQ = struct.Struct("!I").unpack_from
_LOW = 0xFFFFFFFF
OTHER_OWNER = "other"  # fragment owner for non-ESP first fragments


@dataclass(frozen=True, slots=True)
class MeterSettings:
    table: TableSettings = TableSettings()
    fragment_timeout: float = 30.0
    max_fragments: int = 10_000
    biflow: bool = False
    tunnel_names: dict[str, str] = field(default_factory=dict)
    fast_path: bool = True  # inline per-frame fast path (agent.meter)
    compiled: bool = True  # that fast path in C (agent/_fastpath.c) where it is built
    vector: bool = True  # numpy run path (agent.vector), for segments of at least vector_min frames
    vector_min: int = 256


class _NullSink:
    def export(self, records: list) -> None:
        pass


class Meter:
    def __init__(self, settings: MeterSettings, sink: RecordSink | None = None, keep_history: bool = False,
                 local_addrs: set[bytes] | None = None) -> None:
        self.settings = settings
        self.producer = Producer(sink or _NullSink(), settings.biflow, settings.tunnel_names, self._finalize)
        self.table = SATable(settings.table, self.producer, keep_history)
        self.frags = FragmentTable(settings.fragment_timeout, settings.max_fragments, self._fragment_expired)
        self.ike = IkeTable()
        self.classes = dict.fromkeys(d.CLASSES, 0)
        self.frames = 0
        self.octets = 0  # captured octets of all frames
        self.local_addrs = local_addrs or set()
        self.capture_drops = 0
        self.now = 0.0
        self.walk = _fastpath.walk if settings.compiled and settings.fast_path and _fastpath else None

    def configure(self, settings: MeterSettings) -> None:
        """New settings on reload; SA state is kept."""
        self.settings = settings
        self.table.settings = settings.table
        self.frags.timeout, self.frags.max_entries = settings.fragment_timeout, settings.max_fragments
        self.producer.biflow, self.producer.names = settings.biflow, dict(settings.tunnel_names)

    # -- input ------------------------------------------------------------------------------
    def feed(self, buf: bytes, meta: bytes, linktype: int, ifindex: int | None = None,
             direction: str | None = None) -> None:
        """Account one `next_batch` result; `ifindex`/`direction` come from a live capture handle."""
        n = len(meta) // 16
        if not n:
            return
        self.frames += n
        if self.settings.vector and linktype == d.DLT_EN10MB and n >= self.settings.vector_min:
            self._feed_vector(buf, meta, ifindex, direction)
        else:
            self._feed_frames(buf, meta, linktype, ifindex, direction)

    def _feed_vector(self, buf: bytes, meta: bytes, ifindex: int | None, direction: str | None) -> None:
        """Segments between timer deadlines: in-order runs per SA in numpy, the rest frame by frame."""
        m = np.frombuffer(meta, dtype=np.uint32).reshape(-1, 4)
        times = m[:, 0].astype(np.float64) + m[:, 1].astype(np.float64) * 1e-6
        self.octets += int(m[:, 3].sum(dtype=np.int64))
        n, pos = len(m), 0
        # A timer set inside a segment (a new SA, a reschedule) is due at least this long after the frame
        # that set it, so a segment ends before any such timer: no export is due within a segment.
        t = self.settings.table
        horizon = min(t.idle_timeout, t.active_timeout)
        while pos < n:
            due = self._due()
            rest = times[pos:]
            limit = np.minimum(np.minimum.accumulate(rest) + horizon, due)
            late = np.nonzero(rest >= limit)[0]
            end = pos + int(late[0]) if len(late) else n
            if end == pos:
                self.tick(float(times[pos]))
                continue
            segment = m[pos:end]
            if end - pos < self.settings.vector_min:
                self._feed_frames(buf, segment.tobytes(), d.DLT_EN10MB, ifindex, direction, count_octets=False)
            else:
                self._apply_runs(buf, segment, times[pos:end], ifindex, direction)
                self.now = max(self.now, float(times[end - 1]))
            pos = end

    def _apply_runs(self, buf: bytes, segment: np.ndarray, times: np.ndarray, ifindex: int | None,
                    direction: str | None) -> None:
        """One segment in three phases that keep every SA's frames in capture order.

        1. frame by frame, in capture order: everything that is not a candidate run, plus the first
           frames of SAs that are new, dormant or on probation (so SAs are created, and paired, in
           capture order);
        2. each SA's runs in bulk while they continue it; a run after a forward jump starts with one
           datagram through the tracker (it opens the gap), the rest of it is bulk;
        3. frame by frame, in capture order: what phase 2 could not take (a backward step, a held
           number), i.e. the tail of those SAs' frames in this segment.
        """
        g = vector.analyse(buf, segment[:, 2], segment[:, 3], times)
        sas = self.table.sas
        obs = None if ifindex is None else (ifindex, None, None)
        nruns = len(g.run_start)
        heads = [g.rest]
        skips = []
        found = [sas.get((obs, key)) for key in g.keys]
        if len(sas) + found.count(None) >= self.settings.table.max_sas:
            # the table may fill up: which SA an eviction takes depends on the exact order of every
            # frame before it, so this segment goes frame by frame
            self._feed_frames(buf, segment.tobytes(), d.DLT_EN10MB, ifindex, direction, count_octets=False)
            return
        for k, sa in enumerate(found):
            if sa is None or sa.fseq < 0:
                head = g.frames_from(int(g.group_runs[k]), 0, k)[:PROBATION_RUN]
                heads.append(head)
                skips.append((k, len(head)))
                found[k] = None  # phase 1 may create, replace or end it: look it up again
        self._frames_at(buf, segment, heads, ifindex, direction)
        skip_of = dict(skips)
        tails = []
        esp = 0
        t = self.settings.table.tracker
        observe = self.table.observe_slow
        # plain lists: element access on them is several times cheaper than on numpy arrays
        group_runs, run_start, count = g.group_runs.tolist(), g.run_start.tolist(), g.count.tolist()
        first_seq, max_time, last_time = g.first_seq.tolist(), g.max_time.tolist(), g.last_time.tolist()
        run_octets = (g.csum[g.run_start + g.count] - g.csum[g.run_start]).tolist()
        times, octets, csum = g.times, g.octets, g.csum  # per frame: read only after a jump (rare)
        for k, key in enumerate(g.keys):
            r, r_end = group_runs[k], group_runs[k + 1] if k + 1 < len(g.keys) else nruns
            o = skip_of.get(k, 0)  # frames of run r already taken (phase 1 or a jump's first datagram)
            while o and r < r_end and o >= count[r]:
                o -= count[r]
                r += 1
            sa = found[k] or sas.get((obs, key))
            while sa is not None and r < r_end and sa.fseq >= 0:
                at = run_start[r] + o  # position in g.order of the run's next frame
                end_at = run_start[r] + count[r]
                step = (first_seq[r] + o - sa.last - 1) & _LOW
                if step:
                    if step >= 1 << 31:
                        break  # backwards (reordering, duplicates, late numbers): frame by frame
                    ts, fo = float(times[at]), int(octets[at])
                    sa = observe(sa, (first_seq[r] + o) & _LOW, fo, ts)  # opens the gap or holds
                    if sa.iv_seen < 0:
                        sa.iv_seen = ts
                    sa.packets += 1
                    sa.octets += fo
                    sa.last_seen = ts
                    esp += 1
                    at, o = at + 1, o + 1
                    if sa.fseq < 0:
                        break
                    if at == end_at:
                        r, o = r + 1, 0
                        continue
                c = end_at - at
                tmax = max_time[r]
                if sa.iv_seen < 0:
                    sa.iv_seen = float(times[at])
                # the per-frame path would finalise old gaps on the way (by time, then by window); the
                # run is accepted either way, so doing it once for the whole run gives the same state
                if not sa.gaps:  # the common case, inline: no gap to finalise, no limit to move
                    if sa.iv_min < 0:
                        sa.iv_min = sa.last + 1
                    sa.last += c
                else:
                    if tmax > sa.ftime:
                        sa.finalize_by_time(tmax, t.reorder_time)
                    sa.advance_run(c, t.window)
                    sa.fast_limits(t.window, t.reorder_time)
                sa.datagrams += c
                sa.packets += c
                sa.octets += run_octets[r] if at == run_start[r] else int(csum[end_at] - csum[at])
                sa.last_seen = last_time[r]
                esp += c
                r, o = r + 1, 0
            if r < r_end:
                tails.append(g.frames_from(r, o, k))
        self.classes[d.ESP] += esp
        self._frames_at(buf, segment, tails, ifindex, direction)

    def _frames_at(self, buf: bytes, segment: np.ndarray, parts: list[np.ndarray], ifindex: int | None,
                   direction: str | None) -> None:
        """The given frames of the segment, frame by frame in capture order."""
        parts = [p for p in parts if len(p)]
        if parts:
            frames = np.sort(np.concatenate(parts)) if len(parts) > 1 else parts[0]
            self._feed_frames(buf, segment[frames].tobytes(), d.DLT_EN10MB, ifindex, direction,
                              count_octets=False)

    def _feed_frames(self, buf: bytes, meta: bytes, linktype: int, ifindex: int | None, direction: str | None,
                     count_octets: bool = True) -> None:
        """Frame by frame: the inline fast path for in-order ESP, the general decoder for the rest."""
        if self.walk is not None and linktype == d.DLT_EN10MB:
            self._walk_frames(buf, meta, ifindex, direction, count_octets)
            return
        sas = self.table.sas
        slow = self._frame
        fast = self.settings.fast_path and linktype == d.DLT_EN10MB
        obs = None if ifindex is None else (ifindex, None, None)  # as Frame.obs of an untagged frame
        unpack = _ETH_IP4_ESP.unpack_from
        esp = 0
        now = self.now
        octets = 0
        due = self._due()
        for sec, usec, off, caplen in _META.iter_unpack(meta):
            now = sec + usec * 1e-6
            octets += caplen
            if now >= due:  # timers run on capture time, so offline and live records agree
                self.classes[d.ESP] += esp
                esp = 0
                self.tick(now)
                due = self._due()
            if fast and caplen >= 42:
                eth, verihl, total, frag, proto = unpack(buf, off + 12)
                if eth == 0x0800 and verihl == 0x45 and proto == 50 and not frag & 0x3FFF and total >= 28:
                    sa = sas.get((obs, buf[off + 26:off + 38]))
                    if (sa is not None and sa.last + 1 < sa.fseq and now <= sa.ftime
                            and _SEQ(buf, off + 38)[0] == (sa.last + 1) & _LOW):
                        sa.last += 1
                        sa.datagrams += 1
                        sa.packets += 1
                        sa.octets += total
                        sa.last_seen = now
                        if sa.iv_min < 0:  # first accepted number of the interval: maybe its first arrival
                            sa.iv_min = sa.last
                            if sa.iv_seen < 0:
                                sa.iv_seen = now
                        esp += 1
                        continue
            slow(buf, off, caplen, now, linktype, ifindex, direction)
            due = self._due()
        self.classes[d.ESP] += esp
        if count_octets:
            self.octets += octets
        self.now = max(self.now, now)

    def _walk_frames(self, buf: bytes, meta: bytes, ifindex: int | None, direction: str | None,
                     count_octets: bool) -> None:
        """`_feed_frames` with the inline fast path in C: `walk` takes frames up to the first one that
        needs this loop (a due timer or the general decoder), which is handled here as there."""
        walk = self.walk
        sas = self.table.sas
        obs = None if ifindex is None else (ifindex, None, None)
        n = len(meta) // 16
        pos = esp = octets = 0
        due = self._due()
        while True:
            stop, part, sa, seq, ip_len = walk(buf, meta, pos, sas, obs, due)
            esp += stop - pos
            octets += part
            if stop == n:
                break
            sec, usec, off, caplen = _META.unpack_from(meta, 16 * stop)
            now = sec + usec * 1e-6
            octets += caplen
            if now >= due:
                self.classes[d.ESP] += esp
                esp = 0
                self.tick(now)
                due = self._due()
                self._frame(buf, off, caplen, now, d.DLT_EN10MB, ifindex, direction)
            elif sa is not None:  # an ESP datagram of a known SA: what _frame would do, without decoding
                self._esp_datagram(sa, seq, ip_len, now)
                esp += 1
            else:
                self._frame(buf, off, caplen, now, d.DLT_EN10MB, ifindex, direction)
            due = self._due()
            pos = stop + 1
        self.classes[d.ESP] += esp
        if count_octets:
            self.octets += octets
        if n:
            sec, usec = _META.unpack_from(meta, 16 * (n - 1))[:2]
            self.now = max(self.now, sec + usec * 1e-6)

    def _frame(self, buf: bytes, off: int, caplen: int, now: float, linktype: int,
               ifindex: int | None, direction: str | None) -> None:
        f = d.decode(buf, off, caplen, linktype, ifindex)
        if direction is not None:
            f.direction = direction
        cls = f.cls
        if cls == d.ESP:
            self._esp(f, now)
        elif cls == d.FRAGMENT:
            self._later_fragment(f, now)
            return
        elif f.frag_id is not None and f.proto in (d.PROTO_ESP, d.PROTO_UDP):
            owner = self._ike(f, now) if cls == d.IKE else OTHER_OWNER
            self._first_fragment(f, owner, now)
        elif cls == d.IKE:
            self._ike(f, now)
        self.classes[cls] += 1

    def _esp(self, f: d.Frame, now: float) -> None:
        udp = f.proto == d.PROTO_UDP
        ident = udp_ident(f.src, f.dst, f.sport, f.dport, f.spi) if udp else esp_ident(f.src, f.dst, f.spi)
        key = (f.obs, ident)
        table = self.table
        sa = table.sas.get(key)
        if sa is None:
            sa = table.create(key, udp, now, f.direction)
            sa.local = f.src in self.local_addrs
        sa = self._esp_datagram(sa, f.seq, f.ip_len, now)
        if f.frag_id is not None:
            self._first_fragment(f, sa, now)

    def _esp_datagram(self, sa: SA, seq: int, ip_len: int, now: float) -> SA:
        """One datagram of an SA in the table, through the tracker; returns the SA it belongs to."""
        if not sa.active:
            self.table.reactivate(sa, now)
        sa = self.table.observe_slow(sa, seq, ip_len, now)
        if sa.iv_seen < 0:
            sa.iv_seen = now
        sa.packets += 1
        sa.octets += ip_len
        sa.last_seen = now
        return sa

    def _ike(self, f: d.Frame, now: float) -> IkePair:
        return self.ike.observe(f, now, self.settings.table.max_sas)

    # -- fragments ----------------------------------------------------------------------------
    def _first_fragment(self, f: d.Frame, owner: object, now: float) -> None:
        entry = self.frags.first((f.obs, f.src, f.dst, f.proto, f.frag_id), owner, f.frag_len, f.frag_more, now)
        if entry is not None and entry.held_packets:
            self._attribute(owner, entry.held_packets, entry.held_octets, now)

    def _later_fragment(self, f: d.Frame, now: float) -> None:
        if f.proto not in (d.PROTO_ESP, d.PROTO_UDP):
            self.classes[d.OTHER] += 1
            return
        key = (f.obs, f.src, f.dst, f.proto, f.frag_id)
        owner = self.frags.later(key, f.frag_off, f.frag_len, f.frag_more, f.ip_len, now)
        if owner is not None:
            self._attribute(owner, 1, f.ip_len, now)

    def _attribute(self, owner: object, packets: int, octets: int, now: float) -> None:
        if isinstance(owner, SA):
            if owner.iv_seen < 0:
                owner.iv_seen = now
            owner.packets += packets
            owner.octets += octets
            owner.last_seen = max(owner.last_seen, now)
            self.classes[d.ESP] += packets
        elif isinstance(owner, IkePair):
            owner.packets += packets
            owner.octets += octets
            self.classes[d.IKE] += packets
        else:
            self.classes[d.OTHER] += packets

    def _fragment_expired(self, entry: FragEntry) -> None:
        if entry.owner is None:
            self.classes[d.ORPHAN] += entry.held_packets
        elif isinstance(entry.owner, SA) and not entry.complete:
            entry.owner.incomplete += 1

    # -- timers and end -------------------------------------------------------------------------
    def _finalize(self, sa: SA, now: float) -> None:
        """Before a record is taken: gaps older than the reorder time become final in this interval."""
        if sa.gaps:
            t = self.settings.table.tracker
            sa.finalize_by_time(now, t.reorder_time)
            sa.fast_limits(t.window, t.reorder_time)

    def _due(self) -> float:
        """When the next SA timer is due (the head of the schedule)."""
        schedule = self.table.schedule
        return schedule[0][0] if schedule else NEVER

    def tick(self, now: float) -> None:
        self.frags.expire(now)
        self.table.tick(now)
        self.producer.flush()

    def finish(self, now: float | None = None) -> None:
        """End of input: settle fragments, end every SA (forced end), flush records."""
        now = self.now if now is None else now
        self.frags.flush()
        self.table.finish(now)
        self.producer.flush()

    def stats(self, observation_domain: int) -> MeteringStats:
        ignored = sum(self.classes[c] for c in (d.OTHER, d.ORPHAN, d.TRUNCATED, d.MALFORMED))
        return MeteringStats(
            observation_domain=observation_domain,
            frames=self.frames,
            octets=self.octets,
            ignored_frames=ignored,
            malformed=self.classes[d.MALFORMED],
            truncated=self.classes[d.TRUNCATED],
            capture_drops=self.capture_drops,
            sa_evictions=self.table.evictions,
            classes=dict(self.classes),
        )
