"""SPI flood, live (not in CI): a million one-packet SAs between random addresses, interleaved with real
tunnels, replayed into a veth pair while `espmeter run` captures with a bounded SA table.

Reports the agent's RSS before and after the flood and the SA evictions, and checks that the real
tunnels' exported figures equal `espmeter read --json` of a capture holding only them. Needs root.

    python bench/flood.py [--flood 1000000] [--max-sas N (default: the agent default)] [--pps 100000]

Default settings otherwise (capture ring, table size); CPU is the agent's during the replay.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.collect import read_file  # noqa: E402
from tests.ipfix_sums import read_json, sums, truth  # noqa: E402
from tests.netns import AgentProcess, cpu_seconds, rss_kb, veth_pair  # noqa: E402

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"


def esp(src: bytes, dst: bytes, spi: int, seq: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 40, 0, 0, 64, 50, 0, src, dst)
    return ETH + ip + struct.pack("!II", spi, seq) + bytes(40)


def write(path: Path, frames: list[bytes]) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, frame in enumerate(frames):
            f.write(struct.pack("<IIII", 1_700_000_000 + i // 100_000, (i % 100_000) * 10, len(frame), len(frame)))
            f.write(frame)


def build(flood: int, tunnels: int = 50, per: int = 2000, seed: int = 3) -> tuple[list[bytes], list[bytes]]:
    """(all frames, real-tunnel frames only): the same real traffic with and without the flood."""
    rng = random.Random(seed)
    real = []
    for n in range(1, per + 1):
        for t in range(tunnels):
            if rng.random() < 0.99:
                real.append(esp(bytes([10, 9, t, 1]), bytes([10, 9, t, 2]), 0x5000 + t, n))
                real.append(esp(bytes([10, 9, t, 2]), bytes([10, 9, t, 1]), 0x6000 + t, n))
    frames, it = [], iter(real)
    share = flood / (flood + len(real))
    while len(frames) < flood + len(real):
        if rng.random() < share:
            frames.append(esp(rng.randbytes(4), rng.randbytes(4), rng.getrandbits(32) | 1, rng.getrandbits(32)))
        else:
            nxt = next(it, None)
            if nxt is None:
                break
            frames.append(nxt)
    frames.extend(it)
    return frames, real


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flood", type=int, default=1_000_000)
    ap.add_argument("--max-sas", type=int, default=None)
    ap.add_argument("--pps", type=int, default=30_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="espm-flood-"))
    frames, real = build(args.flood)
    write(work / "flood.pcap", frames)
    write(work / "real.pcap", real)
    want = truth(read_json(str(work / "real.pcap")))
    out = work / "records.ipfix"
    with veth_pair() as pair:
        cfg = work / "espmeter.yaml"
        cfg.write_text(f"interfaces: [{pair.capture_if}]\ncollectors: ['file://{out}']\n"
                       + (f"max_sas: {args.max_sas}\n" if args.max_sas else ""))
        agent = AgentProcess(pair.capture_ns, ["--config", str(cfg)], work / "agent.log")
        try:
            agent.wait_for("capturing on")
            before = rss_kb(agent.proc.pid)
            cpu0 = cpu_seconds(agent.proc.pid)
            t0 = time.monotonic()
            pair.replay(str(work / "flood.pcap"), pps=args.pps)
            replay_s = time.monotonic() - t0
            time.sleep(1.0)
            cpu = cpu_seconds(agent.proc.pid) - cpu0
            after = rss_kb(agent.proc.pid)
            # the shutdown exports every open SA, a full table's 250 000 records: over 15 s on a loaded machine
            assert agent.stop(timeout=120) == 0, agent.log.read_text()
        finally:
            agent.kill()
    records = read_file(str(out))
    got = sums(records)
    evicted = sum(1 for r in records if r.get("flowEndReason") == 5)
    stats = [r for r in records if "droppedPacketTotalCount" in r][-1]
    drops = stats["droppedPacketTotalCount"]
    exact = all(got.get(k) == v for k, v in want.items())
    print(json.dumps({"frames": len(frames), "flood_spis": args.flood, "real_sas": len(want),
                      "replay_s": round(replay_s, 2), "agent_cpu_s": round(cpu, 2),
                      "rss_kb_before": before, "rss_kb_after": after, "evicted_records": evicted,
                      "unconfirmed_sas": stats.get("espUnconfirmedSATotalCount"),
                      "unconfirmed_datagrams": stats.get("espUnconfirmedDatagramTotalCount"),
                      "kernel_drops": drops, "real_tunnels_exact": exact}))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
