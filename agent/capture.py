"""Capture sources through pcapy-ng: offline files and live AF_PACKET handles, both batch-oriented.

A source yields `Batch`es (pcapy `next_batch` buffers, never copied per packet). Live handles are
non-blocking and selected on `getfd()`: with the libpcap bundled in the pcapy-ng wheel a blocking
`next_batch()` never returns on an idle link, whatever the timeout, and timers must still run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import pcapy

BATCH = 4096

# What espmeter needs, and nothing it could miss: ESP, UDP 500/4500, and every non-first fragment
# (its ports are in the first one), behind up to two VLAN tags, for IPv4 and IPv6. IPv6 extension
# headers cannot be walked in BPF, so any IPv6 packet whose next header is not TCP/ICMPv6 is let
# through and decided in Python.
_L3 = (
    "(ip and (ip proto 50 or udp port 500 or udp port 4500 or ip[6:2] & 0x1fff != 0))"
    " or (ip6 and not ip6 proto 6 and not ip6 proto 58)"
)
PREFILTER = f"({_L3}) or (vlan and (({_L3}) or (vlan and ({_L3}))))"


def build_filter(user: str | None) -> str:
    return f"({PREFILTER}) and ({user})" if user else PREFILTER


@dataclass(slots=True)
class Batch:
    buf: bytes
    meta: bytes  # 16-byte records: sec, usec, offset, caplen (native u32)
    linktype: int
    ifindex: int | None = None
    direction: str | None = None


class CaptureError(Exception):
    """The capture cannot be opened or read (not a capture file, no such interface, no permission)."""


class Source(Protocol):
    def read(self) -> Batch | None: ...
    def close(self) -> None: ...


class OfflineSource:
    """A pcap or pcapng file; `read()` returns None at the end of the file."""

    def __init__(self, path: str, bpf: str | None = None, batch: int = BATCH) -> None:
        if not os.path.isfile(path):
            raise CaptureError(f"{path}: no such file")
        try:
            self.handle = pcapy.open_offline(path)
            if bpf:
                self.handle.setfilter(bpf)
        except pcapy.PcapError as e:
            raise CaptureError(f"{path}: {e}") from None
        self.linktype = self.handle.datalink()
        self.batch = batch
        self.size = os.path.getsize(path)
        self.done = False
        self.error: str | None = None

    def read(self) -> Batch | None:
        if self.done:
            return None
        try:
            buf, meta = self.handle.next_batch(self.batch)
        except pcapy.PcapError as e:
            # a damaged file: the frames before the damage were already returned
            self.error = str(e)
            self.done = True
            return None
        if not meta:
            self.done = True
            return None
        return Batch(buf, meta, self.linktype)

    def close(self) -> None:
        self.handle.close()
