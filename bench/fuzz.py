"""Mutation fuzzing outside CI: millions of damaged frames through the meter, checking what must hold.

Seeds are the frames of every ground-truth scenario (every link type and encapsulation); each
round truncates, overwrites bytes of and splices frames, feeds them in pcapy-style batches through
all paths (inline in C and in Python, reference), and checks: no exception escapes, every frame lands in
exactly one class, and the tracker invariant holds for every SA.

    python bench/fuzz.py [--frames 1000000] [--seed 1]

It ends with a digest of the document: run with ESPMETER_PURE_PYTHON=1 (the SA a Python slots object,
agent.tracker._SAFields, every compiled part off) it must be the same.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import decode as d  # noqa: E402
from agent.meter import Meter, MeterSettings  # noqa: E402
from agent.report import document  # noqa: E402
from tests.gt.scenarios import registry  # noqa: E402

MODES = {
    "compiled": MeterSettings(),  # agent/_fastpath.c where it is built
    "inline": MeterSettings(compiled=False),
    "reference": MeterSettings(fast_path=False),
}


def seeds() -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for make in registry().values():
        sc = make()
        link = d.DLT_RAW if sc.linktype == d.DLT_LINKTYPE_RAW else sc.linktype
        out.setdefault(link, []).extend(e.data for e in sc.build()[:400])
    return out


def mutate(rng: random.Random, frame: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(frame)
    kind = rng.random()
    if kind < 0.3:
        b = b[: rng.randrange(len(b) + 1)]
    elif kind < 0.8:
        for _ in range(rng.randint(1, 6)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind < 0.9:
        other = rng.choice(pool)
        cut = rng.randrange(len(b) + 1)
        b = b[:cut] + other[rng.randrange(len(other) + 1):]
    # else: unchanged, so valid traffic keeps SAs alive between damaged frames
    return bytes(b)


def batch(frames: list[bytes], t0: int) -> tuple[bytes, bytes]:
    buf = bytearray()
    meta = bytearray()
    for i, f in enumerate(frames):
        meta += struct.pack("=IIII", t0 + i // 1000, (i % 1000) * 1000, len(buf), len(f))
        buf += f
    return bytes(buf), bytes(meta)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    pools = seeds()
    meters = {name: Meter(settings, keep_history=True) for name, settings in MODES.items()}
    done, start, t0 = 0, time.monotonic(), 1_700_000_000
    while done < args.frames:
        link = rng.choice(list(pools))
        pool = pools[link]
        frames = [mutate(rng, rng.choice(pool), pool) for _ in range(4096)]
        buf, meta = batch(frames, t0)
        t0 += 5
        for meter in meters.values():
            meter.feed(buf, meta, link)
        done += len(frames)
    for name, meter in meters.items():
        meter.finish()
        assert meter.frames == done, (name, meter.frames, done)
        assert sum(meter.classes.values()) == meter.frames, (name, meter.classes)
        bad = [sa for sa in meter.table.all_sas() if sa.lost + sa.accepted != sa.expected]
        assert not bad, (name, len(bad))
        print(f"{name:9s} {meter.frames:,} frames, {len(meter.table.all_sas()):,} SAs, classes {meter.classes}")
    docs = {repr(document(m, "fuzz", 0)) for m in meters.values()}
    same = len(docs) == 1
    print(f"{done:,} mutated frames x {len(MODES)} paths in {time.monotonic() - start:.0f} s: no exception, "
          f"every frame classified once, invariant holds for every SA; identical results on all paths: {same}")
    # the same seed with ESPMETER_PURE_PYTHON set (every compiled part off) must print the same digest
    print(f"document digest {hashlib.sha256(min(docs).encode()).hexdigest()[:16]}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
