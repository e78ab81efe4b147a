"""pcapng files read block by block, so that every packet keeps its interface.

libpcap (pcapy-ng) reads pcapng but never says which interface (IDB) a packet came from, so the same
SA captured on two interfaces (`dumpcap -i wan -i lan` on a transit router) would be one SA with every
second datagram a duplicate. Maintained readers exist (python-pcapng, dpkt.pcapng, scapy) but build a
Python object per packet; this one walks the blocks of a memory-mapped window of the file and yields
what pcapy's `next_batch` yields: the window itself as the buffer (no copy) and 16-byte native
sec/usec/offset/caplen records, one batch per run of packets from one interface, so the meter's paths
are used unchanged. Block layout: draft-ietf-opsawg-pcapng (SHB, IDB, EPB, SPB, obsolete PB; every
other block is skipped by its length). Runs of Enhanced Packet Blocks of one interface are indexed in C
(`index_pcapng` in agent/_fastpath.c; `index_epbs`, its Python twin, where it is not built): reading a
pcapng file then costs what reading its pcap does (bench/README.md).
As with agent.pcapfile, frames written to the file after it was opened are not read, and a file cut
short by another process while it is read is damage where a window can no longer be mapped, or ends
the process with SIGBUS inside a window already mapped (as with any memory-mapped reader).
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass

import pcapy

from agent.capture import BATCH, Batch, CaptureError
from agent.compiled import fastpath

SHB, IDB, PB, SPB, EPB = 0x0A0D0D0A, 1, 2, 3, 6
BOM = 0x1A2B3C4D
CHUNK = 4 << 20  # bytes mapped at a time (more when one block needs more); a batch never spans two
LINKTYPE_LINUX_SLL2 = 276  # carries its own interface index: the link layer names the observation point
_OPT_NAME, _OPT_TSRESOL, _OPT_TSOFFSET = 2, 9, 14


@dataclass(slots=True)
class Interface:
    """One IDB: its number in the file (over all sections), link type, name and time stamp unit."""

    number: int
    linktype: int
    snaplen: int
    name: str  # if_name, else if<N>
    units: int = 1_000_000  # time stamp units per second (if_tsresol)
    offset: int = 0  # seconds added to every time stamp (if_tsoffset)
    bpf: object | None = None  # the --bpf program compiled for this link type


def is_pcapng(path: str) -> bool:
    """The regular file starts with a pcapng section header (False for anything that cannot be read, and
    for pipes: libpcap reads those, and opening one here would take its first bytes)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and struct.unpack("<I", head)[0] == SHB


_record = struct.Struct("=IIII").pack  # a meta record: sec, usec, offset, caplen


def stamp(ts: int, units: int, offset: int) -> tuple[int, int]:
    """pcapy's (sec, usec) of a time stamp of `units` per second (if_tsresol) plus `offset` seconds
    (if_tsoffset): microseconds rounded down, seconds modulo 2^32 as the u32 meta record holds them."""
    sec, frac = divmod(ts, units)
    return (sec + offset) & 0xFFFFFFFF, frac * 1_000_000 // units


def index_epbs(buf: bytes, pos: int, ifid: int, room: int, big_endian: bool, units: int,
               offset: int) -> tuple[bytes, int]:
    """The Python twin of `_fastpath.index_pcapng` (same arguments, same result): the meta records of at
    most `room` EPBs of interface `ifid` from `pos`, whole in `buf`, and where the first block not taken
    starts (another block type or interface, a bad length, a block not whole in `buf`, a caplen beyond
    its block: the block reader says what)."""
    head = struct.Struct((">" if big_endian else "<") + "IIIIII").unpack_from
    pack = _record
    out: list[bytes] = []
    append = out.append
    end = len(buf)
    for _ in range(room):
        if end - pos < 32 or pos + 28 > 0xFFFFFFFF:  # frame offsets are u32
            break
        btype, blen, pid, hi, lo, caplen = head(buf, pos)
        if btype != EPB or pid != ifid or blen < 32 or blen % 4 or blen > end - pos or caplen > blen - 32:
            break
        sec, frac = divmod((hi << 32) | lo, units)  # stamp(), inlined: the call was a fifth of this loop
        append(pack((sec + offset) & 0xFFFFFFFF, frac * 1_000_000 // units, pos + 28, caplen))
        pos += blen
    return b"".join(out), pos


_index = fastpath.index_pcapng if fastpath is not None else index_epbs


class PcapngSource:
    """A pcapng file as `agent.capture.OfflineSource` presents a capture: `read()` returns the next batch
    (of one interface), None at the end or at damage (`error` says what and where)."""

    def __init__(self, path: str, bpf: str | None = None, batch: int = BATCH) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY)  # closed by close(), like a pcapy handle
        except OSError as e:
            raise CaptureError(f"{path}: {e.strerror}") from None
        self.size = os.fstat(self.fd).st_size  # bytes; later growth is not read
        self.bpf = bpf
        self.batch = batch
        self.data: bytes | mmap.mmap = b""  # the window of the file mapped at `consumed`
        self.pos = 0
        self.eof = False  # `data` reaches the end of the file
        self.end = "<"
        self.interfaces: list[Interface] = []  # every IDB of the file, in order
        self.section: list[Interface] = []  # those of the current section (EPB interface ids index it)
        self.error: str | None = None
        self.done = False
        self.consumed = 0  # file offset of data[0]
        self.reported = 0  # file bytes accounted for by progress()

    @property
    def interface_names(self) -> dict[int, str]:
        """`interface` numbers of the batches -> if_name (or if<N>); SLL2 interfaces are named by the frames."""
        return {i.number: i.name for i in self.interfaces if i.linktype != LINKTYPE_LINUX_SLL2}

    def progress(self, batch: Batch) -> int:
        """File bytes read since the last call (batches share their window: the buffer's size says nothing)."""
        now = self.consumed + self.pos
        done, self.reported = now - self.reported, now
        return done

    def close(self) -> None:
        self.data = b""  # unmapped when the last batch of it goes
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def linktype(self) -> int:
        """The first interface's link type (the `capture.linktype` of `read --json`)."""
        return self.interfaces[0].linktype if self.interfaces else 1

    def _fill(self, need: int) -> bool:
        """Make `need` bytes from `pos` available in `data` (mapping the window of the file that holds them);
        False at the end of the file."""
        if self.pos + need <= len(self.data):
            return True
        if self.eof:
            return False
        at = self.consumed + self.pos
        start = at - at % mmap.ALLOCATIONGRANULARITY
        length = min(self.size - start, max(CHUNK, at - start + need))
        try:
            self.data = mmap.mmap(self.fd, length, access=mmap.ACCESS_READ, offset=start)
        except ValueError:  # beyond the end of the file: it was cut short since it was opened
            self._damaged("file cut short while read")
            self.data, start = b"", at
        self.consumed, self.pos = start, at - start
        self.eof = start + len(self.data) >= self.size
        return self.pos + need <= len(self.data)

    def _damaged(self, what: str) -> None:
        if self.error is None:  # the first damage found is what is said
            self.error = f"{what} at byte {self.consumed + self.pos}"
        self.done = True

    def read(self) -> Batch | None:
        while not self.done:
            parts, current = self._run()
            if parts:
                ifindex = None if current.linktype == LINKTYPE_LINUX_SLL2 else current.number
                return Batch(self.data, b"".join(parts), current.linktype, ifindex)  # one part: itself, no copy
        return None

    def _run(self) -> tuple[list[bytes], Interface]:
        """The records of the next run of packets of one interface (none if --bpf took them all)."""
        meta: list[bytes] = []
        current: Interface | None = None
        frames, limit = 0, self.batch
        unpack = struct.unpack_from
        while not self.done and frames < limit:
            if not meta and not self._fill(8):
                if self.pos < len(self.data):
                    self._damaged("truncated block header")
                self.done = True
                break
            if self.pos + 8 > len(self.data):  # the rest is in the next window: end this batch first
                break
            data, pos = self.data, self.pos
            btype, blen = unpack(self.end + "II", data, pos)
            if btype == SHB:
                if not self._fill(12):
                    self._damaged("truncated section header")
                    break
                data, pos = self.data, self.pos
                (bom,) = unpack("<I", data, pos + 8)
                self.end = "<" if bom == BOM else ">"
                (blen,) = unpack(self.end + "I", data, pos + 4)
            if blen < 12 or blen % 4:
                self._damaged(f"bad block length {blen}")
                break
            if pos + blen > len(data):
                if meta:
                    break
                if not self._fill(blen):
                    self._damaged("truncated block")
                    break
                data, pos = self.data, self.pos
            if btype in (EPB, PB):
                if blen < 32:
                    self._damaged("short packet block")
                    break
                if btype == EPB:
                    ifid, hi, lo, caplen = unpack(self.end + "IIII", data, pos + 8)
                else:
                    ifid, _, hi, lo, caplen = unpack(self.end + "HHIII", data, pos + 8)
                if ifid >= len(self.section) or caplen > blen - 32:
                    self._damaged(f"packet of unknown interface {ifid}" if ifid >= len(self.section)
                                  else "packet longer than its block")
                    break
                iface = self.section[ifid]
                start = pos + 28
            elif btype == SPB:
                if not self.section:
                    self._damaged("packet before any interface")
                    break
                iface = self.section[0]
                (origlen,) = unpack(self.end + "I", data, pos + 8)
                caplen = min(origlen, blen - 16, iface.snaplen or origlen)
                hi = lo = 0
                start = pos + 12
            else:
                if btype == SHB:
                    self.section = []
                elif btype == IDB:
                    self._interface(data, pos, blen)
                self.pos = pos + blen
                continue
            if current is not iface:
                if current is not None:
                    break  # the next batch is this interface's
                current = iface
            if btype == EPB and iface.bpf is None:  # the fast path: this block and the EPBs of its interface after it
                more, stop = _index(data, pos, ifid, limit - frames, self.end == ">", iface.units, iface.offset)
                if more:  # (nothing only for a block beyond the 4 GiB that frame offsets reach)
                    meta.append(more)
                    frames += len(more) // 16
                    self.pos = stop
                    continue
            self.pos = pos + blen
            if iface.bpf is not None and not iface.bpf.filter(data[start:start + caplen]):
                continue
            meta.append(_record(*stamp((hi << 32) | lo, iface.units, iface.offset), start, caplen))
            frames += 1
        return meta, current  # type: ignore[return-value]  # current is set whenever meta is not empty

    def _interface(self, data: bytes, pos: int, blen: int) -> None:
        linktype, _, snaplen = struct.unpack_from(self.end + "HHI", data, pos + 8)
        iface = Interface(len(self.interfaces), linktype, snaplen, f"if{len(self.interfaces)}")
        opt, end = pos + 16, pos + blen - 4
        while opt + 4 <= end:
            code, length = struct.unpack_from(self.end + "HH", data, opt)
            value = data[opt + 4:opt + 4 + length]
            if code == 0:
                break
            if code == _OPT_NAME:
                iface.name = value.rstrip(b"\0").decode("utf-8", "replace") or iface.name
            elif code == _OPT_TSRESOL and length >= 1:
                exp = value[0] & 0x7F
                iface.units = 2**exp if value[0] & 0x80 else 10**exp
            elif code == _OPT_TSOFFSET and length >= 8:
                (iface.offset,) = struct.unpack_from(self.end + "q", value)
            opt += 4 + length + (-length % 4)
        if self.bpf:
            try:
                iface.bpf = pcapy.compile(linktype, snaplen or 65535, self.bpf, 1, 0)
            except pcapy.PcapError as e:
                raise CaptureError(f"BPF filter {self.bpf!r}: {e}") from None
        self.interfaces.append(iface)
        self.section.append(iface)
