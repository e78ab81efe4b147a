"""Scenario: collects SAs, pairs, IKE and stray frames; writes the capture and its expected JSON."""

from __future__ import annotations

import dataclasses
import struct
from bisect import bisect_right, insort
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import frames as fr
from .scenario import (
    BASE_US,
    CLASSES,
    IMPLAUSIBLE,
    REORDER_US,
    RESTART_MAX,
    TIME_MARGIN_US,
    WINDOW,
    WINDOW_MARGIN,
    AmbiguousScenario,
    Emitted,
    Item,
    SASpec,
    plan_items,
)
from .writer import Record, write_pcap, write_pcapng

IKE_HEADER = bytes(range(16)) + struct.pack("!BBBBII", 33, 0x20, 34, 0x08, 0, 28)


def seconds(us: int) -> float:
    return (BASE_US + us) / 1e6


@dataclass
class IkeFlow:
    a: str
    b: str
    packets: int = 0
    octets: int = 0
    first_us: int | None = None
    last_us: int = 0


@dataclass
class Scenario:
    """A capture to write; add SAs and frames, then `write(path)` returns the expected `read --json`."""

    name: str
    linktype: int = fr.LINKTYPE_ETHERNET
    fmt: str = "pcap"
    snaplen: int | None = None
    if_names: tuple[str | None, ...] = (None,)  # pcapng: one IDB each (Link.capture_if indexes them)
    specs: list[SASpec] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    extras: list[Emitted] = field(default_factory=list)
    ike_flows: dict[frozenset[str], IkeFlow] = field(default_factory=dict)
    _counter: int = 0

    # -- description -------------------------------------------------------------------------
    def link(self, **kw: Any) -> fr.Link:
        return fr.Link(linktype=self.linktype, **kw)

    def add_sa(self, spec: SASpec) -> int:
        if spec.link.linktype != self.linktype:
            raise ValueError("all frames of a capture share its link type")
        self.specs.append(spec)
        return len(self.specs) - 1

    def add_tunnel(self, fwd: SASpec, rev_spi: int, rev_delay_us: int = 200, **rev: Any) -> tuple[int, int]:
        """Forward SA plus its reverse (addresses and ports swapped), started slightly later."""
        back = dataclasses.replace(
            fwd, src=fwd.dst, dst=fwd.src, spi=rev_spi, sport=fwd.dport, dport=fwd.sport,
            start_us=fwd.start_us + rev_delay_us, drops=set(), dups={}, delays={}, lates={}, jumps={},
            truncs=set(), frags={}, pauses={}, seqs=None)
        back = dataclasses.replace(back, **rev)
        i, j = self.add_sa(fwd), self.add_sa(back)
        self.pairs.append((i, j))
        return i, j

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def add_frame(self, ts_us: int, link: fr.Link, data: bytes, cls: str, caplen: int | None = None) -> None:
        assert cls in CLASSES
        self.extras.append(Emitted(ts_us, self._next(), link, data, cls, caplen))

    def add_ike(self, a: str, b: str, count: int, link: fr.Link, start_us: int, spacing_us: int = 1000) -> None:
        """IKE exchange alternating a->b / b->a: first half on UDP 500, then 4500 with the non-ESP marker."""
        for n in range(count):
            src, dst = (a, b) if n % 2 == 0 else (b, a)
            nat = n >= count // 2
            port, payload = (4500, b"\x00\x00\x00\x00" + IKE_HEADER) if nat else (500, IKE_HEADER)
            pkt = fr.ip_packet(src, dst, fr.PROTO_UDP, fr.udp(port, port, payload, src, dst))
            ts = start_us + n * spacing_us
            self.add_frame(ts, link, link.frame(pkt), "ike")
            flow = self.ike_flows.setdefault(frozenset((a, b)), IkeFlow(a, b))
            flow.packets += 1
            flow.octets += fr.ip_total_length(pkt)
            flow.first_us = ts if flow.first_us is None else min(flow.first_us, ts)
            flow.last_us = max(flow.last_us, ts)

    def add_keepalive(self, src: str, dst: str, link: fr.Link, ts_us: int) -> None:
        pkt = fr.ip_packet(src, dst, fr.PROTO_UDP, fr.udp(4500, 4500, b"\xff", src, dst))
        self.add_frame(ts_us, link, link.frame(pkt), "keepalive")

    def add_other(self, src: str, dst: str, link: fr.Link, ts_us: int) -> None:
        """A TCP SYN and an ICMP echo: IP traffic that is neither ESP nor IKE."""
        self.add_frame(ts_us, link, link.frame(fr.ip_packet(src, dst, fr.PROTO_TCP, fr.tcp_syn(40000, 443))),
                       "other")
        if fr.ip_version(src) == 4:
            self.add_frame(ts_us + 1, link, link.frame(fr.ip_packet(src, dst, fr.PROTO_ICMP, fr.icmp_echo(7, 1))),
                           "other")

    # -- construction ------------------------------------------------------------------------
    def _sa_frames(self, idx: int, spec: SASpec) -> list[Emitted]:
        out = []
        pause = 0
        for pos, item in enumerate(plan_items(spec)):
            if item.kind == "ok":
                pause += spec.pauses.get(item.seq, 0)
            out.extend(self._item_frames(idx, spec, item, spec.start_us + pos * spec.spacing_us + pause))
        return out

    def _item_frames(self, idx: int, spec: SASpec, item: Item, ts: int) -> list[Emitted]:
        body = fr.esp(spec.spi, item.seq, spec.payload)
        proto = fr.PROTO_ESP
        if spec.encap == "udp":
            assert spec.sport is not None and spec.dport is not None
            body, proto = fr.udp(spec.sport, spec.dport, body, spec.src, spec.dst), fr.PROTO_UDP
        if item.frag is None:
            pkt = fr.ip_packet(spec.src, spec.dst, proto, body, spec.v4_options, spec.v6_ext)
            frame = spec.link.frame(pkt)
            caplen = len(frame) - spec.payload - 2 if item.kind == "trunc" else None
            cls = "truncated" if item.kind == "trunc" else "esp"
            return [Emitted(ts, self._next(), spec.link, frame, cls, caplen, idx if item.observed else None, item,
                            fr.ip_total_length(pkt), True, len(frame) - spec.payload)]
        if spec.spacing_us < 100 or item.kind == "trunc":
            raise AmbiguousScenario("fragments need >=100us spacing and cannot be truncated")
        ext = tuple(e for e in spec.v6_ext if e in (fr.PROTO_HOPOPT, fr.PROTO_ROUTING))
        ident = (spec.spi * 7 + item.seq) & 0xFFFF
        sizes = item.frag.sizes(len(body))
        pieces = fr.fragments(spec.src, spec.dst, proto, body, sizes, ident, spec.v4_options, ext)
        out = []
        for n, i in enumerate(item.frag.emitted()):
            cls = "esp" if item.observed else "orphan_fragment"
            frame = spec.link.frame(pieces[i])
            header_end = len(frame) - sizes[0] + len(body) - spec.payload if i == 0 else 0
            out.append(Emitted(ts + n * 10, self._next(), spec.link, frame, cls, None,
                               idx if item.observed else None, item, fr.ip_total_length(pieces[i]), i == 0, header_end))
        return out

    def build(self) -> list[Emitted]:
        emitted = list(self.extras)
        for idx, spec in enumerate(self.specs):
            emitted.extend(self._sa_frames(idx, spec))
        emitted.sort(key=lambda e: (e.ts_us, e.order))
        return emitted

    # -- output ------------------------------------------------------------------------------
    def write(self, path: Path | str) -> dict[str, Any]:
        """Write the capture; return the expected `espmeter read --json` object."""
        path = Path(path)
        emitted = self.build()
        records = [Record(BASE_US + e.ts_us, e.data, self._caplen(e), e.link.capture_if) for e in emitted]
        if self.fmt == "pcapng":
            write_pcapng(path, self.linktype, records, self.snaplen or 262144, self.if_names)
        elif len(self.if_names) > 1:
            raise AmbiguousScenario("a pcap file has one interface: write several as pcapng")
        else:
            write_pcap(path, self.linktype, records, self.snaplen or 262144)
        return self.expected(emitted, str(path))

    def _caplen(self, e: Emitted) -> int | None:
        if self.snaplen is None or len(e.data) <= self.snaplen:
            return e.caplen
        return self.snaplen if e.caplen is None else min(e.caplen, self.snaplen)

    def expected(self, emitted: list[Emitted], file: str) -> dict[str, Any]:
        per_sa: list[list[Emitted]] = [[] for _ in self.specs]
        for e in emitted:
            if e.sa is not None:
                per_sa[e.sa].append(e)
        sas = [self._sa_expected(idx, spec, per_sa[idx]) for idx, spec in enumerate(self.specs)]
        self._check_keys_and_generations(sas)
        tunnels = self._pairing(sas)
        order = sorted(range(len(sas)), key=lambda i: (sas[i]["first_seen"], i))
        remap = {old: new for new, old in enumerate(order)}
        for t in tunnels:
            t["sas"] = [remap[i] for i in t["sas"]]
        classes = {c: 0 for c in CLASSES}
        for e in emitted:
            classes[e.cls] += 1
        ike = [{"a": f.a, "b": f.b, "packets": f.packets, "octets": f.octets,
                "first_seen": seconds(f.first_us or 0), "last_seen": seconds(f.last_us)}
               for f in sorted(self.ike_flows.values(), key=lambda f: f.first_us or 0)]
        return {"sas": [sas[i] for i in order], "tunnels": tunnels, "ike": ike,
                "capture": {"file": file, "linktype": self.linktype, "frames": len(emitted), "classes": classes}}

    def _sa_expected(self, idx: int, spec: SASpec, frames: list[Emitted]) -> dict[str, Any]:
        if not frames:
            raise AmbiguousScenario(f"SA {spec.key()} has no observed datagram: it would not be reported")
        if self.snaplen is not None and any(e.header_end > self.snaplen for e in frames):
            raise AmbiguousScenario("snaplen must keep ESP headers whole")
        headers = [e for e in frames if e.bears_header and e.item is not None]
        stats = sequence_stats([(e.item, e.ts_us) for e in headers])
        header_us = {id(e.item): e.ts_us for e in headers}
        # non-first fragments count when they arrive, or with their first fragment when they came before it
        stats["fragment_arrivals"] = [[max(e.ts_us, header_us[id(e.item)]), e.octets] for e in frames
                                      if not e.bears_header and e.item is not None]
        octets = [e.octets for e in headers if e.item.observed]
        # [us, seq, verdict, extent, IP length] (lists: the expected document is JSON)
        stats["datagram_verdicts"] = [[*v, n] for v, n in zip(stats["datagram_verdicts"], octets, strict=True)]
        src, dst, spi, sport, dport, vlan, inner_vlan, interface, generation = spec.key()
        return {
            "src": src, "dst": dst, "spi": spi, "encap": spec.encap, "sport": sport, "dport": dport,
            "vlan": vlan, "inner_vlan": inner_vlan, "interface": self._interface(interface),
            "direction": spec.direction(),
            "generation": generation, "packets": len(frames), "octets": sum(e.octets for e in frames),
            **stats, "peer_spi": None, "tunnel": None,
            "first_seen": seconds(min(e.ts_us for e in frames)), "last_seen": seconds(max(e.ts_us for e in frames)),
        }

    def _interface(self, key_interface: Any) -> Any:
        """`read --json`'s interface: SLL2's index; a pcapng IDB's if_name, else if<N>; else null."""
        if key_interface is not None and not isinstance(key_interface, tuple):
            return key_interface  # SLL2
        number = 0 if key_interface is None else key_interface[1]
        if self.fmt != "pcapng":
            return None
        return self.if_names[number] or f"if{number}"

    def _check_keys_and_generations(self, sas: list[dict[str, Any]]) -> None:
        by_key: dict[tuple, list[int]] = {}
        for idx, spec in enumerate(self.specs):
            by_key.setdefault(spec.key()[:-1], []).append(idx)
        for idxs in by_key.values():
            gens = sorted(idxs, key=lambda i: self.specs[i].generation)
            if [self.specs[i].generation for i in gens] != list(range(len(gens))):
                raise AmbiguousScenario("generations of one SA key must be 0, 1, 2... without repeats")
            for prev, cur in zip(gens, gens[1:], strict=False):
                restart = sas[cur]
                if not (sas[prev]["last_seen"] < restart["first_seen"] and sas[prev]["last_seq"] > WINDOW
                        and restart["first_seq"] <= RESTART_MAX):
                    raise AmbiguousScenario("a restart must follow its predecessor, from beyond the window to <=1024")

    def _pairing(self, sas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        declared = {frozenset(p) for p in self.pairs}
        if not declared == greedy_pairs(sas, same_point=True) == greedy_pairs(sas, same_point=False):
            raise AmbiguousScenario("declared pairs differ from 'closest first seen' pairing (per point or not)")
        tunnels = []
        for tid, (i, j) in enumerate(self.pairs):
            if sas[i]["first_seen"] == sas[j]["first_seen"]:
                raise AmbiguousScenario("the forward SA of a pair must be seen first")
            fwd, rev = (i, j) if sas[i]["first_seen"] < sas[j]["first_seen"] else (j, i)
            for a, b in ((fwd, rev), (rev, fwd)):
                sas[a]["peer_spi"], sas[a]["tunnel"] = sas[b]["spi"], tid
            tunnels.append({"id": tid, "name": None, "a": sas[fwd]["src"], "b": sas[fwd]["dst"],
                            "sas": [fwd, rev], "spis": [sas[fwd]["spi"], sas[rev]["spi"]]})
        return tunnels


def greedy_pairs(sas: list[dict[str, Any]], same_point: bool) -> set[frozenset[int]]:
    """The stated pairing rule, used only to prove a scenario's declared pairs are unambiguous."""

    def key(sa: dict[str, Any], reverse: bool) -> tuple:
        ends = (sa["dst"], sa["src"], sa["dport"], sa["sport"]) if reverse else (sa["src"], sa["dst"], sa["sport"],
                                                                                 sa["dport"])
        point = (sa["interface"], sa["vlan"], sa["inner_vlan"]) if same_point else ()
        return (sa["encap"], *ends, *point)

    index: dict[tuple, list[int]] = {}
    for i, sa in enumerate(sas):
        index.setdefault(key(sa, False), []).append(i)
    edges = sorted((round(abs(sas[i]["first_seen"] - sas[j]["first_seen"]) * 1e6), i, j)
                   for i, sa in enumerate(sas) for j in index.get(key(sa, True), []) if i < j)
    seen: set[tuple[int, int]] = set()
    for dist, i, j in edges:
        if (dist, i) in seen or (dist, j) in seen:
            raise AmbiguousScenario("two pairing candidates first seen equally close")
        seen |= {(dist, i), (dist, j)}
    used: set[int] = set()
    pairs = set()
    for _, i, j in edges:
        if i not in used and j not in used:
            used |= {i, j}
            pairs.add(frozenset((i, j)))
    return pairs


@dataclass
class _Walk:
    """Running state while replaying one SA's emission order to derive (and sanity check) its counters."""

    accepted: list[int] = field(default_factory=list)
    accepted_at: dict[int, int] = field(default_factory=dict)
    first_us: int | None = None
    verdicts: list[tuple[int, int, str, int]] = field(default_factory=list)  # (us, seq, verdict, extent)
    counts: dict[str, int] = field(default_factory=lambda: {
        "datagrams": 0, "reordered": 0, "max_reorder_extent": 0, "duplicates": 0, "late": 0,
        "implausible": 0, "incomplete": 0})

    @property
    def highest(self) -> int:
        return self.accepted[-1] if self.accepted else -1

    def gap_age(self, seq: int, now: int) -> int:
        """How long `seq` has been missing: since the first higher number was accepted."""
        return now - min((t for s, t in self.accepted_at.items() if s > seq), default=now)

    def accept(self, seq: int, now: int) -> None:
        insort(self.accepted, seq)
        self.accepted_at[seq] = now


def _restart_zone(seq: int, highest: int) -> bool:
    return seq <= RESTART_MAX < highest and highest > WINDOW


def sequence_stats(items: list[tuple[Item, int]]) -> dict[str, int | None]:
    """Counters for one SA from its datagrams in emission order; refuses threshold cases."""
    w = _Walk()
    for pos, (item, now) in enumerate(items):
        if not item.observed:
            continue
        w.counts["datagrams"] += 1
        w.first_us = now if w.first_us is None else w.first_us
        if item.frag is not None and item.frag.lost:
            w.counts["incomplete"] += 1
        nxt = next((it for it, _ in items[pos + 1:] if it.observed), None)
        _step(w, item, now, nxt)
    acc = w.accepted
    first, last = (acc[0], acc[-1]) if acc else (None, None)
    expected = last - first + 1 if acc and first is not None and last is not None else 0
    return {"datagrams": w.counts["datagrams"], "first_seq": first, "last_seq": last, "expected": expected,
            "lost": expected - len(acc), "reordered": w.counts["reordered"],
            "max_reorder_extent": w.counts["max_reorder_extent"], "duplicates": w.counts["duplicates"],
            "late": w.counts["late"], "implausible": w.counts["implausible"], "incomplete": w.counts["incomplete"],
            "loss_events": loss_events(acc, w.accepted_at), "datagram_verdicts": w.verdicts}


def loss_events(accepted: list[int], accepted_at: dict[int, int]) -> list[dict[str, Any]]:
    """Every maximal run of numbers never accepted between two accepted ones, with the capture times of
    the first copies of the numbers around it (`read --events`)."""
    return [{"first": lo + 1, "last": hi - 1, "count": hi - lo - 1, "after": seconds(accepted_at[lo]),
             "before": seconds(accepted_at[hi])}
            for lo, hi in zip(accepted, accepted[1:], strict=False) if hi > lo + 1]


def _step(w: _Walk, item: Item, now: int, nxt: Item | None) -> None:
    seq, high = item.seq, w.highest
    if item.kind == "ok":
        if seq <= high:
            raise AmbiguousScenario(f"in-order datagram {seq} not above {high}")
        if high >= 0 and seq - high > IMPLAUSIBLE // 2:
            if seq - high <= 2 * IMPLAUSIBLE or nxt is None or nxt.kind != "ok" or not seq < nxt.seq <= seq + 64:
                raise AmbiguousScenario("a jump must be far beyond the limit and confirmed by the next datagram")
            w.counts["implausible"] += 1
            w.verdicts.append((now, seq, "jump", 0))
        else:
            w.verdicts.append((now, seq, "in_order", 0))
        w.accept(seq, now)
    elif item.kind == "reordered":
        if seq in w.accepted_at or high <= seq or high - seq > WINDOW - WINDOW_MARGIN \
                or w.gap_age(seq, now) > REORDER_US - TIME_MARGIN_US \
                or now - (w.first_us or now) > REORDER_US - TIME_MARGIN_US and seq < w.accepted[0] \
                or _restart_zone(seq, high):
            raise AmbiguousScenario(f"reordered {seq} is not clearly inside window and reorder time")
        extent = len(w.accepted) - bisect_right(w.accepted, seq)
        w.counts["reordered"] += 1
        w.counts["max_reorder_extent"] = max(w.counts["max_reorder_extent"], extent)
        w.verdicts.append((now, seq, "reordered", extent))
        w.accept(seq, now)
    elif item.kind == "dup":
        if seq not in w.accepted_at or high - seq > WINDOW - WINDOW_MARGIN or _restart_zone(seq, high):
            raise AmbiguousScenario(f"duplicate {seq} is not clearly inside the window")
        w.counts["duplicates"] += 1
        w.verdicts.append((now, seq, "duplicate", 0))
    elif item.kind == "late":
        behind = high - seq >= WINDOW + WINDOW_MARGIN or w.gap_age(seq, now) >= REORDER_US + TIME_MARGIN_US
        if seq in w.accepted_at or not behind or seq <= RESTART_MAX:
            raise AmbiguousScenario(f"late {seq} is not clearly final (or sits in the restart zone)")
        w.counts["late"] += 1
        w.verdicts.append((now, seq, "late", 0))
    elif item.kind == "implausible":
        if seq - high <= 2 * IMPLAUSIBLE or nxt is None or nxt.kind != "ok" or nxt.seq > high + WINDOW // 2:
            raise AmbiguousScenario("an unconfirmed jump needs a far target and an ordinary next datagram")
        w.counts["late"] += 1
        w.counts["implausible"] += 1
        w.verdicts.append((now, seq, "implausible", 0))
