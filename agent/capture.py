"""Capture sources through pcapy-ng: offline files and live AF_PACKET handles, both batch-oriented.

A source yields `Batch`es (pcapy `next_batch` buffers, never copied per packet). Live handles are
non-blocking and selected on `getfd()`: with the libpcap bundled in the pcapy-ng wheel a blocking
`next_batch()` never returns on an idle link, whatever the timeout, and timers must still run.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import pcapy

BATCH = 65536

# What espmeter needs, and nothing it could miss: ESP, UDP 500/4500, and every non-first fragment
# (its ports are in the first one), behind up to two VLAN tags, for IPv4 and IPv6. IPv6 extension
# headers cannot be walked in BPF, so any IPv6 packet whose next header is not TCP/ICMPv6 is let
# through and decided in Python.
# VLAN tags only exist on Ethernet: libpcap refuses `vlan` on other link types (SLL, PPP, raw IP).
L3_FILTER = (
    "(ip and (ip proto 50 or udp port 500 or udp port 4500 or ip[6:2] & 0x1fff != 0))"
    " or (ip6 and not ip6 proto 6 and not ip6 proto 58)"
)
PREFILTER = f"({L3_FILTER}) or (vlan and (({L3_FILTER}) or (vlan and ({L3_FILTER}))))"
DLT_EN10MB = 1


def build_filter(user: str | None, linktype: int = DLT_EN10MB) -> str:
    base = PREFILTER if linktype == DLT_EN10MB else L3_FILTER
    return f"({base}) and ({user})" if user else base


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    """How live handles are opened (`snaplen:`, `buffer_size_mb:`, `filter:`)."""

    snaplen: int = 256
    buffer_size_mb: int = 8
    user_filter: str | None = None


@dataclass(slots=True)
class Batch:
    buf: bytes
    meta: bytes  # 16-byte records: sec, usec, offset, caplen (native u32)
    linktype: int
    ifindex: int | None = None
    direction: str | None = None


class CaptureError(Exception):
    """The capture cannot be opened or read (not a capture file, no such interface, no permission)."""


STDIN = "-"  # as in `tcpdump -r -`: libpcap reads the capture from standard input
STDIN_BUFFER = 1 << 16  # bytes libpcap's reads of standard input take at a time


def buffer_c_stdin() -> None:
    """Give the C library's `stdin`, which libpcap reads, a full buffer. With PYTHONUNBUFFERED set (as in
    many container images) CPython makes it unbuffered, and libpcap's fread of each record header and
    body became two read(2) calls a frame: 2 M frames piped into `read -` took 3.6 s of CPU, 2.3 s of it in
    the kernel, against 1.4 s. The buffer is the C library's own allocation, for the life of the process
    (glibc keeps an unbuffered stream's one-byte buffer when setvbuf is given none). Harmless otherwise:
    nothing has read C `stdin` yet (CPython's sys.stdin is its own buffer over the descriptor); where
    there is no glibc, nothing changes."""
    import ctypes  # only here: `read -` alone needs it

    try:
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        buf = libc.malloc(STDIN_BUFFER)
        if buf:
            libc.setvbuf(ctypes.c_void_p.in_dll(libc, "stdin"), ctypes.c_void_p(buf), 0, STDIN_BUFFER)  # _IOFBF
    except (AttributeError, OSError, ValueError):
        pass


class OfflineSource:
    """A pcap or pcapng file, standard input (`-`) or another stream (a pipe: `read <(zcat x.pcap.gz)`);
    `read()` returns None at the end of the file."""

    def __init__(self, path: str, bpf: str | None = None, batch: int = BATCH) -> None:
        if path != STDIN and os.path.isdir(path):
            raise CaptureError(f"{path}: is a directory, not a capture file")
        if path != STDIN and not os.path.exists(path):
            raise CaptureError(f"{path}: no such file")
        # read once, front to back: no second pass (_salvage), no size for the progress bar
        self.streamed = path == STDIN or not os.path.isfile(path)
        if path == STDIN:
            buffer_c_stdin()
        try:
            self.handle = pcapy.open_offline(path)
        except pcapy.PcapError as e:
            raise CaptureError(f"{path}: {e}") from None
        try:
            if bpf:
                self.handle.setfilter(bpf)
        except pcapy.PcapError as e:
            self.handle.close()
            raise CaptureError(f"BPF filter {bpf!r}: {e}") from None
        self.path = path
        self.bpf = bpf
        self.linktype = self.handle.datalink()
        self.batch = batch
        self.size = None if self.streamed else os.path.getsize(path)  # bytes, for the progress bar
        self.done = False
        self.consumed = 0  # frames returned so far
        self.error: str | None = None

    def read(self) -> Batch | None:
        if self.done:
            return None
        try:
            buf, meta = self.handle.next_batch(self.batch)
        except pcapy.PcapError as e:
            self.error = str(e)
            self.done = True
            return self._salvage()
        if not meta:
            self.done = True
            return None
        self.consumed += len(meta) // 16
        return Batch(buf, meta, self.linktype)

    def _salvage(self) -> Batch | None:
        """The batch hit damage and lost its good frames too: re-read them one by one up to the damage.

        A stream cannot be read twice: there the frames of the damaged batch are not counted."""
        if self.streamed:
            return None
        handle = pcapy.open_offline(self.path)
        if self.bpf:
            handle.setfilter(self.bpf)
        buf = bytearray()
        meta = bytearray()
        try:
            for _ in range(self.consumed):
                handle.next()
            while True:
                hdr, data = handle.next()
                if not hdr:
                    break
                sec, usec = hdr.getts()
                meta += struct.pack("=IIII", sec, usec, len(buf), len(data))
                buf += data
        except pcapy.PcapError:
            pass
        handle.close()
        return Batch(bytes(buf), bytes(meta), self.linktype) if meta else None

    @property
    def interface_names(self) -> dict[int, str]:
        """libpcap does not say which pcapng interface a packet came from (agent.pcapng does)."""
        return {}

    def progress(self, batch: Batch) -> int:
        """File bytes this batch stands for (about: record headers are not counted)."""
        return len(batch.buf) + len(batch.meta)

    def close(self) -> None:
        self.handle.close()
