"""Classic pcap files read through a memory map: the batch buffer is the mapped file, never a copy.

Why: reading the 2-million-frame bench capture (288 MB) through pcapy-ng's `next_batch` cost
0.30 s of CPU out of about 1 s for the whole `read --json`, a third of it in the kernel (read()
copying every byte into a fresh 9 MB buffer per batch, page faults on those buffers); this reader
takes 0.04 s for the same frames, `read --json` of that capture 1.19 -> 0.97 s CPU (medians of 6,
loaded machine) and 53 -> 36 MB peak RSS (bench/README.md). A window
of the file is mapped and the 16-byte record headers are walked in C (`index_pcap` in
agent/_fastpath.c; a Python loop with identical results where it is not built): the batches are the
window itself plus pcapy's 16-byte native sec/usec/offset/caplen records, so the meter's paths are
used unchanged. pcapy-ng stays for live capture, `--bpf` (BPF needs libpcap), standard input and
every file this reader does not recognise (pcapng has agent.pcapng; other magics, versions other
than 2.4, and byte-swapped files of link types whose pseudo-header libpcap rewrites go to libpcap).

What libpcap 1.9 (the one in the pcapy-ng wheel, sf-pcap.c) does, this does: nanosecond files are
read at microsecond precision (usec = nsec / 1000, as libpcap divides: a signed int32 in a file of
this machine's byte order, unsigned in a byte-swapped one); a record whose caplen exceeds the
link type's maximum is damage ("invalid packet capture length ..."); one within that maximum but
above the file's snapshot length is cut to the snapshot length; a file ending inside a record is
damage with libpcap's "truncated dump file; ..." text. The frames before the damage are counted, as
OfflineSource's salvage counts them. Unlike libpcap, frames written to the file after it was opened
are not read, and a file cut short by another process while it is being read ends the process with
SIGBUS (as with any memory-mapped reader) instead of a "truncated dump file" error.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
import sys
from dataclasses import dataclass

import pcapy

from agent.capture import BATCH, Batch, CaptureError
from agent.compiled import fastpath

MAGIC_USEC, MAGIC_NSEC = 0xA1B2C3D4, 0xA1B23C4D
FILE_HEADER = 24
RECORD_HEADER = 16
WINDOW = 4 << 20  # bytes mapped at a time (more when one record needs more); batches never span two
INT_MAX = 2**31 - 1
DLT_DBUS, DLT_USBPCAP = 231, 249
# link types whose pseudo-header libpcap byte-swaps in a byte-swapped file (swap_pseudo_headers):
# DLT_LINUX_SLL (CAN), DLT_USB_LINUX, DLT_USB_LINUX_MMAPPED, DLT_NFLOG
_PSEUDO_SWAPPED = frozenset({113, 189, 220, 239})


@dataclass(frozen=True, slots=True)
class PcapFormat:
    """What libpcap takes from a classic pcap file header to read its records."""

    swapped: bool  # written in the other byte order than this machine's
    nanos: bool  # nanosecond time stamps (magic a1b23c4d)
    linktype: int  # as libpcap reports it (DLT_*)
    snapshot: int  # libpcap's p->snapshot: the header's snaplen, or max_caplen when it is 0 or > INT_MAX
    max_caplen: int  # libpcap's max_snaplen_for_dlt


def max_snaplen_for_dlt(dlt: int) -> int:
    return 128 * 1024 * 1024 if dlt == DLT_DBUS else 1024 * 1024 if dlt == DLT_USBPCAP else 262144


def pcap_format(path: str) -> PcapFormat | None:
    """The format of a classic pcap (version 2.4) regular file, or None for anything else."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            head = f.read(FILE_HEADER)
    except OSError:
        return None
    if len(head) < FILE_HEADER:
        return None
    for order in ("<", ">"):
        magic, major, minor, _, _, snaplen, _ = struct.unpack(order + "IHHiIII", head)
        if magic in (MAGIC_USEC, MAGIC_NSEC):
            break
    else:
        return None
    if (major, minor) != (2, 4):  # older versions may have caplen and len interchanged
        return None
    try:  # libpcap's own LINKTYPE -> DLT mapping, from libpcap itself
        handle = pcapy.open_offline(path)
    except pcapy.PcapError:
        return None
    linktype = handle.datalink()
    handle.close()
    swapped = (order == "<") != (sys.byteorder == "little")
    if swapped and linktype in _PSEUDO_SWAPPED:
        return None
    max_caplen = max_snaplen_for_dlt(linktype)
    snapshot = max_caplen if snaplen == 0 or snaplen > INT_MAX else snaplen
    return PcapFormat(swapped, magic == MAGIC_NSEC, linktype, snapshot, max_caplen)


def index_records(buf: bytes | mmap.mmap, start: int, max_frames: int, swapped: bool, nanos: bool,
                  snapshot: int, max_caplen: int) -> tuple[bytes, int]:
    """The Python twin of `_fastpath.index_pcap` (same arguments, same result): the meta records of
    the whole records from `start`, and where the first record that is not taken starts."""
    native = "<" if sys.byteorder == "little" else ">"
    head = struct.Struct((({"<": ">", ">": "<"}[native]) if swapped else native) + "III").unpack_from
    pack = struct.Struct("=IIII").pack
    out = []
    pos, end = start, len(buf)
    while len(out) < max_frames and end - pos >= RECORD_HEADER and pos + RECORD_HEADER <= 0xFFFFFFFF:
        sec, usec, caplen = head(buf, pos)
        if caplen > max_caplen or caplen > end - pos - RECORD_HEADER:
            break
        if nanos:  # libpcap: unsigned in a byte-swapped file, else a signed int32 divided towards zero
            signed = usec - (1 << 32) if usec >= 1 << 31 and not swapped else usec
            usec = (abs(signed) // 1000 * (1 if signed >= 0 else -1)) & 0xFFFFFFFF
        out.append(pack(sec, usec, pos + RECORD_HEADER, min(caplen, snapshot)))
        pos += RECORD_HEADER + caplen
    return b"".join(out), pos


_index = fastpath.index_pcap if fastpath is not None else index_records


class PcapFileSource:
    """A classic pcap file as `agent.capture.OfflineSource` presents a capture: `read()` returns the
    next batch, None at the end or at damage (`error` says what, in libpcap's words)."""

    def __init__(self, path: str, fmt: PcapFormat, batch: int = BATCH, window: int = WINDOW) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise CaptureError(f"{path}: {e.strerror}") from None
        self.path = path
        self.fmt = fmt
        self.linktype = fmt.linktype
        self.batch = batch
        self.window_size = window
        self.size = os.fstat(self.fd).st_size  # bytes, for the progress bar; later growth is not read
        self.window: bytes | mmap.mmap = b""
        self.window_start = FILE_HEADER  # file offset of window[0]
        self.pos = FILE_HEADER  # file offset of the next record
        self.reported = FILE_HEADER
        self.done = False
        self.consumed = 0  # frames returned so far
        self.error: str | None = None

    @classmethod
    def open(cls, path: str, batch: int = BATCH, window: int = WINDOW) -> PcapFileSource | None:
        """The reader for `path` if it is a classic pcap file it reads as libpcap would, else None."""
        fmt = pcap_format(path)
        return None if fmt is None else cls(path, fmt, batch, window)

    @property
    def interface_names(self) -> dict[int, str]:
        return {}  # a pcap file knows no interface

    def progress(self, batch: Batch) -> int:
        """File bytes read since the last call (batches share their window)."""
        done, self.reported = self.pos - self.reported, self.pos
        return done

    def close(self) -> None:
        self.window = b""  # unmapped when the last batch of it goes
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self) -> Batch | None:
        fmt = self.fmt
        while not self.done:
            meta, stop = _index(self.window, self.pos - self.window_start, self.batch, fmt.swapped, fmt.nanos,
                                fmt.snapshot, fmt.max_caplen)
            self.pos = self.window_start + stop
            if meta:
                self.consumed += len(meta) // 16
                return Batch(self.window, meta, self.linktype)
            self._next_window()
        return None

    def _next_window(self) -> None:
        """The record at `pos` is not whole in the window: map the part of the file that holds it, or
        end at the end of the file or at damage, with libpcap's error text."""
        rest = self.size - self.pos
        if rest < RECORD_HEADER:
            if rest:
                self._damaged(f"tried to read {RECORD_HEADER} header bytes, only got {rest}")
            self.done = True
            return
        fmt = self.fmt
        order = ("<" if sys.byteorder == "big" else ">") if fmt.swapped else "="
        (caplen,) = struct.unpack(order + "I", os.pread(self.fd, RECORD_HEADER, self.pos)[8:12])
        if caplen > fmt.max_caplen:
            limit = (f"snaplen of {fmt.snapshot}" if caplen > fmt.snapshot else f"maximum of {fmt.max_caplen}")
            self.error = f"invalid packet capture length {caplen}, bigger than {limit}"
            self.done = True
            return
        data = rest - RECORD_HEADER
        if data < caplen:  # libpcap reads at most the snapshot length, then skips the rest
            want = fmt.snapshot if caplen > fmt.snapshot and data < fmt.snapshot else caplen
            self._damaged(f"tried to read {want} captured bytes, only got {data}")
            return
        start = self.pos - self.pos % mmap.ALLOCATIONGRANULARITY
        length = min(self.size - start, max(self.window_size, self.pos - start + RECORD_HEADER + caplen))
        self.window = mmap.mmap(self.fd, length, access=mmap.ACCESS_READ, offset=start)
        self.window_start = start

    def _damaged(self, what: str) -> None:
        self.error = f"truncated dump file; {what}"
        self.done = True
