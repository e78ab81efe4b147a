"""The packet path: batches of frames → decoder → SA table / tracker → record producer.

`feed()` walks one pcapy `next_batch` result. The common frame (Ethernet, IPv4 without options,
unfragmented ESP or ESP-in-UDP 4500, the next number of an established SA) is taken by the compiled
loop (agent/_fastpath.c: also forward jumps, gaps that become final by time, and a new SA with its
first datagram, created by SATable.create's compiled twin) or, where nothing compiled, by the
in-order part of that loop inline in Python: that is most of the traffic of a healthy tunnel, and the
general decoder costs several times more per frame (see bench/). Everything else goes through
`agent.decode` and `SATable.observe_slow`, which give identical results (tested on every ground-truth
capture, record stream by record stream, and on fuzzed frames with the fast paths on and off). A numpy
path over whole batches existed before the compiled loop; the loop was faster at 2000 and at 100 000
SAs (bench/README.md), so it went.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent import decode as d
from agent.compiled import fastpath as _fastpath  # agent/_fastpath.c, None where not built
from agent.fragments import FragEntry, FragmentTable
from agent.ike import IkePair, IkeTable
from agent.records import LossEventSettings, Producer, RecordSink
from agent.sa import SA, esp_ident, udp_ident
from agent.sakey import sa_key
from agent.satable import SATable, TableSettings
from agent.tracker import LossRun
from exporter.records import MeteringStats

if TYPE_CHECKING:
    from agent.drill import Observer

_META = struct.Struct("=IIII")  # pcapy next_batch: sec, usec, offset, caplen (native endian)
_ETH_IP4_ESP = struct.Struct("!HBxHxxHxB")  # at +12: ethertype, ver/ihl, total length, frag, protocol
_SEQ = struct.Struct("!I").unpack_from
_LOW = 0xFFFFFFFF
OTHER_OWNER = "other"  # fragment owner for non-ESP first fragments
WALKED = (d.DLT_EN10MB, d.DLT_LINUX_SLL, d.DLT_LINUX_SLL2)  # the link types agent/_fastpath.c walk() reads


@dataclass(frozen=True, slots=True)
class MeterSettings:
    table: TableSettings = TableSettings()
    fragment_timeout: float = 30.0
    max_fragments: int = 10_000
    biflow: bool = False
    tunnel_names: dict[str, str] = field(default_factory=dict)
    fast_path: bool = True  # inline per-frame fast path (agent.meter)
    compiled: bool = True  # that fast path in C (agent/_fastpath.c) where it is built
    loss_events: LossEventSettings = LossEventSettings()


class Meter:
    def __init__(self, settings: MeterSettings, sink: RecordSink | None = None, keep_history: bool = False,
                 local_addrs: set[bytes] | None = None) -> None:
        self.settings = settings
        # read mode keeps every SA's loss events (id(sa): the SAs themselves stay in the table's history)
        self.loss_events: dict[int, list[LossRun]] | None = {} if keep_history else None
        self.producer = Producer(sink, settings.biflow, settings.tunnel_names, self._finalize,
                                 self._keep_events if keep_history else None, settings.loss_events)
        self.table = SATable(settings.table, self.producer.export, keep_history,
                             settings.compiled and settings.fast_path)
        self.frags = FragmentTable(settings.fragment_timeout, settings.max_fragments, self._fragment_expired)
        self.ike = IkeTable()
        self.classes = dict.fromkeys(d.CLASSES, 0)
        self.frames = 0
        self.octets = 0  # captured octets of all frames
        self.local_addrs = local_addrs or set()
        self.capture_drops = 0
        self.now = 0.0
        self.walk = _fastpath.walk if settings.compiled and settings.fast_path and _fastpath else None
        self.observer: Observer | None = None  # read's drill-down (agent.drill): per-frame path only
        if keep_history:
            self.table.dropped = self._dropped

    def configure(self, settings: MeterSettings) -> None:
        """New settings on reload; SA state is kept."""
        self.settings = settings
        self.table.configure(settings.table)
        self.frags.timeout, self.frags.max_entries = settings.fragment_timeout, settings.max_fragments
        self.producer.biflow, self.producer.names = settings.biflow, dict(settings.tunnel_names)
        self.producer.events = settings.loss_events

    # -- input ------------------------------------------------------------------------------
    def feed(self, buf: bytes, meta: bytes, linktype: int, ifindex: int | None = None,
             direction: str | None = None) -> None:
        """Account one `next_batch` result; `ifindex`/`direction` come from a live capture handle."""
        n = len(meta) // 16
        if not n:
            return
        self.frames += n
        self._feed_frames(buf, meta, linktype, ifindex, direction)
        self.producer.flush()

    def _feed_frames(self, buf: bytes, meta: bytes, linktype: int, ifindex: int | None,
                     direction: str | None) -> None:
        """Frame by frame: the inline fast path for in-order ESP, the general decoder for the rest."""
        if self.walk is not None and linktype in WALKED:
            self._walk_frames(buf, meta, linktype, ifindex, direction)
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
                self._timers(now)
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
        self.octets += octets
        self.now = max(self.now, now)

    def _walk_frames(self, buf: bytes, meta: bytes, linktype: int, ifindex: int | None,
                     direction: str | None) -> None:
        """`_feed_frames` with the inline fast path in C: `walk` takes frames up to the first one that
        needs this loop (a due timer or the general decoder). A due timer runs here and the walk goes on
        from that frame (the general decoder on it was most of what a short active timeout cost)."""
        walk = self.walk
        table = self.table
        t = self.settings.table.tracker
        sas = table.sas
        obs = None if ifindex is None else (ifindex, None, None)
        n = len(meta) // 16
        pos = esp = octets = 0
        while True:
            stop, part, sa, seq, ip_len, others = walk(buf, meta, linktype, pos, sas, obs, self._due(), table.epoch,
                                                       t.window, t.jump_limit, t.reorder_time, table.probation,
                                                       table, direction, self.local_addrs)
            esp += stop - pos - others
            self.classes[d.OTHER] += others
            octets += part
            if stop == n:
                break
            sec, usec, off, caplen = _META.unpack_from(meta, 16 * stop)
            now = sec + usec * 1e-6
            if now >= self._due():  # the timers, then the walk goes on from this frame (after them, due > now)
                self.classes[d.ESP] += esp
                esp = 0
                self._timers(now)
                pos = stop
                continue
            octets += caplen
            if sa is not None:  # an ESP datagram of a known SA: what _frame would do, without decoding
                self._esp_datagram(sa, seq, ip_len, now)
                esp += 1
            else:
                self._frame(buf, off, caplen, now, linktype, ifindex, direction)
            pos = stop + 1
        self.classes[d.ESP] += esp
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
        sa = self._sa_datagram(sa_key(f.obs, ident), udp, f.src, f.seq, f.ip_len, now, f.direction)
        if f.frag_id is not None:
            self._first_fragment(f, sa, now)

    def _sa_datagram(self, key: tuple, udp: bool, src: bytes, seq: int, ip_len: int, now: float,
                     direction: str | None) -> SA:
        """One datagram of the SA `key`, created if the table has none."""
        sa = self.table.sas.get(key)
        if sa is None:
            sa = self.table.create(key, udp, now, direction, src in self.local_addrs)
        return self._esp_datagram(sa, seq, ip_len, now)

    def _esp_datagram(self, sa: SA, seq: int, ip_len: int, now: float) -> SA:
        """One datagram of an SA in the table, through the tracker; returns the SA it belongs to."""
        if not sa.active:
            self.table.reactivate(sa, now)
        observer = self.observer
        mark = observer.before(sa, seq) if observer is not None else None
        sa = self.table.observe_slow(sa, seq, ip_len, now)
        if sa.iv_seen < 0:
            sa.iv_seen = now
        sa.packets += 1
        sa.octets += ip_len
        sa.last_seen = now
        if observer is not None:
            observer.after(sa, mark, ip_len, now)
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
            owner.pin()  # last_seen moves for a fragment, not for a new `last`
            owner.last_seen = max(owner.last_seen, now)
            self.classes[d.ESP] += packets
            if self.observer is not None:
                self.observer.fragment(owner, packets, octets, now)
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

    def _keep_events(self, sa: SA, events: list[LossRun], now: float) -> None:
        assert self.loss_events is not None
        self.loss_events.setdefault(id(sa), []).extend(events)
        if self.observer is not None:
            self.observer.made_final(sa, events, now)

    def _dropped(self, sa: SA) -> None:
        """A probationer left a full table untraced: what is keyed by its id goes (a new SA may get the id)."""
        if self.loss_events is not None:
            self.loss_events.pop(id(sa), None)
        if self.observer is not None:
            self.observer.forget(sa)

    def events_of(self, sa: SA) -> list[LossRun]:
        """Read mode: every loss event of `sa` so far, in sequence order."""
        return self.loss_events.get(id(sa), []) if self.loss_events is not None else []

    def _due(self) -> float:
        """When the next SA timer is due (the head of the schedule)."""
        return self.table.schedule.head()

    def _timers(self, now: float) -> None:
        """The timers due at `now`, inside a batch: their records are handed over when it ends (`feed`),
        a batch's worth in full messages instead of a message of one or two records per due SA."""
        self.frags.expire(now)
        self.table.tick(now)

    def tick(self, now: float) -> None:
        self._timers(now)
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
            unconfirmed_sas=self.table.unconfirmed_sas,
            unconfirmed_datagrams=self.table.unconfirmed_datagrams,
            loss_events_suppressed=self.producer.events_suppressed,
            classes=dict(self.classes),
        )
