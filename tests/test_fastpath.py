"""The fast paths of Meter.feed (numpy runs, inline per-frame) give exactly the general decoder's results."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.meter import Meter, MeterSettings
from agent.offline import meter_file
from agent.report import document
from agent.satable import TableSettings
from agent.tracker import TrackerSettings
from agent.vector import _group_order
from tests.gt.scenarios import registry

SCENARIOS = registry()


FAST = {
    "default": MeterSettings(),
    "vector-everywhere": MeterSettings(vector_min=1),
    "inline-only": MeterSettings(vector=False),
}


@pytest.mark.parametrize("mode", sorted(FAST))
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fast_paths_equal_reference_path(name: str, mode: str, tmp_path: Path) -> None:
    path = str(tmp_path / f"{name}.pcap")
    SCENARIOS[name]().write(path)
    fast = meter_file(path, FAST[mode], progress=False).doc
    slow = meter_file(path, MeterSettings(fast_path=False, vector=False), progress=False).doc
    assert fast == slow


def test_group_order_separates_hashes_sharing_a_bucket() -> None:
    """Two SAs whose hashes share the top 16 bits (the radix bucket) still form two groups, in frame order."""
    a, b, c = (np.uint64(x) for x in (0xABCD_0000_0000_0001, 0xABCD_0000_0000_0002, 0x1234_0000_0000_0000))
    h = np.array([a, b, a, c, b, a], dtype=np.uint64)
    order = _group_order(h)
    groups = [[int(i) for i in order if h[i] == v] for v in (a, b, c)]
    assert groups == [[0, 2, 5], [1, 4], [3]]
    assert all(list(order).index(g[0]) + len(g) - 1 == list(order).index(g[-1]) for g in groups)


def _esp_frame(t: int, seq: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 40 + t, 0, 0, 64, 50, 0, bytes([10, 9, t, 1]),
                     bytes([10, 9, t, 2]))
    return b"\x02" * 12 + b"\x08\x00" + ip + struct.pack("!II", 0x900 + t, seq & 0xFFFFFFFF) + bytes(40 + t)


class _Sink:
    def __init__(self) -> None:
        self.records: list = []

    def export(self, records: list) -> None:
        self.records.extend(records)


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
)
def test_fast_paths_equal_reference_on_any_arrivals(sas: list, gaps: list, cuts: list, order_seed: int,
                                                    biflow: bool) -> None:
    """Arbitrary in-order runs, gaps, reordering and duplicates on a few SAs, interleaved, in batches of
    every size (so the numpy, inline and reference paths all run), with timers firing in between: the
    record streams and the documents are identical."""
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
    for mode in ({"vector_min": 1}, {}, {"vector": False}, {"fast_path": False, "vector": False}):
        sink = _Sink()
        meter = Meter(MeterSettings(table=table, biflow=biflow, **mode), sink, keep_history=True)
        t_us, i, c = 1_700_000_000 * 1_000_000, 0, 0
        while i < len(frames):
            chunk = frames[i:i + cuts[c % len(cuts)]]
            buf, meta = bytearray(), bytearray()
            for f in chunk:
                t_us += gaps[(i + len(meta) // 16) % len(gaps)]
                meta += struct.pack("=IIII", t_us // 1_000_000, t_us % 1_000_000, len(buf), len(f))
                buf += f
            meter.feed(bytes(buf), bytes(meta), 1)
            meter.tick(meter.now)
            i, c = i + len(chunk), c + 1
        meter.finish()
        results.append((sink.records, document(meter, "h", 1)))
    assert all(r == results[-1] for r in results)
