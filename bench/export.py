"""Export at scale: encoding rate and the time to flush N SA records to a UDP collector on loopback.

The records look like a concentrator's (IPv4, paired, tunnel id, sequence range, interface); the
collector is a socket of this process with a receive buffer large enough for the whole flush, read
after it, so its work is not counted. Reports CPU and wall time, medians over the rounds.

    python bench/export.py [--records 100000] [--rounds 5] [--names]   -> one JSON line
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter import Exporter, ExportSettings, SARecord  # noqa: E402

T0_MS = 1795651000000
SO_RCVBUFFORCE = 33  # Linux, not in Python's socket module


def records(n: int, names: bool) -> list[SARecord]:
    out = []
    for i in range(n):
        tunnel = i // 2
        a = ipaddress.IPv4Address(0xC6120000 + tunnel % 65536).packed
        b = ipaddress.IPv4Address(0x0A000000 + tunnel).packed
        src, dst = (a, b) if i % 2 == 0 else (b, a)
        out.append(SARecord(
            start_ms=T0_MS + i % 1000, end_ms=T0_MS + 30000, src=src, dst=dst, spi=0xC0000000 + i, encap=0,
            sport=None, dport=None, packets=20 + i % 7, octets=(20 + i % 7) * 600, datagrams=20 + i % 7,
            lost=i % 3, reordered=0, duplicates=0, late=0, expected=20 + i % 7 + i % 3, incomplete=0,
            first_seq=1 + i % 100, last_seq=20 + i % 100, max_reorder_extent=0, end_reason=2, ingress_if=2,
            peer_spi=0xC0000000 + (i ^ 1), tunnel_id=tunnel + 1, tunnel_name=f"site-{tunnel}" if names else None,
        ))
    return out


def collector() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # room for a whole flush without reading (root); else the kernel's rmem_max
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> tuple[int, int]:
    messages = octets = 0
    while True:
        try:
            octets += len(sock.recv(65535))
        except BlockingIOError:
            return messages, octets
        messages += 1


def one_round(recs: list[SARecord]) -> dict[str, float]:
    sock = collector()
    url = f"udp://127.0.0.1:{sock.getsockname()[1]}"
    exp = Exporter(ExportSettings(collectors=[url]))
    drain(sock)  # templates and RFC 5610 records sent at start
    cpu, wall = time.process_time(), time.perf_counter()
    exp.export(recs)
    exp.close()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    messages, octets = drain(sock)
    sock.close()
    c = exp.counters[url]
    if c["send_errors"] or c["not_sent_records"]:
        raise SystemExit(f"export failed: {c}")
    enc_cpu = time.process_time()
    exp.encoder.encode(recs)
    enc_cpu = time.process_time() - enc_cpu
    return {"flush_cpu_s": cpu, "flush_wall_s": wall, "encode_cpu_s": enc_cpu, "messages": messages,
            "octets": octets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--names", action="store_true", help="every SA has a tunnel name (variable-length field)")
    args = ap.parse_args()
    recs = records(args.records, args.names)
    runs = [one_round(recs) for _ in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(json.dumps({
        "records": args.records, "names": args.names, "rounds": args.rounds,
        "flush_cpu_s": round(med["flush_cpu_s"], 3), "flush_wall_s": round(med["flush_wall_s"], 3),
        "records_per_s_flush_cpu": round(args.records / med["flush_cpu_s"]),
        "records_per_s_encode_cpu": round(args.records / med["encode_cpu_s"]),
        "messages": int(med["messages"]), "octets": int(med["octets"]),
    }))


if __name__ == "__main__":
    main()
