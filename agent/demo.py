"""`espmeter demo`: the whole path on a built-in default, no root, no configuration.

Starts espmeter's own IPFIX collector on a free loopback port, meters the bundled capture
(agent/demo.pcap: three tunnels, one lossy, one NAT-T with IKE, one IPv6 with duplicates),
exports its records there over UDP, and prints the tunnel table and the records as decoded.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
import time
from importlib import resources
from typing import TextIO

from agent.meter import MeterSettings
from agent.offline import meter_file
from agent.report import write_table
from exporter import Exporter, ExportSettings
from exporter.collect import run_collector

WAIT_S = 5.0


def bundled_capture() -> str:
    return str(resources.files("agent").joinpath("demo.pcap"))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo(capture: str | None = None) -> int:
    path = capture or bundled_capture()
    received = io.StringIO()
    bound: list[tuple] = []
    ready = threading.Event()
    stop = threading.Event()

    def on_ready(addr: tuple) -> None:
        bound.append(addr)
        ready.set()

    collector = threading.Thread(
        target=run_collector, args=(f"udp://127.0.0.1:{free_udp_port()}", True, received, stop.is_set, None),
        kwargs={"ready": on_ready}, daemon=True)
    collector.start()
    if not ready.wait(WAIT_S):
        print("espmeter demo: the collector did not start", file=sys.stderr)
        return 1
    url = f"udp://127.0.0.1:{bound[0][1]}"
    exporter = Exporter(ExportSettings(collectors=[url], records="sa"))
    result = meter_file(path, MeterSettings(), exporter)
    exporter.export_stats(result.meter.stats(1))
    exporter.close()
    sent = sum(c.records for c in exporter.counters.values())
    print(f"== espmeter read {path}\n")
    write_table(result.view(), sys.stdout)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and received.getvalue().count("\n") < sent:
        time.sleep(0.1)
    stop.set()
    collector.join(WAIT_S)
    print(f"\n== IPFIX records received by `espmeter collect` on {url} ({sent} records sent, options included)\n")
    write_records(received.getvalue(), sys.stdout)
    return 0


def write_records(json_lines: str, out: TextIO) -> None:
    """The SA data records as the collector decoded them, one line each (options records counted)."""
    options = 0
    for line in json_lines.splitlines():
        rec = json.loads(line)
        if "IPSecSPI" not in rec:
            options += 1
            continue
        if rec.get("_record") == "loss_event":
            first, last = rec["espLossEventFirstSequenceNumber"], rec["espLossEventLastSequenceNumber"]
            out.write(f"    loss event spi 0x{rec['IPSecSPI']:08x}: numbers {first}..{last}"
                      f" ({rec['espLossEventPacketCount']} lost) between {rec['espLossEventAfterMilliseconds']}"
                      f" and {rec['espLossEventBeforeMilliseconds']}\n")
            continue
        src = rec.get("sourceIPv4Address") or rec.get("sourceIPv6Address")
        dst = rec.get("destinationIPv4Address") or rec.get("destinationIPv6Address")
        peer = rec.get("espPeerSPI")
        out.write(
            f"  {src} -> {dst} proto {rec['protocolIdentifier']} spi 0x{rec['IPSecSPI']:08x}"
            f" packets {rec['packetDeltaCount']} bytes {rec['octetDeltaCount']}"
            f" lost {rec['espLostPacketDeltaCount']}/{rec['espExpectedPacketDeltaCount']}"
            f" reordered {rec['espReorderedPacketDeltaCount']} dup {rec['espDuplicatePacketDeltaCount']}"
            f" end {rec['flowEndReason']}"
            + (f" peer 0x{peer:08x} tunnel {rec.get('espTunnelId')}" if peer is not None else "") + "\n")
    out.write(f"  (+ {options} options records: RFC 5610 type information and statistics)\n")
