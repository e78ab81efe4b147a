"""One observed SA generation: identity, traffic counters, sequence tracker and export snapshot."""

from __future__ import annotations

import math
import struct
from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6, inet_ntop

from agent.tracker import SEQ_LIMIT, SeqTracker, untracked
from exporter.records import IPAddress

NO_LIMIT = SEQ_LIMIT + 1  # above any number an SA reaches: no fast limit is higher, so beyond is the tracker's
PROBATION_RUN = 4  # accepted datagrams (each plausible after the previous) that make an SA established
NEVER = float("inf")  # the fast path's time limit where no gap can pass the reorder time
SAKey = bytes  # agent.sakey: ident (addresses [+ ports] + SPI) [+ observation point (ifindex, vlan, inner_vlan)]
# SA.identity(): src, dst (packed), spi, sport, dport, ifindex, vlan, inner_vlan
Identity = tuple[bytes, bytes, int, int | None, int | None, int | None, int | None, int | None]
_NO_OBS = (None, None, None)


@untracked
class SA(SeqTracker):
    """Counters are cumulative; `x_*` hold their values at the previous export (deltas = now - x)."""

    __slots__ = ()  # every field is agent.tracker.SAFields's

    def __init__(self, key: SAKey, udp: bool, now: float, direction: str | None, generation: int = 0) -> None:
        super().__init__()
        self.key = key  # SA.obs and SA.ident read it (agent.sakey)
        self.udp = udp
        self.generation = generation
        self.direction = direction
        self.packets = 0
        self.octets = 0
        self.incomplete = 0
        self.first_seen = now
        self.last_seen = now
        self.peer: SA | None = None
        self.tunnel_id: int | None = None
        self.active = True
        self.trial = True  # on probation until a run of datagrams in sequence (see SATable)
        self.interval_start = now
        self.iv_seen = now  # first arrival of the export interval; -1 until there is one
        self.held_octets = 0  # size and previous last_seen of a held datagram (moved on a restart)
        self.held_seen = 0.0
        self.local = False  # sent by this box: no path loss is measurable here
        self.fseq = -1  # the in-order fast path applies while last + 1 < fseq and now <= ftime
        self.ftime = NEVER  # (ftime matters only where fseq >= 0)
        self.name: str | None = None  # from strongSwan (agent.strongswan) when this box runs it
        self.x_packets = self.x_octets = self.x_datagrams = self.x_lost = 0
        self.x_reordered = self.x_duplicates = self.x_late = self.x_incomplete = 0
        self.x_last = -1

    def __lt__(self, other: SA) -> bool:
        """Tie-break for schedule entries with the same due time (no serial number per entry), and the
        order of a tunnel's two SAs: first seen first, then by identity, so every run orders alike."""
        return (self.first_seen, self.ident, self.generation) < (other.first_seen, other.ident, other.generation)

    def fast_limits(self, window: int, reorder_time: float) -> None:
        """Until where the next in-order datagram needs no tracker work (see Meter.feed).

        With an open gap, only until its lowest number would fall behind the window or its age would
        pass the reorder time: then the slow path must finalise it; with final ranges, until the lowest
        one falls behind the window, where the tracker forgets it (so every path holds its `finals`). On
        probation, only until the datagram that ends it (SATable.observe_slow takes that one). Held
        numbers and dormancy always take the slow path. Only the table's current entry for its key has a
        limit (fseq >= 0).
        """
        if not self.active or self.held >= 0 or self.last < 0:
            self.fseq, self.ftime = -1, NEVER
            return
        if self.gaps:
            g = self.gaps[0]
            self.fseq, self.ftime = min(g[0] + window, NO_LIMIT), horizon(g[2], reorder_time)
        else:
            self.fseq, self.ftime = NO_LIMIT, NEVER
        if self.finals:  # and the number that puts its lowest final range behind the window (forgotten there)
            self.fseq = min(self.fseq, self.finals[0][1] + window)
        if self.trial:
            self.fseq = min(self.fseq, self.last + PROBATION_RUN - self.accepted)

    # -- identity, decoded from the key on demand (not on the packet path) ----------------------
    def identity(self) -> Identity:
        """Everything the key says, in one call: a record or a report entry reads it all, and each
        property read is a nested interpreter call in CPython 3.11 (~1.5k instructions, callgrind), as
        a named tuple's construction would be."""
        ifindex, vlan, inner_vlan = self.obs or _NO_OBS
        ident = self.ident
        if self.udp:
            src, dst, sport, dport, spi = _IDENT[len(ident)](ident)
            return src, dst, spi, sport, dport, ifindex, vlan, inner_vlan
        src, dst, spi = _IDENT[len(ident)](ident)
        return src, dst, spi, None, None, ifindex, vlan, inner_vlan

    @property
    def addr_len(self) -> int:
        return ident_addr_len(self.ident)

    @property
    def addresses(self) -> tuple[bytes, bytes]:
        """(src, dst) packed; `address_text` renders them."""
        return self.identity()[:2]

    @property
    def src(self) -> IPAddress:
        return address(self.identity()[0])

    @property
    def dst(self) -> IPAddress:
        return address(self.identity()[1])

    @property
    def spi(self) -> int:
        return self.identity()[2]

    @property
    def ports(self) -> tuple[int | None, int | None]:
        return self.identity()[3:5]

    @property
    def ifindex(self) -> int | None:
        return self.identity()[5]

    @property
    def vlan(self) -> int | None:
        return self.identity()[6]

    @property
    def inner_vlan(self) -> int | None:
        return self.identity()[7]

    @property
    def flow_key(self) -> bytes:
        """Addresses [+ ports]: the ident without its SPI, what the reverse SA mirrors."""
        return self.ident[:-4]

    def reverse_flow_key(self) -> bytes:
        i = self.ident
        if len(i) == 12:  # the common case first (IPv4 ESP): a third of the pairing's time
            return i[4:8] + i[:4]
        n = self.addr_len
        rev = i[n:2 * n] + i[:n]
        return rev + i[2 * n + 2:2 * n + 4] + i[2 * n:2 * n + 2] if self.udp else rev


def horizon(opened: float, reorder_time: float) -> float:
    """The latest time at which a gap opened at `opened` is not yet older than the reorder time, as the
    tracker tests it (`now - opened > reorder_time`): `now <= horizon` says the same, rounding included."""
    t = opened + reorder_time
    while t - opened > reorder_time:
        t = math.nextafter(t, -math.inf)
    while math.nextafter(t, math.inf) - opened <= reorder_time:
        t = math.nextafter(t, math.inf)
    return t


def ident_addr_len(ident: bytes) -> int:
    """4 or 16: an ident is addresses [+ ports] + SPI (12 or 16 bytes for IPv4)."""
    return 4 if len(ident) in (12, 16) else 16


def address(packed: bytes) -> IPAddress:
    """The address object of 4 or 16 packed bytes (ipaddress.ip_address tries IPv4 first, and raises
    and catches for every IPv6 address)."""
    return IPv4Address(packed) if len(packed) == 4 else IPv6Address(packed)


_V4_EMBEDDED = bytes(10)  # IPv6 addresses starting so are where inet_ntop and ipaddress may differ


def address_text(packed: bytes) -> str:
    """An address as every output writes it: ipaddress's text form (RFC 5952 for IPv6), through
    inet_ntop, which writes the same text three times faster, except IPv4-mapped/compatible IPv6
    addresses (inet_ntop writes `::ffff:192.0.2.1`, ipaddress `::ffff:c000:201`)."""
    if len(packed) == 4:
        return inet_ntop(AF_INET, packed)
    return inet_ntop(AF_INET6, packed) if packed[:10] != _V4_EMBEDDED else str(IPv6Address(packed))


def esp_ident(src: bytes, dst: bytes, spi: int) -> bytes:
    return src + dst + spi.to_bytes(4, "big")


def udp_ident(src: bytes, dst: bytes, sport: int, dport: int, spi: int) -> bytes:
    return src + dst + sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + spi.to_bytes(4, "big")


# an ident's fields by its length, as esp_ident and udp_ident lay them out (IPv4 / IPv6, ESP / UDP)
_IDENT = {12: struct.Struct("!4s4sI").unpack, 16: struct.Struct("!4s4sHHI").unpack,
          36: struct.Struct("!16s16sI").unpack, 40: struct.Struct("!16s16sHHI").unpack}
