"""The fast paths of Meter.feed (the inline per-frame loop, in C or in Python) give exactly the general
decoder's results."""

from __future__ import annotations

import copy
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import decode as d
from agent import meter as meter_module
from agent.meter import Meter, MeterSettings
from agent.offline import meter_file
from agent.report import document
from agent.sa import PROBATION_RUN, SA
from agent.sakey import key_ident
from agent.satable import SATable, TableSettings
from agent.tracker import FIELDS, SEQ_LIMIT, TrackerSettings
from tests.gt.scenarios import registry
from tests.test_satable_create import one_entry_each

SCENARIOS = registry()


FAST = {
    "default": MeterSettings(),  # the inline loop in C where agent/_fastpath.c is built
    "inline-python": MeterSettings(compiled=False),
}


@pytest.mark.parametrize("mode", sorted(FAST))
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fast_paths_equal_reference_path(name: str, mode: str, tmp_path: Path) -> None:
    path = str(tmp_path / f"{name}.pcap")
    SCENARIOS[name]().write(path)
    fast = meter_file(path, FAST[mode], progress=False, events=True).doc
    slow = meter_file(path, MeterSettings(fast_path=False), progress=False, events=True).doc
    assert fast == slow


def _esp_frame(t: int, seq: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 40 + t, 0, 0, 64, 50, 0, bytes([10, 9, t, 1]),
                     bytes([10, 9, t, 2]))
    return b"\x02" * 12 + b"\x08\x00" + ip + struct.pack("!II", 0x900 + t, seq & 0xFFFFFFFF) + bytes(40 + t)


class _Sink:
    def __init__(self) -> None:
        self.records: list = []

    def export(self, records: list) -> None:
        self.records.extend(records)

    def export_loss_events(self, events: list) -> None:
        self.records.extend(events)  # in the stream too: the fast paths must give the same events


_SA_SLOTS = [k for k in FIELDS if k != "peer"]


def sa_states(m: Meter) -> list[tuple]:
    """Every slot of every SA generation of the meter (its partner by key), copied: the tracker's lists
    change in place, and a snapshot that shares them shows a later state."""
    return [(*(copy.deepcopy(getattr(sa, k)) for k in _SA_SLOTS), sa.peer and sa.peer.key)
            for sa in (*(m.table.history or ()), *m.table.sas.values())]


# in-order runs of any length (what the fast paths take), gaps, jumps past the window, reordering, duplicates
step = st.one_of(st.tuples(st.just("run"), st.integers(1, 600)), st.tuples(st.just("jump"), st.integers(2, 40)),
                 st.tuples(st.just("jump"), st.integers(60, 200)), st.tuples(st.just("jump"), st.integers(-30, 0)))


@settings(max_examples=200, deadline=None)
@given(
    sas=st.lists(st.tuples(st.sampled_from([1, 5000, 2**32 - 40]), st.lists(step, min_size=1, max_size=12)),
                 min_size=1, max_size=3),
    gaps=st.lists(st.integers(0, 300_000), min_size=1, max_size=50),  # µs between frames, cycled
    cuts=st.lists(st.integers(1, 700), min_size=1, max_size=10),  # batch sizes, cycled
    order_seed=st.integers(0, 2**16),
    biflow=st.booleans(),
    reload=st.tuples(st.integers(0, 12), st.sampled_from([32, 64, 1024]), st.sampled_from([0.05, 0.5, 3.0])),
)
def test_fast_paths_equal_reference_on_any_arrivals(sas: list, gaps: list, cuts: list, order_seed: int,
                                                    biflow: bool, reload: tuple[int, int, float]) -> None:
    """Arbitrary in-order runs, gaps, reordering and duplicates on a few SAs, interleaved, in batches of
    every size (so the compiled, Python inline and reference paths all run), with timers firing in between and
    the tracker's window and reorder time reloaded before one batch (Meter.configure): the record streams and
    the documents are identical, and so is every slot of every SA after each batch (tests/test_fastpath_state.py)."""
    rng = random.Random(order_seed)
    queues = []
    for t, (start, steps) in enumerate(sas):
        seq, out = start, []
        for kind, k in steps:
            for _ in range(k if kind == "run" else 1):
                seq = max(1, seq + (1 if kind == "run" else k))
                out.append(seq)
        queues.append([(t, q) for q in out])
    frames = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        frames.append(_esp_frame(*q.pop(0)))
    results = []
    table = TableSettings(active_timeout=1.0, idle_timeout=2.0,
                          tracker=TrackerSettings(window=64, reorder_time=0.5))
    reloaded = TableSettings(active_timeout=1.0, idle_timeout=2.0,
                             tracker=TrackerSettings(window=reload[1], reorder_time=reload[2]))
    for mode in ({}, {"compiled": False}, {"fast_path": False}):
        sink = _Sink()
        meter = Meter(MeterSettings(table=table, biflow=biflow, **mode), sink, keep_history=True)
        t_us, i, c, states = 1_700_000_000 * 1_000_000, 0, 0, []
        while i < len(frames):
            if c == reload[0]:
                meter.configure(MeterSettings(table=reloaded, biflow=biflow, **mode))
            chunk = frames[i:i + cuts[c % len(cuts)]]
            buf, meta = bytearray(), bytearray()
            for f in chunk:
                t_us += gaps[(i + len(meta) // 16) % len(gaps)]
                meta += struct.pack("=IIII", t_us // 1_000_000, t_us % 1_000_000, len(buf), len(f))
                buf += f
            meter.feed(bytes(buf), bytes(meta), 1)
            meter.tick(meter.now)
            states.append(sa_states(meter))
            i, c = i + len(chunk), c + 1
        meter.finish()
        results.append((sink.records, document(meter, "h", 1), states))
    assert all(r == results[-1] for r in results)


def test_compiled_path_is_built_and_taken_unless_forced_off() -> None:
    """CI builds agent/_fastpath.c (gcc, python3-dev): the C path must be the one under test there."""
    if os.environ.get("ESPMETER_PURE_PYTHON"):
        assert meter_module._fastpath is None
        assert Meter(MeterSettings()).walk is None
        return
    if meter_module._fastpath is None and not os.environ.get("CI"):
        pytest.skip("agent/_fastpath.c not built in this tree (pip install -e . or setup.py build_ext --inplace)")
    assert meter_module._fastpath is not None, "agent/_fastpath.c is not built (pip install -e .)"
    assert Meter(MeterSettings()).walk is meter_module._fastpath.walk
    assert Meter(MeterSettings(compiled=False)).walk is None
    assert Meter(MeterSettings(fast_path=False)).walk is None


def _frame(src: int, spi: int, seq: int, udp: tuple[int, int, int] | None = None, verihl: int = 0x45,
           frag: int = 0, total: int | None = None, marker: bool = False) -> bytes:
    """Ethernet / IPv4 / ESP, or / UDP (sport, dport, ulen-delta) / ESP; fields can be made wrong."""
    esp = (b"\0\0\0\0" if marker else b"") + struct.pack("!II", spi, seq) + bytes(16)
    if udp is not None:
        sport, dport, delta = udp
        esp = struct.pack("!HHHH", sport, dport, 8 + len(esp) + delta, 0) + esp
    ip_total = 20 + len(esp) if total is None else total
    ip = struct.pack("!BBHHHBBH4s4s", verihl, 0, ip_total, 1, frag, 64, 17 if udp else 50, 0,
                     bytes([10, 0, 0, src]), bytes([10, 0, 1, 1]))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + esp


def _stream(rng: random.Random, n: int) -> list[bytes]:
    """Mostly in-order datagrams of a few ESP and NAT-T SAs, with loss, reordering, a wrap past 2^32 and
    frames the fast path must leave to the decoder (marker, bad lengths, options, fragments)."""
    seqs = {k: (0xFFFFFF00 if k % 3 == 0 else 1) for k in range(8)}
    frames = []
    for _ in range(n):
        k = rng.randrange(8)
        udp = (4500, 4500, 0) if k >= 4 else None
        if k >= 6:
            udp = (rng.choice((4500, 500, 1234)), 4500, 0)
        seq = seqs[k] & 0xFFFFFFFF
        r = rng.random()
        if r < 0.02:
            seqs[k] += rng.randrange(2, 50)  # loss
        elif r < 0.04:
            seq = (seq - rng.randrange(1, 30)) & 0xFFFFFFFF  # late or reordered
        else:
            seqs[k] += 1
        kw: dict = {}
        if 0.04 <= r < 0.06:
            kw = rng.choice([{"verihl": 0x46}, {"frag": 0x2000}, {"frag": 0x0001}, {"total": 27},
                             {"total": 35}, {"marker": True}])
            if udp is not None and rng.random() < 0.5:
                udp = (udp[0], udp[1], rng.choice((-1, 1, -9, 100)))
        frames.append(_frame(k, 0x100 + k, seq, udp, **kw))
    return frames


def _tag(frame: bytes, vids: tuple[int, ...]) -> bytes:
    """`frame` with 802.1ad/802.1Q tags (outer first) before its ethertype."""
    tags = b"".join(struct.pack("!HH", 0x88A8 if i < len(vids) - 1 else 0x8100, 0x2000 | v) for i, v in enumerate(vids))
    return frame[:12] + tags + frame[12:]


def _tagged_stream(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """Each SA on its own VLAN (none, one tag or two, by source), now and then on another VLAN (another SA:
    the same addresses and SPI at another observation point) or behind three tags (class other)."""
    out = []
    for f in frames:
        k = f[29] if f[12:14] == b"\x08\x00" else f[37]  # the source address's last octet: the SA
        vids = ((), (100 + k,), (7, 200 + k))[k % 3]
        r = rng.random()
        if r < 0.02:
            vids = (rng.randrange(4096),) * rng.randrange(1, 3)
        elif r < 0.03:
            vids = (1, 2, 3)
        out.append(_tag(f, vids))
    return out


def _as_ipv6(frame: bytes) -> bytes:
    """An Ethernet / IPv4 frame of _frame as Ethernet / IPv6 (2001:db8::a.b.c.d addresses, the IPv4 payload
    after the 20-octet header, the payload length from the IPv4 total length: its faults carry over)."""
    total = struct.unpack_from("!H", frame, 16)[0]
    net = b"\x20\x01\x0d\xb8" + bytes(8)
    ip6 = struct.pack("!IHBB", 0x60000000, max(0, total - 20), frame[23], 64) + net + frame[26:30] + net + frame[30:34]
    return frame[:12] + b"\x86\xdd" + ip6 + frame[34:]


def _cooked(frame: bytes, linktype: int, rng: random.Random) -> bytes:
    """An Ethernet frame as a Linux cooked capture has it (tcpdump -i any): SLL or SLL2, its protocol field
    the Ethernet's (tags after it as they were), sent by this host or not and, in SLL2, on interface 1 or 2,
    mostly by SA (its source address's last octet) and now and then not."""
    k = (frame[29] if frame[12:14] == b"\x08\x00" else frame[37]) if len(frame) > 37 else 0
    out = (k % 2 == 0) != (rng.random() < 0.05)
    pkttype = 4 if out else 0
    if linktype == d.DLT_LINUX_SLL:
        return struct.pack("!HHH8s", pkttype, 1, 6, frame[6:12] + b"\0\0") + frame[12:]
    ifindex = 1 + ((k // 2) % 2 if rng.random() > 0.05 else rng.randrange(2))
    return struct.pack("!2sHIHBB8s", frame[12:14], 0, ifindex, 1, pkttype, 6, frame[6:12] + b"\0\0") + frame[14:]


FRAME_CASES = [("ethernet", outer) for outer in ("ipv4", "ipv4-tagged", "ipv6", "ipv6-tagged")] + [
    ("sll", "ipv4-tagged"), ("sll", "ipv6"), ("sll2", "ipv4"), ("sll2", "ipv4-tagged"), ("sll2", "ipv6-tagged")]
LINKS = {"ethernet": d.DLT_EN10MB, "sll": d.DLT_LINUX_SLL, "sll2": d.DLT_LINUX_SLL2}


@pytest.mark.parametrize(("link", "outer"), FRAME_CASES)
@pytest.mark.parametrize("ifindex", [None, 7])
def test_compiled_and_python_inline_agree_frame_for_frame(ifindex: int | None, link: str, outer: str) -> None:
    """Edge frames next to the in-order ones, small batches and frequent timers (1 s / 2 s): the C walk,
    the Python inline loop and the reference decoder end every batch in the same state; IPv4 or IPv6,
    untagged or on VLANs, on Ethernet or in Linux cooked captures (the walk reads them all; the Python
    inline loop leaves all but Ethernet / IPv4 untagged to the decoder)."""
    rng = random.Random(5)
    frames = _stream(rng, 30_000)
    if outer.startswith("ipv6"):
        frames = [_as_ipv6(f) for f in frames]
    if outer.endswith("tagged"):
        frames = _tagged_stream(rng, frames)
    linktype = LINKS[link]
    if linktype != d.DLT_EN10MB:
        frames = [_cooked(f, linktype, rng) for f in frames]
    modes = {"c": MeterSettings(), "python": MeterSettings(compiled=False),
             "reference": MeterSettings(fast_path=False)}
    table = MeterSettings().table
    table = type(table)(tracker=table.tracker, active_timeout=1.0, idle_timeout=2.0)
    meters = {k: Meter(MeterSettings(table=table, fast_path=s.fast_path, compiled=s.compiled),
                       keep_history=True) for k, s in modes.items()}
    at = 0
    t = 1_700_000_000.0
    while at < len(frames):
        size = rng.choice((1, 7, 300, 3000))
        part = frames[at:at + size]
        buf, meta = bytearray(), bytearray()
        for f in part:
            t += rng.choice((0.0001, 0.001, 0.5))
            meta += struct.pack("=IIII", int(t), int(round((t % 1) * 1e6)) % 1_000_000, len(buf), len(f))
            buf += f + b"\xee" * rng.randrange(3)
        for m in meters.values():
            m.feed(bytes(buf), bytes(meta), linktype, ifindex)
        states = {k: [(sa.key, sa.direction, sa.first, sa.last, sa.started, sa.datagrams, sa.packets, sa.octets,
                       sa.last_seen, sa.iv_min, sa.iv_max, sa.iv_seen, sa.lost, sa.trial, sa.key in m.table.probation,
                       sa.fseq, sa.ftime) for sa in m.table.all_sas()] for k, m in meters.items()}
        assert states["c"] == states["python"] == states["reference"]
        at += size
    docs = set()
    for m in meters.values():
        m.finish()
        docs.add(repr(document(m, "x", linktype)))
    assert len(docs) == 1
    assert meters["c"].classes[d.ESP] > 25_000


@pytest.mark.parametrize("count", range(1, 8))
def test_new_sa_in_one_batch_ends_in_the_reference_state(count: int) -> None:
    """A new SA's first `count` datagrams in one batch (the first by _fastpath.first, the rest by the walk):
    every slot the tracker and the table keep, its probation included, is the reference path's."""
    frames = [_frame(1, 0x100, seq) for seq in range(7, 7 + count)]
    buf, meta = bytearray(), bytearray()
    for i, f in enumerate(frames):
        meta += struct.pack("=IIII", 1_700_000_000, i, len(buf), len(f))
        buf += f
    states = []
    for s in (MeterSettings(), MeterSettings(compiled=False), MeterSettings(fast_path=False)):
        m = Meter(s)
        m.feed(bytes(buf), bytes(meta), d.DLT_EN10MB)
        (sa,) = m.table.sas.values()
        states.append(({k: getattr(sa, k) for k in _SLOTS if k != "peer"}, sa.key in m.table.probation,
                       m.classes[d.ESP]))
    assert states[0] == states[1] == states[2]
    assert states[0][0]["trial"] == (count < PROBATION_RUN)


_SLOTS = list(FIELDS)


@pytest.mark.parametrize("ifindex", [None, 7])
def test_a_new_sa_that_evicts_inside_a_walk_leaves_no_stale_cache_entry(ifindex: int | None) -> None:
    """A full table (max_sas 2): each new SA the walk creates drops the oldest probationer, whose frames come
    again later in the same batch. The walk's SA cache must follow the table's epoch after each create (the
    dropped SA's cached pointer is not the table's any more): every state is the reference path's."""
    spis = [1, 2, 1, 2, 3, 1, 2, 3, 4, 1, 4, 5, 2, 5, 1]  # 1 and 2 cached, then 3 drops 1, 1 drops 2...
    seqs: dict[int, int] = {}
    buf, meta = bytearray(), bytearray()
    for i, spi in enumerate(spis):
        seqs[spi] = seqs.get(spi, 0) + 1
        f = _frame(spi, 0x100 + spi, seqs[spi])
        meta += struct.pack("=IIII", 1_700_000_000, i, len(buf), len(f))
        buf += f
    table = TableSettings(max_sas=2)
    states = []
    for s in (MeterSettings(table=table), MeterSettings(table=table, compiled=False),
              MeterSettings(table=table, fast_path=False)):
        m = Meter(s, keep_history=True)
        m.feed(bytes(buf), bytes(meta), d.DLT_EN10MB, ifindex)
        states.append(([(sa.key, {k: getattr(sa, k) for k in _SLOTS if k != "peer"}) for sa in m.table.all_sas()],
                       list(m.table.probation), m.table.unconfirmed_sas, m.table.unconfirmed_datagrams,
                       m.table.evictions, dict(m.classes)))
    assert states[0] == states[1] == states[2]
    assert states[0][2:5] == (9, 13, 9)  # each of the nine creates after the second dropped a probationer


def _flow_frame(src: bytes, dst: bytes, spi: int, seq: int, udp: bool, kind: str) -> bytes:
    """Ethernet / IPv4 (or IPv6, or with options, or VLAN-tagged: the decoder's) / ESP or ESP-in-UDP."""
    esp = struct.pack("!II", spi, seq & 0xFFFFFFFF) + bytes(16)
    if udp:
        esp = struct.pack("!HHHH", 4500, 4500, 8 + len(esp), 0) + esp
    proto = 17 if udp else 50
    if kind == "v6":
        ip = struct.pack("!IHBB16s16s", 0x60000000, len(esp), proto, 64, bytes(15) + src[-1:], bytes(15) + dst[-1:])
        return b"\x02" * 12 + b"\x86\xdd" + ip + esp
    opts = b"\x01\x01\x01\x00" if kind == "options" else b""
    ip = struct.pack("!BBHHHBBH4s4s", 0x46 if opts else 0x45, 0, 20 + len(opts) + len(esp), 1, 0, 64, proto, 0,
                     src, dst) + opts
    return b"\x02" * 12 + (b"\x81\x00\x00\x05" if kind == "vlan" else b"") + b"\x08\x00" + ip + esp


@pytest.mark.parametrize("seed", range(12))
def test_many_new_sas_through_a_full_table_equal_the_reference(seed: int) -> None:
    """New SAs by the hundred between a few addresses (so both ways pair, and several wait under one flow
    key), restarts, jumps and late numbers, a table of a few SAs (probationers and pairs dropped, established
    SAs evicted), short timers, a pairing authority, local addresses, frames the walk leaves to the decoder:
    the compiled walk and create, the Python inline loop and the reference path end every batch in the same
    state and give the same record stream and document."""
    rng = random.Random(seed)
    addrs = [bytes([10, 0, 0, i]) for i in range(1, rng.randint(3, 6))]
    next_seq: dict[tuple, int] = {}
    frames = []
    for _ in range(1500):
        if next_seq and rng.random() < 0.5:
            flow = rng.choice(list(next_seq))
        else:
            flow = (rng.choice(addrs), rng.choice(addrs), rng.randint(1, rng.choice((30, 3000))), rng.random() < 0.3)
        seq = next_seq.get(flow, rng.choice((1, 7, 0xFFFFFFF0)))
        r = rng.random()
        if r < 0.03:
            seq = 1  # a restart
        elif r < 0.08:
            seq = seq + rng.randint(2, 40) if r < 0.06 else max(0, seq - rng.randint(1, 9))
        next_seq[flow] = seq + 1
        kind = rng.choice(("v6", "options", "vlan")) if rng.random() < 0.1 else ""
        frames.append(_flow_frame(*flow[:3], seq, flow[3], kind))
    idle, active = rng.choice(((2.0, 1.0), (30.0, 60.0), (1.0, 1.0)))
    table = TableSettings(tracker=TrackerSettings(window=64, reorder_time=rng.choice((0.1, 1.0))),
                          idle_timeout=idle, active_timeout=active, max_sas=rng.choice((2, 5, 12, 1000)))
    gaps = [rng.choice((0, 10, 1000, 100_000, 700_000)) for _ in range(17)]
    cuts = [rng.choice((1, 9, 300, 3000)) for _ in range(7)]
    authority, ifindex = rng.random() < 0.4, rng.choice((None, 7))

    class _Claim:
        def __init__(self, name: str, peer: bytes) -> None:
            self.name, self.peer = name, peer

    class _Authority:
        def claim(self, sa: SA) -> _Claim | None:
            return None if sa.spi % 5 else _Claim(f"t{sa.spi}", sa.reverse_flow_key() + (sa.spi + 1).to_bytes(4, "big"))

    results = []
    for mode in ({}, {"compiled": False}, {"fast_path": False}):
        sink = _Sink()
        m = Meter(MeterSettings(table=table, **mode), sink, keep_history=True, local_addrs={addrs[0]})
        if authority:
            m.table.pairer.authority = _Authority()
        t_us, i, c, states = 1_700_000_000 * 1_000_000, 0, 0, []
        while i < len(frames):
            chunk = frames[i:i + cuts[c % len(cuts)]]
            buf, meta = bytearray(), bytearray()
            for k, f in enumerate(chunk):
                t_us += gaps[(i + k) % len(gaps)]
                meta += struct.pack("=IIII", t_us // 1_000_000, t_us % 1_000_000, len(buf), len(f))
                buf += f
            m.feed(bytes(buf), bytes(meta), d.DLT_EN10MB, ifindex)
            t = m.table
            states.append((list(t.probation), list(t.dormant), t.evictions, t.unconfirmed_sas, t.unconfirmed_datagrams,
                           t.pairer.next_tunnel, t.pairer.disagreements, dict(m.classes),
                           [(sa.key, sa.generation, sa.tunnel_id, sa.name, sa.local, sa.datagrams, sa.last, sa.fseq,
                             sa.trial, sa.active) for sa in t.sas.values()],
                           [(due, sa.key, sa.generation) for due, sa in t.schedule]))
            assert one_entry_each(t)
            i, c = i + len(chunk), c + 1
        m.finish()
        results.append((states, sink.records, document(m, "h", 1)))
    assert results[0] == results[1] == results[2]


def _other_templates() -> dict[str, bytes]:
    """Frames agent.decode classes "other" (the walk counts them in C), and their near relatives it must
    leave to Python: IKE, NAT-T, ESP, fragments, extension headers, truncated and malformed headers."""
    eth = b"\x02" * 6 + b"\x04" * 6

    def v4(proto: int, payload: bytes, frag: int = 0, verihl: int = 0x45) -> bytes:
        options = bytes(4 * ((verihl & 0x0F) - 5))
        return struct.pack("!BBHHHBBH4s4s", verihl, 0, 20 + len(options) + len(payload), 9, frag, 64, proto, 0,
                           bytes([10, 0, 0, 1]), bytes([10, 0, 1, 1])) + options + payload

    def v6(nh: int, payload: bytes) -> bytes:
        return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, bytes(15) + b"\1",
                           bytes(15) + b"\2") + payload

    def udp(sport: int, dport: int, data: bytes = bytes(24)) -> bytes:
        return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data

    tcp = bytes(20) + b"payload"
    ip4, ip6, vlan = b"\x08\x00", b"\x86\xdd", b"\x81\x00\x00\x05"
    return {
        "tcp4": eth + ip4 + v4(6, tcp), "icmp4": eth + ip4 + v4(1, bytes(12)),
        "udp4-dns": eth + ip4 + v4(17, udp(53, 33000)), "tcp4-options": eth + ip4 + v4(6, tcp, verihl=0x47),
        "udp4-ike": eth + ip4 + v4(17, udp(500, 500)), "udp4-natt": eth + ip4 + v4(17, udp(4500, 4500)),
        "udp4-natt-src": eth + ip4 + v4(17, udp(4500, 53)), "esp4": eth + ip4 + v4(50, bytes(24)),
        "tcp4-first-frag": eth + ip4 + v4(6, tcp, frag=0x2000),
        "udp4-first-frag": eth + ip4 + v4(17, udp(53, 9), frag=0x2000),
        "tcp4-later-frag": eth + ip4 + v4(6, tcp, frag=0x0010), "udp4-short": eth + ip4 + v4(17, bytes(6)),
        "tcp6": eth + ip6 + v6(6, tcp), "udp6-dns": eth + ip6 + v6(17, udp(53, 9)),
        "icmp6": eth + ip6 + v6(58, bytes(8)),
        "udp6-ike": eth + ip6 + v6(17, udp(9, 500)), "esp6": eth + ip6 + v6(50, bytes(24)),
        "tcp6-hop-by-hop": eth + ip6 + v6(0, bytes([6, 0]) + bytes(6) + tcp),
        "udp6-frag": eth + ip6 + v6(44, bytes([17, 0, 0, 0, 0, 0, 0, 1]) + udp(53, 9)),
        "arp": eth + b"\x08\x06" + bytes(28), "lldp": eth + b"\x88\xcc" + bytes(30),
        "vlan-tcp4": eth + vlan + ip4 + v4(6, tcp),
        "qinq-udp6": eth + b"\x88\xa8\x00\x07" + vlan + ip6 + v6(17, udp(53, 9)),
        "three-tags": eth + vlan * 3 + ip4 + v4(6, tcp), "vlan-esp4": eth + vlan + ip4 + v4(50, bytes(24)),
        "short-eth": eth + b"\x08", "vlan-cut": eth + vlan[:3],
    }


OTHER = {"tcp4", "icmp4", "udp4-dns", "tcp4-options", "tcp6", "udp6-dns", "icmp6", "arp", "lldp", "vlan-tcp4",
         "qinq-udp6", "three-tags"}


def _walk_takes_as_other(frame: bytes, linktype: int = d.DLT_EN10MB) -> bool:
    """One frame through the compiled walk, as Meter._walk_frames calls it: counted there as "other"? Bytes
    after the frame that no header would have (a read beyond it would misjudge it)."""
    m = Meter(MeterSettings())
    t, table = m.settings.table.tracker, m.table
    meta = struct.pack("=IIII", 1000, 0, 0, len(frame))
    stop, _octets, _sa, _seq, _len, others = m.walk(frame + b"\xee" * 80, meta, linktype, 0, table.sas, None,
                                                    float("inf"),
                                                    table.epoch, t.window, t.jump_limit, t.reorder_time,
                                                    table.probation, table, None, set())
    assert others in (0, 1) and (not others or stop == 1)
    return bool(others)


@pytest.mark.parametrize("link", sorted(LINKS))
def test_the_walk_counts_other_frames_in_c_and_nothing_the_decoder_would_not(link: str) -> None:
    """A mixed capture read without --bpf: TCP, UDP, ARP... stay in C (the general decoder cost 5 us each);
    the walk takes a frame as "other" only when agent.decode classes it so and no fragment entry wants it,
    on the templates and on 20 000 mutations of them (truncated, bytes overwritten), on Ethernet and in
    cooked captures."""
    rng = random.Random(11)
    linktype = LINKS[link]
    templates = {name: f if linktype == d.DLT_EN10MB else _cooked(f, linktype, rng)
                 for name, f in _other_templates().items()}
    for name, frame in templates.items():
        f = d.decode(frame, 0, len(frame), linktype)
        assert name not in OTHER or (f.cls == d.OTHER and f.frag_id is None), name
        assert _walk_takes_as_other(frame, linktype) == (name in OTHER), name
    frames = list(templates.values())
    taken = 0
    for _ in range(20_000):
        frame = bytearray(rng.choice(frames))
        if rng.random() < 0.3:
            del frame[rng.randrange(len(frame) + 1):]
        for _ in range(rng.randrange(4)):
            if frame:
                frame[min(len(frame) - 1, rng.choice((12, 13, 14, 18, 20, 21, 23, 34, 36, 40, 54, 56))
                          if rng.random() < 0.7 else rng.randrange(len(frame)))] = rng.randrange(256)
        frame = bytes(frame)
        if _walk_takes_as_other(frame, linktype):
            f = d.decode(frame, 0, len(frame), linktype)
            assert f.cls == d.OTHER and f.frag_id is None, frame.hex()
            taken += 1
    assert taken > 5000


@pytest.mark.parametrize("link", sorted(LINKS))
def test_a_mixed_stream_with_other_frames_equals_the_reference(link: str) -> None:
    """Other frames between the datagrams of a stream, timers in between: the same document and classes,
    on Ethernet and in cooked captures."""
    rng = random.Random(12)
    others = list(_other_templates().values())
    frames = [rng.choice(others) if rng.random() < 0.6 else f for f in _stream(rng, 20_000)]
    linktype = LINKS[link]
    if linktype != d.DLT_EN10MB:
        frames = [_cooked(f, linktype, rng) for f in frames]
    table = TableSettings(active_timeout=1.0, idle_timeout=2.0)
    docs = []
    for s in (MeterSettings(table=table), MeterSettings(table=table, fast_path=False)):
        m = Meter(s, keep_history=True)
        buf, meta = bytearray(), bytearray()
        for i, f in enumerate(frames):
            meta += struct.pack("=IIII", 1_700_000_000 + i // 2000, (i % 2000) * 500, len(buf), len(f))
            buf += f
        for start in range(0, len(frames), 4096):
            m.feed(bytes(buf), bytes(meta[16 * start:16 * (start + 4096)]), linktype)
        m.finish()
        docs.append((document(m, "x", linktype), m.classes))
    assert docs[0] == docs[1]
    assert docs[0][1][d.OTHER] > 5000


_TAGGED_CHILD = """
import json, random, struct, sys
from agent import decode as d
from agent.meter import Meter, MeterSettings
from agent.report import document
from tests.test_fastpath import _as_ipv6, _cooked, _frame, _tag

def batch(frames):
    buf, meta = bytearray(), bytearray()
    for i, f in enumerate(frames):
        meta += struct.pack("=IIII", 1_700_000_000 + i // 1000, (i % 1000) * 1000, len(buf), len(f))
        buf += f
    return bytes(buf), bytes(meta)

def run(frames, settings, count=False, linktype=d.DLT_EN10MB):
    m = Meter(settings, keep_history=True)
    calls = []
    if count:
        slow = m._frame
        m._frame = lambda *a: calls.append(1) or slow(*a)
    m.feed(*batch(frames), linktype, 3)
    m.finish()
    return document(m, "x", linktype), len(calls)

vids = [(), (10,), (20,), (30, 40), (30, 41)]
frames = [_tag(ip(_frame(k % 8, 0x100 + k % 8, 1 + i // 40)), vids[k % 5])
          for i in range(8000) for k in (i % 40,) for ip in (bytes, _as_ipv6)]
fast, calls = run(frames, MeterSettings(), count=True)
ref, _ = run(frames, MeterSettings(fast_path=False))
cooked = {}
for lt in (d.DLT_LINUX_SLL, d.DLT_LINUX_SLL2):
    rng = random.Random(lt)
    c = [_cooked(f, lt, rng) for f in frames]
    doc, n = run(c, MeterSettings(), count=True, linktype=lt)
    cooked[lt] = (n, doc == run(c, MeterSettings(fast_path=False), linktype=lt)[0], len(doc["sas"]))
many = [_tag(_frame(1, 0x101, 1 + j), (o // 100, o % 100)) for o in range(10_000) for j in range(2)]
over, _ = run(many, MeterSettings())
over_ref, _ = run(many, MeterSettings(fast_path=False))
print(json.dumps({"calls": calls, "equal": fast == ref, "sas": len(fast["sas"]), "over_equal": over == over_ref,
                  "over_sas": len(over["sas"]), "cooked": list(cooked.values())}))
"""


def test_tagged_frames_stay_in_the_walk_and_past_its_bound_go_to_python() -> None:
    """VLAN-tagged ESP (a trunk: 802.1Q and QinQ), IPv6 and Linux cooked captures (SLL, SLL2: tcpdump -i any;
    SAs split by interface and direction) are walked in C (the general decoder took 14 us a frame): no frame
    of 16 000 on 80 SAs at five observation points reaches Meter._frame, and the document equals the
    reference path's. Beyond the walk's 8192 cached observation points (10 000 QinQ pairs) Python takes the
    frames, with the same document. In a child process: the walk's observation points last as long as it."""
    out = subprocess.run([sys.executable, "-c", _TAGGED_CHILD], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    (sll, sll_equal, sll_sas), (sll2, sll2_equal, sll2_sas) = got.pop("cooked")
    assert got == {"calls": 0, "equal": True, "sas": 80, "over_equal": True, "over_sas": 10_000}
    assert (sll, sll_equal, sll_sas) == (0, True, 80)  # SLL: the direction is the SA's, not its key
    assert (sll2, sll2_equal) == (0, True) and sll2_sas > 80  # SLL2: the interface is part of the key


@pytest.mark.parametrize("seed", range(8))
def test_what_python_sees_of_the_table_during_and_between_walks_is_the_reference(seed: int) -> None:
    """The compiled create reads the table, its settings and its pairer once per walk and counts a dropped
    probationer's counters in C until Python code may look (agent/_fastpath.c, Ctx). So: the `dropped` hook
    and _drop_dead see the counters, the epoch, the probation order and the table the reference path shows
    them (one rebinds max_sas, the other STALE_MIN, as they run: read again after them); and what changes
    between batches takes effect at the next one: settings rebound (Meter.configure: max_sas, timeouts), an
    authority set and removed, counters and STALE_MIN set on the table. A walk that kept what it read past its
    own call, or wrote a counter back late, fails here."""
    from dataclasses import replace

    rng = random.Random(seed)
    addrs = [bytes([10, 0, 0, i]) for i in range(1, 5)]
    tunnels = [(rng.choice(addrs), rng.choice(addrs), 0x7000 + k, k % 3 == 0) for k in range(12)]
    next_seq = dict.fromkeys(tunnels, 1)
    frames = []
    for _ in range(4000):
        r = rng.random()
        if r < 0.45:  # one-packet SPIs with their own addresses: pairing and dropping all in C
            frames.append(_flow_frame(rng.randbytes(4), rng.randbytes(4), rng.getrandbits(31) | 1, 9, False, ""))
        elif r < 0.7:  # ... between a few addresses: several candidates under a flow key (Pairer in Python)
            frames.append(_flow_frame(rng.choice(addrs), rng.choice(addrs), rng.getrandbits(31) | 1,
                                      rng.randint(1, 50), rng.random() < 0.3, ""))
        else:
            flow = rng.choice(tunnels)
            frames.append(_flow_frame(*flow[:3], next_seq[flow], flow[3], ""))
            next_seq[flow] += 1
    cuts = [rng.choice((1, 7, 60, 400)) for _ in range(11)]
    gaps = [rng.choice((0, 30, 2000, 20_000, 300_000)) for _ in frames]  # µs before each frame
    plan = []  # what changes before each batch, the same for every mode
    for b in range(len(frames)):
        step: dict = {}
        if b % 5 == 2:
            step["table"] = TableSettings(max_sas=rng.choice((8, 30, 120)), idle_timeout=rng.choice((1.0, 3.0)),
                                          active_timeout=rng.choice((0.5, 2.0)))
        if b % 7 == 3:
            step["authority"] = rng.random() < 0.5
        if b % 6 == 4:
            step["stale_min"] = rng.choice((2, 6, 40))
        if b % 9 == 5:
            step["evictions"] = rng.randint(0, 10**20)  # past 63 bits: the table's ints, not C's
        plan.append(step)

    class _Claim:
        def __init__(self, name: str, peer: bytes) -> None:
            self.name, self.peer = name, peer

    class _Authority:
        def claim(self, sa: SA) -> _Claim | None:
            return None if sa.spi % 3 else _Claim(f"t{sa.spi}", sa.reverse_flow_key() + (sa.spi + 1).to_bytes(4, "big"))

    def view(t: SATable, base: int) -> tuple:
        return (t.evictions, t.unconfirmed_sas, t.unconfirmed_datagrams, t.stale_entries, t.epoch - base, len(t.sas),
                list(t.probation)[:2], list(t.probation)[-2:], len(t.probation), len(t.pairer.unpaired),
                t.pairer.next_tunnel, t.settings.max_sas)

    results = []
    for mode in ({}, {"fast_path": False}):
        sink = _Sink()
        table = TableSettings(max_sas=30, idle_timeout=3.0, active_timeout=2.0)
        m = Meter(MeterSettings(table=table, **mode), sink, keep_history=True)
        t, base, seen = m.table, m.table.epoch, []
        t.STALE_MIN = 4
        forget, drop_dead = t.dropped, t._drop_dead

        def dropped(sa: SA, t: SATable = t, base: int = base, seen: list = seen, forget=forget) -> None:
            seen.append(("dropped", sa.key, sa.key in t.sas, *view(t, base)))
            if len(seen) % 7 == 0:  # the next drop of the same create reads max_sas again
                t.settings = replace(t.settings, max_sas=max(4, t.settings.max_sas - 3))
            forget(sa)

        def dead(t: SATable = t, base: int = base, seen: list = seen, drop_dead=drop_dead) -> None:
            seen.append(("drop_dead", *view(t, base)))
            t.STALE_MIN = 3 + len(seen) % 5
            drop_dead()

        t.dropped, t._drop_dead = dropped, dead
        t_us, i, b, states = 1_700_000_000 * 1_000_000, 0, 0, []
        while i < len(frames):
            step = plan[b]
            if "table" in step:
                m.configure(MeterSettings(table=step["table"], **mode))
            if "authority" in step:
                t.pairer.authority = _Authority() if step["authority"] else None
            if "stale_min" in step:
                t.STALE_MIN = step["stale_min"]
            if "evictions" in step:
                t.evictions = step["evictions"]
            chunk = frames[i:i + cuts[b % len(cuts)]]
            buf, meta = bytearray(), bytearray()
            for k, f in enumerate(chunk):
                t_us += gaps[i + k]
                meta += struct.pack("=IIII", t_us // 1_000_000, t_us % 1_000_000, len(buf), len(f))
                buf += f
            m.feed(bytes(buf), bytes(meta), d.DLT_EN10MB, 7)
            states.append((view(t, base), list(t.probation), list(t.dormant), t.pairer.disagreements, dict(m.classes),
                           [(sa.key, sa.generation, sa.tunnel_id, sa.name, sa.datagrams, sa.last, sa.fseq, sa.trial,
                             sa.active) for sa in t.sas.values()],
                           [(due, sa.key, sa.generation) for due, sa in t.schedule]))
            assert one_entry_each(t)
            i, b = i + len(chunk), b + 1
        m.finish()
        results.append((states, seen, sink.records, document(m, "h", 1)))
    assert results[0] == results[1]
    kinds = [s[0] for s in results[0][1]]
    assert kinds.count("dropped") > 300 and kinds.count("drop_dead") > 20


@pytest.mark.parametrize("hook", ["claim", "dropped"])
def test_a_walk_inside_a_walk_leaves_the_outer_walk_its_own_sas(hook: str) -> None:
    """Python code a walk's create runs (a pairing authority's claim, the `dropped` hook) may meter another
    capture: that walk fills the module's one SA cache with its own table's SAs, sized for that table. The
    outer walk must not take its next frames to the other table's SAs (here the same flows: a cache that kept
    them counted the outer SAs' datagrams on the inner ones, and once the inner meter is gone read freed SAs)
    nor look its pre-parsed frames up in a cache of another size: both meters end as the reference path's."""
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])

    def batch(frames: list[bytes], sec: int) -> tuple[bytes, bytes]:
        buf, meta = bytearray(), bytearray()
        for i, f in enumerate(frames):
            meta += struct.pack("=IIII", sec, i, len(buf), len(f))
            buf += f
        return bytes(buf), bytes(meta)

    def run(mode: dict) -> tuple:
        # claim: a table with room (no epoch change to clear the cache); dropped: a full one, its cache eight
        # times the inner's (the pre-parsed frames index past the inner's cache: ASan, not this test, sees it)
        size = 40 if hook == "claim" else 1200
        table = TableSettings(max_sas=1000 if hook == "claim" else size)
        outer, inner = Meter(MeterSettings(table=table, **mode), keep_history=True), Meter(MeterSettings(**mode))
        outer.feed(*batch([_flow_frame(a, b, spi, 1, False, "") for spi in range(1, size + 1)], 1_700_000_000),
                   d.DLT_EN10MB, 7)
        inner_frames = [_flow_frame(a, b, spi, q, False, "") for q in (1, 2) for spi in range(1, 41)]
        calls = []

        def walk_inner(*_: object) -> None:
            calls.append(1)
            if len(calls) == 1:
                inner.feed(*batch(inner_frames, 1_700_000_001), d.DLT_EN10MB, 7)

        class _Authority:
            def claim(self, sa: SA) -> None:
                walk_inner()

        if hook == "claim":
            outer.table.pairer.authority = _Authority()
        else:
            forget = outer.table.dropped
            outer.table.dropped = lambda sa: (walk_inner(), forget(sa))
        later = [_flow_frame(b, a, 999, 1, False, "")]
        later += [_flow_frame(a, b, spi, 2 + k, False, "") for k in range(3) for spi in range(1, size + 1)]
        outer.feed(*batch(later, 1_700_000_002), d.DLT_EN10MB, 7)
        outer.finish()
        inner.finish()
        return document(outer, "h", 1), document(inner, "h", 1), len(calls)

    fast, ref = run({}), run({"fast_path": False})
    assert fast[2] > 0 and fast == ref


def _ipv6_digest_twin(ident4: bytes, spi: int, udp: bool) -> tuple[bytes, bytes]:
    """IPv6 source and destination addresses whose 36/40-octet ident (with `spi`, ports 4500 when `udp`) the
    walk's SA cache digested, as of f621340, into the 16 octets of the IPv4 ident `ident4` (zero-padded):
    agent/_fastpath.c parse_ipv6's (w0, w1), with the first half of each address zero, solved for the rest."""
    mask, k0, k1 = (1 << 64) - 1, 0xC2B2AE3D27D4EB4F, 0xD6E8FEB86659FD93
    raw = ident4.ljust(16, b"\0")
    w0, w1 = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
    after_addrs = 0x11941194 if udp else spi  # be32 of the 4 octets after the addresses: the ports or the SPI
    src = ((w0 ^ spi) * pow(k0, -1, 1 << 64)) & mask
    dst = ((w1 ^ after_addrs << 32 ^ (40 if udp else 36)) * pow(k1, -1, 1 << 64)) & mask
    return bytes(8) + src.to_bytes(8, "little"), bytes(8) + dst.to_bytes(8, "little")


@pytest.mark.parametrize(("udp4", "udp6"), [(False, False), (False, True), (True, False), (True, True)])
def test_an_ipv6_sa_whose_cache_digest_is_an_ipv4_ident_is_not_the_ipv4_sa(udp4: bool, udp6: bool) -> None:
    """The SA cache keys an IPv4 frame by its ident's own 16 octets and an IPv6 frame by a digest (a hit on an
    IPv6 frame compares the ident; on an IPv4 frame it does not). So no digest may be an IPv4 ident: IPv6 SAs
    whose addresses make the digest (as it was) the ident of an IPv4 SA at the same observation point, then
    that IPv4 SA, in one batch; the walk took the IPv4 datagrams as the IPv6 SA's."""
    natt = (4500, 4500, 0) if udp4 else None
    ident4 = _frame(1, 0x1234, 1, natt)[26:34] + (b"\x11\x94\x11\x94" if udp4 else b"") + (0x1234).to_bytes(4, "big")
    src, dst = _ipv6_digest_twin(ident4, 0x77, udp6)
    frames = []
    for seq in range(1, 5):
        esp = struct.pack("!II", 0x77, seq) + bytes(16)
        if udp6:
            esp = struct.pack("!HHHH", 4500, 4500, 8 + len(esp), 0) + esp
        ip6 = struct.pack("!IHBB16s16s", 0x60000000, len(esp), 17 if udp6 else 50, 64, src, dst)
        frames.append(b"\x02" * 12 + b"\x86\xdd" + ip6 + esp)
    frames += [_frame(1, 0x1234, seq, natt) for seq in range(5, 9)]
    buf, meta = bytearray(), bytearray()
    for i, f in enumerate(frames):
        meta += struct.pack("=IIII", 1_700_000_000, i, len(buf), len(f))
        buf += f
    results = []
    for s in (MeterSettings(), MeterSettings(fast_path=False)):
        m = Meter(s, keep_history=True)
        m.feed(bytes(buf), bytes(meta), d.DLT_EN10MB, 7)
        results.append([(sa.key, sa.datagrams, sa.first, sa.last) for sa in m.table.all_sas()])
        m.finish()
        results.append(document(m, "x", 1))
    assert results[0] == results[2] and results[1] == results[3]
    assert [(len(key_ident(key)), n) for key, n, *_ in results[2]] == [(40 if udp6 else 36, 4), (16 if udp4 else 12, 4)]


def _ipv6_digest_pair() -> tuple[bytes, bytes]:
    """Two IPv6 addresses that agent/_fastpath.c parse_ipv6 digests alike as destinations (hi * k ^ lo, of
    their little-endian halves, equal): with one source and SPI, two SAs whose cache key is the same."""
    mask, k = (1 << 64) - 1, 0x9E3779B97F4A7C15
    hi1, lo1, hi2 = 0x20010DB8 << 32, 1, 0x20010DB8 << 32 | 7
    lo2 = (hi1 * k & mask) ^ lo1 ^ (hi2 * k & mask)
    return tuple(hi.to_bytes(8, "little") + lo.to_bytes(8, "little") for hi, lo in ((hi1, lo1), (hi2, lo2)))


@pytest.mark.parametrize("udp", [False, True])
def test_two_ipv6_sas_whose_cache_digests_agree_stay_two(udp: bool) -> None:
    """The walk's SA cache keys an IPv6 frame by a digest of its ident, so two IPv6 SAs can share a key: a hit,
    the one found AHEAD_SA frames before (cached_sa) included, is the frame's SA only when the SA's ident is
    the frame's (ident_matches). Two such SAs' datagrams interleaved in one batch: each SA keeps its own
    (without the check, the walk counted 127 and 1, or with it on fresh hits only, 67 and 61, for 64 and 64)."""
    src = bytes(15) + b"\x01"
    frames, seqs = [], [1, 1]
    for which in [0, 1, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1] * 8:
        esp = struct.pack("!II", 0x55, seqs[which]) + bytes(16)
        seqs[which] += 1
        if udp:
            esp = struct.pack("!HHHH", 4500, 4500, 8 + len(esp), 0) + esp
        ip6 = struct.pack("!IHBB16s16s", 0x60000000, len(esp), 17 if udp else 50, 64, src, _ipv6_digest_pair()[which])
        frames.append(b"\x02" * 12 + b"\x86\xdd" + ip6 + esp)
    buf, meta = bytearray(), bytearray()
    for i, f in enumerate(frames):
        meta += struct.pack("=IIII", 1_700_000_000, i, len(buf), len(f))
        buf += f
    results = []
    for s in (MeterSettings(), MeterSettings(fast_path=False)):
        m = Meter(s, keep_history=True)
        m.feed(bytes(buf), bytes(meta), d.DLT_EN10MB, 7)
        results.append([(sa.key, sa.datagrams, sa.first, sa.last, sa.lost) for sa in m.table.all_sas()])
        m.finish()
        results.append(document(m, "x", 1))
    assert results[0] == results[2] and results[1] == results[3]
    assert [n for _, n, *_ in results[2]] == [64, 64]


@pytest.mark.parametrize("link", sorted(LINKS))
def test_frames_cut_at_every_octet_with_their_own_bytes_after_them_equal_the_reference(link: str) -> None:
    """Each ESP / ESP-in-UDP template (IPv4, IPv6; untagged, 802.1Q, QinQ) and each "other" template, captured
    to every length from 0 to its own, in a batch whose bytes after each cut frame are the rest of that frame
    (a walk reading past caplen would find a whole datagram there), each cut datagram the next number of an
    SA the frame before it set up: the compiled walk's document and classes are the reference path's."""
    rng = random.Random(13)
    linktype = LINKS[link]
    templates = []
    for spi, udp in ((0x31, None), (0x32, (4500, 4500, 0))):
        for ip in (bytes, _as_ipv6):
            for vids in ((), (5,), (5, 6)):
                templates.append(lambda seq, spi=spi, udp=udp, ip=ip, vids=vids: _tag(ip(_frame(spi, spi, seq, udp)),
                                                                                       vids))
    templates += [lambda seq, f=f: f for f in _other_templates().values()]
    frames: list[tuple[bytes, int]] = []  # (bytes in the buffer, caplen)
    for make in templates:
        for cut in range(len(make(1)) + 7):  # a cooked header is 2 (SLL) or 6 (SLL2) octets longer
            for seq, caplen in ((2 * cut + 1, None), (2 * cut + 2, cut)):
                f = make(seq)
                f = f if linktype == d.DLT_EN10MB else _cooked(f, linktype, rng)
                frames.append((f, len(f) if caplen is None else min(caplen, len(f))))
    buf, meta = bytearray(), bytearray()
    for i, (f, caplen) in enumerate(frames):
        meta += struct.pack("=IIII", 1_700_000_000 + i // 1000, (i % 1000) * 1000, len(buf), caplen)
        buf += f
    docs = []
    for s in (MeterSettings(), MeterSettings(fast_path=False)):
        m = Meter(s, keep_history=True)
        for start in range(0, len(frames), 3000):
            m.feed(bytes(buf), bytes(meta[16 * start:16 * (start + 3000)]), linktype, 7)
        m.finish()
        docs.append((document(m, "x", linktype), dict(m.classes)))
    assert docs[0] == docs[1]
    assert docs[0][1][d.TRUNCATED] > 1000 and docs[0][1][d.ESP] > 1000



def _nested_walks() -> str:
    """The outer walk's document, classes and claims, and the reference path's: equal? (JSON, for a child)"""
    def batch(frames: list[bytes]) -> tuple[bytes, bytes]:
        buf, meta = bytearray(), bytearray()
        for i, f in enumerate(frames):
            meta += struct.pack("=IIII", 1_700_000_000, i, len(buf), len(f))
            buf += f
        return bytes(buf), bytes(meta)

    big = Meter(MeterSettings())  # its walks size the cache to its 8000 SAs
    big.feed(*batch([_frame(k & 0xFF, 0x10000 + k, 1) for k in range(8000)]), d.DLT_EN10MB)

    class _Authority:
        def __init__(self) -> None:
            self.claims = 0

        def claim(self, sa: SA) -> None:
            self.claims += 1
            other = Meter(MeterSettings())  # the outer SA 1's twin, cached by a second datagram
            other.feed(*batch([_frame(1, 0x101, 1), _frame(1, 0x101, 2)]), d.DLT_EN10MB)
            if self.claims % 5 == 0:
                big.feed(*batch([_frame(1, 0x99, self.claims)]), d.DLT_EN10MB)

    frames = [_frame(1, 0x101, 1)] + [_frame(k & 0xFF, 0x20000 + k, 1) for k in range(1000)]
    frames += [f for k in range(1000) for f in (_frame(1, 0x101, k + 2), _frame(k & 0xFF, 0x20000 + k, 2),
                                                _frame(k & 0xFF, 0x30000 + k, 1))]
    results = []
    for s in (MeterSettings(), MeterSettings(fast_path=False)):
        m = Meter(s, keep_history=True)
        m.table.pairer.authority = _Authority()
        m.feed(*batch(frames), d.DLT_EN10MB)
        m.finish()
        results.append((document(m, "x", 1), dict(m.classes), m.table.pairer.authority.claims))
    return json.dumps({"equal": results[0] == results[1], "claims": results[0][2]})


def test_walks_inside_a_walk_that_shrink_and_grow_the_cache_leave_the_outer_walk_in_bounds() -> None:
    """test_a_walk_inside_a_walk_leaves_the_outer_walk_its_own_sas, each claim of 2001 walking a one-SA
    table (the outer SA's twin) and every fifth an 8000-SA one: the module's SA cache shrinks to 2^9 buckets
    and grows to 2^15 under an outer walk whose frames were parsed for 2^12. In a child under -X dev, whose
    allocator sees what a walk writes out of bounds without AddressSanitizer (before 0096462: SIGABRT, heap
    corruption)."""
    code = "from tests.test_fastpath import _nested_walks; print(_nested_walks())"
    out = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {"equal": True, "claims": 2001}


def _mutated(frame: bytes, ip: int, rng: random.Random) -> tuple[bytes, int]:
    """(bytes, caplen): `frame` (its network header at `ip`) with a length field one off a boundary, an SPI or
    a port changed, a cooked header octet changed, or captured only to a header boundary (its own bytes after)."""
    b = bytearray(frame)
    v6 = b[ip] >> 4 == 6
    udp = b[ip + (6 if v6 else 9)] == 17
    at = ip + (40 if v6 else 20)  # UDP or ESP
    kind = rng.randrange(6)
    if kind == 0:  # IPv4 total length / IPv6 payload length
        pos = ip + (4 if v6 else 2)
        base = rng.choice((struct.unpack_from("!H", b, pos)[0], 8, 16, 28, 36))
        struct.pack_into("!H", b, pos, max(0, base + rng.choice((-1, 0, 1))) & 0xFFFF)
    elif kind == 1 and udp:  # UDP length
        base = rng.choice((struct.unpack_from("!H", b, at + 4)[0], 8, 9, 12, 16))
        struct.pack_into("!H", b, at + 4, max(0, base + rng.choice((-1, 0, 1))))
    elif kind == 2:  # the SPI: 0 (malformed; in UDP the non-ESP marker) or another
        struct.pack_into("!I", b, at + 8 if udp else at, rng.choice((0, 1, 0x101)))
    elif kind == 3 and udp:  # a port: IKE's, NAT-T's or another
        struct.pack_into("!H", b, at + rng.choice((0, 2)), rng.choice((500, 4500, 53)))
    elif kind == 4:  # the link header: a cooked packet type, a protocol field, an address
        b[rng.randrange(ip)] = rng.choice((0, 4, 0x81, 0x86, 0xFF))
    elif kind == 5:
        cuts = (ip - 1, ip, ip + 19, ip + 20, ip + 39, ip + 40, at + 7, at + 8, at + 15, at + 16)
        return bytes(b), min(len(b), rng.choice(cuts))
    return bytes(b), len(b)


@pytest.mark.parametrize("link", sorted(LINKS))
def test_mutated_streams_on_every_link_and_capture_direction_equal_the_reference(link: str) -> None:
    """The differential fuzz, compact: streams of ESP and ESP-in-UDP SAs over IPv4 and IPv6, untagged, 802.1Q
    or QinQ, on Ethernet, SLL or SLL2, a quarter of the frames mutated (_mutated), read with the capture
    handle's direction None, "in" or "out" (it wins over the cooked header's) and an interface or none: the
    compiled walk's documents and classes are the reference path's. A walk that skips an IPv4, IPv6 or UDP
    length check by one, takes the cooked direction over the handle's or an SLL2 frame's interface for the
    walk's fails it."""
    rng = random.Random(17)
    linktype = LINKS[link]
    shift = {d.DLT_EN10MB: 0, d.DLT_LINUX_SLL: 2, d.DLT_LINUX_SLL2: 6}[linktype]
    frames = []
    for f in _stream(rng, 3000):
        k = f[29]
        vids = ((), (100 + k,), (7, 200 + k))[k % 3]
        f = _tag(_as_ipv6(f) if k % 2 else f, vids)
        f = f if linktype == d.DLT_EN10MB else _cooked(f, linktype, rng)
        frames.append(_mutated(f, shift + 14 + 4 * len(vids), rng) if rng.random() < 0.25 else (f, len(f)))
    buf, meta = bytearray(), bytearray()
    for i, (f, caplen) in enumerate(frames):
        meta += struct.pack("=IIII", 1_700_000_000 + i // 1000, (i % 1000) * 1000, len(buf), caplen)
        buf += f
    for direction, ifindex in ((None, 7), ("in", None), ("out", 7)):
        docs = []
        for s in (MeterSettings(), MeterSettings(fast_path=False)):
            m = Meter(s, keep_history=True)
            for start in range(0, len(frames), 1000):
                m.feed(bytes(buf), bytes(meta[16 * start:16 * (start + 1000)]), linktype, ifindex, direction)
            m.finish()
            docs.append((document(m, "x", linktype), dict(m.classes)))
        assert docs[0] == docs[1], direction
        assert docs[0][1][d.ESP] > 2000 and docs[0][1][d.MALFORMED] > 50 and docs[0][1][d.TRUNCATED] > 50


def test_numbers_stop_at_the_sequence_limit_on_every_path() -> None:
    """A number beyond agent.tracker.SEQ_LIMIT (only a forged run of confirmed jumps gets near it) is never a
    new `last`: implausible and late on every path, no overflow of the compiled 64-bit fields; the numbers
    up to it are taken as usual (by the walk where it is built)."""
    def batch(seqs: list[int], second: int) -> tuple[bytes, bytes]:
        buf, meta = bytearray(), bytearray()
        for i, seq in enumerate(seqs):
            f = _frame(1, 0x100, seq)
            meta += struct.pack("=IIII", 1_700_000_000 + second, i, len(buf), len(f))
            buf += f
        return bytes(buf), bytes(meta)

    states = []
    for s in (MeterSettings(), MeterSettings(compiled=False), MeterSettings(fast_path=False)):
        m = Meter(s)
        m.feed(*batch(list(range(1, 9)), 0), d.DLT_EN10MB)
        (sa,) = m.table.sas.values()
        sa.first, sa.last, sa.iv_min = SEQ_LIMIT - 10, SEQ_LIMIT - 3, -1  # as if it had got there
        m.feed(*batch([0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 2, 0], 1), d.DLT_EN10MB)
        states.append(({k: getattr(sa, k) for k in _SLOTS if k != "peer"}, m.classes[d.ESP]))
    assert states[0] == states[1] == states[2]
    got = states[0][0]
    assert got["last"] == SEQ_LIMIT and got["implausible"] == 2 and got["late"] == 2 and got["duplicates"] == 1
