"""Run in a capture namespace: `LiveCapture` on IFNAME (direction both); after a line on stdin, what each
handle's ring received (libpcap's kernel count) and delivered, as JSON on stdout.

    python -m tests.ringprobe IFNAME [--slow-meter]

--slow-meter: 4 MiB rings, and from the first line on the inbound frames are read as the daemon reads
them and "metered" at 20 000 frames/s, slower than the link the test replays, until a second line says
the replay is over.
"""

from __future__ import annotations

import json
import select
import struct
import sys
import time

from agent.capture import Batch, CaptureSettings
from agent.live import LiveCapture


def main() -> None:
    ifname, slow = sys.argv[1], "--slow-meter" in sys.argv
    capture = LiveCapture([(ifname, "both")], CaptureSettings(buffer_size_mb=4) if slow else CaptureSettings())
    handles = capture.interfaces[ifname].handles
    print("ready", flush=True)
    sys.stdin.readline()
    frames: dict[str, list[str]] = {h.direction: [] for h in handles}

    def take(batch: Batch) -> None:
        for i in range(0, len(batch.meta), 16):
            _, _, offset, caplen = struct.unpack_from("=IIII", batch.meta, i)
            frames[batch.direction].append(batch.buf[offset:offset + caplen].hex())

    replaying = slow
    while replaying or capture.pending():
        replaying = replaying and not select.select([sys.stdin], [], [], 0)[0]
        got = 0
        for batch in capture.read(handles[0].fd):
            take(batch)
            got += len(batch.meta) // 16
            time.sleep(len(batch.meta) // 16 / 20_000)
        if not got:
            time.sleep(0.01)
    for batch in capture.remaining():
        take(batch)
    result = {}
    for h in handles:
        received, dropped, _ = h.pcap.stats()
        result[h.direction] = {"received": received, "dropped": dropped, "frames": frames[h.direction]}
    capture.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
