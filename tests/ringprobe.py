"""Run in a capture namespace: `LiveCapture` on IFNAME (direction both); after a line on stdin, what each
handle's ring received (libpcap's kernel count) and delivered, as JSON on stdout.

    python -m tests.ringprobe IFNAME
"""

from __future__ import annotations

import json
import struct
import sys

from agent.capture import CaptureSettings
from agent.live import LiveCapture


def main() -> None:
    ifname = sys.argv[1]
    capture = LiveCapture([(ifname, "both")], CaptureSettings())
    handles = capture.interfaces[ifname].handles
    print("ready", flush=True)
    sys.stdin.readline()
    frames: dict[str, list[str]] = {h.direction: [] for h in handles}
    for batch in capture.remaining():
        for i in range(0, len(batch.meta), 16):
            _, _, offset, caplen = struct.unpack_from("=IIII", batch.meta, i)
            frames[batch.direction].append(batch.buf[offset:offset + caplen].hex())
    result = {}
    for h in handles:
        received, dropped, _ = h.pcap.stats()
        result[h.direction] = {"received": received, "dropped": dropped, "frames": frames[h.direction]}
    capture.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
