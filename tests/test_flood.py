"""An SPI flood (one-packet SAs between random addresses) cannot evict the real tunnels or grow the table."""

from __future__ import annotations

import random
import struct
from collections import defaultdict

from agent.meter import Meter, MeterSettings
from agent.satable import TableSettings
from exporter.records import END_RESOURCES, BiflowRecord, SARecord

ETH = b"\x02" * 12 + b"\x08\x00"


def esp_frame(src: bytes, dst: bytes, spi: int, seq: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 32, 0, 0, 64, 50, 0, src, dst)
    return ETH + ip + struct.pack("!II", spi, seq) + bytes(32)


class Sink:
    def __init__(self) -> None:
        self.records: list[SARecord] = []

    def export(self, records: list[SARecord | BiflowRecord]) -> None:
        self.records.extend(r for r in records if isinstance(r, SARecord))

    def export_loss_events(self, events: list) -> None:
        pass


def run(flood: int, seed: int = 5) -> tuple[Meter, Sink, int]:
    real_rng, flood_rng = random.Random(seed), random.Random(seed + 1)  # same real traffic either way
    tunnels = [(bytes([10, 0, t, 1]), bytes([10, 0, t, 2]), 0x1000 + t) for t in range(20)]
    seqs: dict[int, int] = defaultdict(int)
    real = []
    for _ in range(20 * 2000):
        t = real_rng.randrange(20)
        seqs[t] += 1
        if real_rng.random() < 0.99:  # 1 % loss on the real tunnels
            src, dst, spi = tunnels[t]
            real.append(esp_frame(src, dst, spi, seqs[t]))
    frames = []
    share = flood / (flood + len(real))
    it = iter(real)
    while len(frames) < flood + len(real):
        if flood_rng.random() < share:
            r = flood_rng
            frames.append(esp_frame(r.randbytes(4), r.randbytes(4), r.getrandbits(32) | 1, r.getrandbits(32)))
        else:
            nxt = next(it, None)
            if nxt is None:
                break
            frames.append(nxt)
    frames.extend(it)
    settings = MeterSettings(table=TableSettings(max_sas=2000))
    sink = Sink()
    meter = Meter(settings, sink)
    peak = 0
    for start in range(0, len(frames), 4096):
        chunk = frames[start:start + 4096]
        buf = bytearray()
        meta = bytearray()
        for j, f in enumerate(chunk):
            meta += struct.pack("=IIII", 1000, (start + j) % 1_000_000, len(buf), len(f))
            buf += f
        meter.feed(bytes(buf), bytes(meta), 1)
        peak = max(peak, len(meter.table.sas), len(meter.table.schedule) // 2 - 1024)
    meter.finish()
    return meter, sink, peak


def per_spi(sink: Sink, spis: set[int]) -> dict[int, tuple[int, int, int]]:
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in sink.records:
        if r.spi in spis:
            o = out[r.spi]
            o[0] += r.packets
            o[1] += r.lost
            o[2] += r.expected
    return {k: tuple(v) for k, v in out.items()}


def test_spi_flood_keeps_real_tunnels_and_bounds_the_table() -> None:
    real = {0x1000 + t for t in range(20)}
    quiet, quiet_sink, _ = run(0)
    flooded, flood_sink, peak = run(100_000)
    assert peak <= 2000  # the table, and its schedule (which must not keep evicted SAs alive)
    assert flooded.table.evictions > 90_000
    assert per_spi(flood_sink, real) == per_spi(quiet_sink, real)
    assert all(r.end_reason != END_RESOURCES for r in flood_sink.records if r.spi in real)
    # unconfirmed SAs leave a full table counted, not exported one by one; no datagram goes uncounted
    assert not any(r.end_reason == END_RESOURCES for r in flood_sink.records)
    assert flooded.table.unconfirmed_sas == flooded.table.evictions
    exported = sum(r.datagrams for r in flood_sink.records)
    assert exported + flooded.table.unconfirmed_datagrams == flooded.classes["esp"]
    stats = flooded.stats(1)  # what the metering statistics options record carries (32473/22, /23)
    assert (stats.unconfirmed_sas, stats.unconfirmed_datagrams) == (flooded.table.unconfirmed_sas,
                                                                    flooded.table.unconfirmed_datagrams) != (0, 0)


def test_many_slow_new_sas_are_all_kept_while_the_table_has_room() -> None:
    """12 000 new SAs, round robin, one datagram each per round: no SA reaches its 4th datagram before
    thousands of others are created, yet none is evicted and every count is exact."""
    meter = Meter(MeterSettings(), Sink())
    n, rounds = 12_000, 5
    buf, meta = bytearray(), bytearray()
    for seq in range(1, rounds + 1):
        for t in range(n):
            f = esp_frame(bytes([10, 5, t >> 8, t & 0xFF]), bytes([10, 6, 0, 1]), 0x5000 + t, seq)
            meta += struct.pack("=IIII", 1000 + seq, t * 50, len(buf), len(f))
            buf += f
    meter.feed(bytes(buf), bytes(meta), 1)
    meter.finish()
    assert meter.table.evictions == 0
    sas = meter.table.all_sas()
    assert len(sas) == n and all(sa.datagrams == rounds and sa.lost == 0 and sa.expected == rounds for sa in sas)


def test_full_table_evicts_the_longest_idle_established_sa() -> None:
    """No probationer to drop: the established SA seen longest ago is ended (reason 5), the rest stay."""
    settings = MeterSettings(table=TableSettings(max_sas=20))
    sink = Sink()
    meter = Meter(settings, sink)
    frames = []
    for t in range(30):  # 30 SAs, one after the other, 5 in-order packets each: all leave probation
        frames += [esp_frame(bytes([10, 1, t, 1]), bytes([10, 1, t, 2]), 0x100 + t, n) for n in range(1, 6)]
    buf, meta = bytearray(), bytearray()
    for i, f in enumerate(frames):
        meta += struct.pack("=IIII", 1000, i * 10, len(buf), len(f))
        buf += f
    meter.feed(bytes(buf), bytes(meta), 1)
    assert len(meter.table.sas) <= 20 and meter.table.evictions == 10
    meter.finish()
    evicted = sorted(r.spi for r in sink.records if r.end_reason == END_RESOURCES)
    assert evicted == [0x100 + t for t in range(10)]  # the oldest ten
    assert sum(r.packets for r in sink.records) == 150  # nothing lost: evicted SAs were exported


def test_partner_of_an_evicted_sa_pairs_again() -> None:
    """A tunnel's SA is evicted while its partner keeps sending; when it comes back, the two pair again."""
    meter = Meter(MeterSettings(table=TableSettings(max_sas=8)), Sink())
    a, b = bytes([10, 2, 0, 1]), bytes([10, 2, 0, 2])
    frames = [esp_frame(a, b, 0xA, n) for n in range(1, 6)] + [esp_frame(b, a, 0xB, n) for n in range(1, 6)]
    seq_b = 5
    for t in range(10):  # other tunnels fill the table; B keeps talking, A is silent
        frames += [esp_frame(bytes([10, 3, t, 1]), bytes([10, 3, t, 2]), 0x300 + t, n) for n in range(1, 6)]
        seq_b += 1
        frames.append(esp_frame(b, a, 0xB, seq_b))
    frames += [esp_frame(a, b, 0xA, n) for n in range(6, 11)]  # A speaks again
    buf, meta = bytearray(), bytearray()
    for i, f in enumerate(frames):
        meta += struct.pack("=IIII", 1000, i * 10, len(buf), len(f))
        buf += f
    meter.feed(bytes(buf), bytes(meta), 1)
    sas = {sa.spi: sa for sa in meter.table.sas.values()}
    assert sas[0xA].peer is sas[0xB] and sas[0xB].peer is sas[0xA]
    assert sas[0xA].tunnel_id == sas[0xB].tunnel_id is not None


def test_a_returning_unproven_sa_is_on_probation_again() -> None:
    """One packet, idle end, one packet again: still unproven, so it counts against the probation bound."""
    meter = Meter(MeterSettings(table=TableSettings(idle_timeout=1.0, active_timeout=60.0)), Sink())
    for t, seq in ((1000, 1), (1003, 2)):  # 3 s apart: the SA ends idle in between
        f = esp_frame(bytes([10, 4, 0, 1]), bytes([10, 4, 0, 2]), 0x44, seq)
        meter.feed(f, struct.pack("=IIII", t, 0, 0, len(f)), 1)
    sa = next(iter(meter.table.sas.values()))
    assert sa.active and sa.trial and sa.key in meter.table.probation
