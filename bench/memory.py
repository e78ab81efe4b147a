"""Bytes per tracked SA: feed an in-process `Meter` with N SAs (tunnel pairs) x a few packets each.

Each SA's packets arrive in one burst, in order, so every SA leaves probation and stays tracked
(no eviction); the batches are built before the baseline, so only the meter's growth is measured.

    python bench/memory.py [--sas 100000] [--per-sa 4] [--mode tracemalloc|rss]   -> one JSON line
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen import SNAPLEN, T0, esp_frames  # noqa: E402

from agent.meter import Meter, MeterSettings  # noqa: E402
from agent.satable import TableSettings  # noqa: E402

BATCH = 4096
DLT_EN10MB = 1


def batches(sas: int, per_sa: int) -> list[tuple[bytes, bytes]]:
    """pcapy `next_batch`-shaped (buf, meta) pairs: SA after SA, sequence numbers 1..per_sa."""
    sa = np.repeat(np.arange(sas, dtype=np.int64), per_sa)
    seq = np.tile(np.arange(1, per_sa + 1, dtype=np.int64), sas)
    frames = esp_frames(sa, seq, np.full(sa.size, 600), "esp")
    out = []
    for start in range(0, sa.size, BATCH):
        chunk = frames[start:start + BATCH]
        n = chunk.shape[0]
        us = np.arange(start, start + n, dtype=np.int64)
        meta = np.empty((n, 4), dtype=np.uint32)
        meta[:, 0] = T0 + us // 1_000_000
        meta[:, 1] = us % 1_000_000
        meta[:, 2] = np.arange(n) * SNAPLEN
        meta[:, 3] = SNAPLEN
        out.append((chunk.tobytes(), meta.tobytes()))
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def feed(meter: Meter, data: list[tuple[bytes, bytes]]) -> None:
    for buf, meta in data:
        meter.feed(buf, meta, DLT_EN10MB)
        meter.tick(meter.now)


def measure(sas: int, per_sa: int, mode: str) -> dict:
    """Grow a meter to `sas` tracked SAs; report its growth in bytes, total and per SA."""
    data = batches(sas, per_sa)
    settings = MeterSettings(table=TableSettings(max_sas=2 * sas))
    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else rss_bytes()
    meter = Meter(settings)
    feed(meter, data)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else rss_bytes()
    result = {
        "mode": mode, "sas": sas, "per_sa": per_sa, "tracked": len(meter.table.sas),
        "established": len(meter.table.sas) - len(meter.table.probation),
        "paired": sum(sa.peer is not None for sa in meter.table.sas.values()),
        "evictions": meter.table.evictions, "bytes": after - before,
        "bytes_per_sa": round((after - before) / max(1, len(meter.table.sas)), 1),
    }
    if mode == "tracemalloc":
        result["top"] = top_lines(tracemalloc.take_snapshot(), len(meter.table.sas))
    return result


def top_lines(snapshot: tracemalloc.Snapshot, sas: int, n: int = 8) -> list[str]:
    """Where the bytes are: the largest allocation sites, in bytes per SA."""
    stats = snapshot.filter_traces([tracemalloc.Filter(True, "*/agent/*")]).statistics("lineno")
    return [f"{s.size / sas:7.1f} B/SA  {Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}"
            for s in stats[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sas", type=int, default=100_000)
    ap.add_argument("--per-sa", type=int, default=4)
    ap.add_argument("--mode", choices=("tracemalloc", "rss"), default="tracemalloc")
    a = ap.parse_args()
    print(json.dumps(measure(a.sas, a.per_sa, a.mode)))


if __name__ == "__main__":
    main()
