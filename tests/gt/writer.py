"""Classic pcap and pcapng writers (little-endian, microsecond timestamps)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

PCAP_MAGIC = 0xA1B2C3D4
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 0x00000001
PCAPNG_EPB = 0x00000006
PCAPNG_BOM = 0x1A2B3C4D
# Unassigned block type (0xBAD would be a Custom Block): readers must skip it by its length.
PCAPNG_UNKNOWN = 0x00000099


@dataclass(frozen=True)
class Record:
    """One captured frame; `caplen` below len(data) truncates it like a snaplen would."""

    ts_us: int
    data: bytes
    caplen: int | None = None
    interface: int = 0  # pcapng: the IDB it was captured on

    @property
    def captured(self) -> bytes:
        return self.data if self.caplen is None else self.data[: self.caplen]


def write_pcap(path: Path, linktype: int, records: list[Record], snaplen: int = 262144) -> None:
    parts = [struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, snaplen, linktype)]
    for rec in records:
        cap = rec.captured
        sec, usec = divmod(rec.ts_us, 1_000_000)
        parts.append(struct.pack("<IIII", sec, usec, len(cap), len(rec.data)))
        parts.append(cap)
    Path(path).write_bytes(b"".join(parts))


def _block(btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    total = len(body) + 12
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def write_pcapng(path: Path, linktype: int, records: list[Record], snaplen: int = 262144,
                 if_names: tuple[str | None, ...] = (None,)) -> None:
    """SHB, one IDB per interface (default µs resolution, if_name when named), an unknown block, then one
    EPB per record."""
    parts = [_block(PCAPNG_SHB, struct.pack("<IHHq", PCAPNG_BOM, 1, 0, -1))]
    for name in if_names:
        options = b""
        if name is not None:
            raw = name.encode()
            options = struct.pack("<HH", 2, len(raw)) + raw + b"\x00" * (-len(raw) % 4) + struct.pack("<HH", 0, 0)
        parts.append(_block(PCAPNG_IDB, struct.pack("<HHI", linktype, 0, snaplen) + options))
    parts.append(_block(PCAPNG_UNKNOWN, b"espmeter ground truth: skip me"))
    for rec in records:
        cap = rec.captured
        body = struct.pack("<IIIII", rec.interface, rec.ts_us >> 32, rec.ts_us & 0xFFFFFFFF, len(cap),
                           len(rec.data)) + cap
        parts.append(_block(PCAPNG_EPB, body))
    Path(path).write_bytes(b"".join(parts))
