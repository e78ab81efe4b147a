"""Byte-exact frame builders (link layer, IPv4/IPv6, UDP, ESP, fragments).

Kept free of any scenario logic so that the expected results in `scenario.py`
can be derived from what was asked for, not from parsing these bytes back.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP = 1
PROTO_ESP = 50
PROTO_HOPOPT = 0
PROTO_ROUTING = 43
PROTO_FRAGMENT = 44
PROTO_DSTOPTS = 60

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

SLL_HOST = 0
SLL_OUTGOING = 4
ARPHRD_ETHER = 1

_PATTERN = bytes(range(256))

# IPv4 Router Alert option: makes IHL 6 without changing anything else.
IPV4_ROUTER_ALERT = b"\x94\x04\x00\x00"


def checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum, used for IPv4, ICMP and UDP/IPv6."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_version(addr: str) -> int:
    return 6 if ":" in addr else 4


def ip_bytes(addr: str) -> bytes:
    """Packed address; inet_pton is fast enough for tens of thousands of frames."""
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


@dataclass(frozen=True)
class Link:
    """Link-layer framing of one observation point."""

    linktype: int = LINKTYPE_ETHERNET
    vlan: int | None = None
    inner_vlan: int | None = None
    ifindex: int = 0
    capture_if: int = 0  # the pcapng interface (IDB) the frame is written on
    pkttype: int = SLL_HOST
    null_af6: int = 30

    def header(self, ethertype: int) -> bytes:
        if self.linktype == LINKTYPE_ETHERNET:
            return self._ethernet(ethertype)
        if self.linktype == LINKTYPE_LINUX_SLL:
            addr = b"\x02\x00\x00\x00\x00\x01\x00\x00"
            return struct.pack("!HHH8sH", self.pkttype, ARPHRD_ETHER, 6, addr, ethertype)
        if self.linktype == LINKTYPE_LINUX_SLL2:
            addr = b"\x02\x00\x00\x00\x00\x01\x00\x00"
            return struct.pack("!HHIHBB8s", ethertype, 0, self.ifindex, ARPHRD_ETHER, self.pkttype, 6, addr)
        if self.linktype == LINKTYPE_NULL:
            # Host byte order of the writer; the files are written little-endian.
            return struct.pack("<I", 2 if ethertype == ETH_IPV4 else self.null_af6)
        if self.linktype == LINKTYPE_RAW:
            return b""
        raise ValueError(f"unsupported linktype {self.linktype}")

    def _ethernet(self, ethertype: int) -> bytes:
        head = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
        if self.vlan is not None and self.inner_vlan is not None:
            head += struct.pack("!HHHH", ETH_QINQ, self.vlan, ETH_VLAN, self.inner_vlan)
        elif self.vlan is not None:
            head += struct.pack("!HH", ETH_VLAN, self.vlan)
        return head + struct.pack("!H", ethertype)

    @property
    def carries_ethertype(self) -> bool:
        return self.linktype in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2)

    def frame(self, ip_packet: bytes) -> bytes:
        """Frame an IP packet; the ethertype follows the IP version nibble."""
        ethertype = ETH_IPV6 if ip_packet and ip_packet[0] >> 4 == 6 else ETH_IPV4
        return self.header(ethertype) + ip_packet


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 0, flags_off: int = 0,
         options: bytes = b"", ihl: int | None = None, total_length: int | None = None) -> bytes:
    """IPv4 header with correct checksum; `ihl`/`total_length` override to forge malformed ones."""
    hlen = 20 + len(options)
    ihl_field = hlen // 4 if ihl is None else ihl
    tlen = hlen + len(payload) if total_length is None else total_length
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl_field, 0, tlen, ident & 0xFFFF, flags_off, 64, proto, 0,
                       ip_bytes(src), ip_bytes(dst)) + options
    csum = checksum(head)
    return head[:10] + struct.pack("!H", csum) + head[12:] + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), next_header, 64,
                       ip_bytes(src), ip_bytes(dst)) + payload


def ipv6_opts(next_header: int) -> bytes:
    """Hop-by-hop or destination options header: one PadN option, 8 bytes."""
    return struct.pack("!BB", next_header, 0) + b"\x01\x04\x00\x00\x00\x00"


def ipv6_routing(next_header: int) -> bytes:
    """Segment routing header (type 4) with one segment and segments left 0: 24 bytes to skip."""
    return struct.pack("!BBBBBBH", next_header, 2, 4, 0, 0, 0, 0) + ip_bytes("2001:db8:ffff::1")


def ipv6_fragment(next_header: int, offset_units: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset_units << 3) | int(more), ident)


def udp(sport: int, dport: int, payload: bytes, src: str, dst: str) -> bytes:
    """UDP with checksum 0 over IPv4 (allowed) and a real one over IPv6 (mandatory)."""
    length = 8 + len(payload)
    head = struct.pack("!HHHH", sport, dport, length, 0)
    if ip_version(src) == 4:
        return head + payload
    pseudo = ip_bytes(src) + ip_bytes(dst) + struct.pack("!IxxxB", length, PROTO_UDP)
    csum = checksum(pseudo + head + payload) or 0xFFFF
    return head[:6] + struct.pack("!H", csum) + payload


def esp(spi: int, seq: int, payload_len: int) -> bytes:
    """ESP header (SPI, low 32 bits of the sequence number) plus opaque bytes."""
    start = seq & 0xFF
    body = (_PATTERN * (payload_len // 256 + 2))[start:start + payload_len]
    return struct.pack("!II", spi, seq & 0xFFFFFFFF) + body


def tcp_syn(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


def icmp_echo(ident: int, seq: int) -> bytes:
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"espmeter"
    return head[:2] + struct.pack("!H", checksum(head)) + head[4:]


def ip_packet(src: str, dst: str, proto: int, payload: bytes, v4_options: bytes = b"",
              v6_ext: tuple[int, ...] = ()) -> bytes:
    """Unfragmented IP packet; `v6_ext` lists extension header types to put before `proto`."""
    if ip_version(src) == 4:
        return ipv4(src, dst, proto, payload, options=v4_options)
    return ipv6(src, dst, *_v6_chain(v6_ext, proto, payload))


def _v6_chain(exts: tuple[int, ...], proto: int, payload: bytes) -> tuple[int, bytes]:
    nxt, body = proto, payload
    for ext in reversed(exts):
        body = (ipv6_routing(nxt) if ext == PROTO_ROUTING else ipv6_opts(nxt)) + body
        nxt = ext
    return nxt, body


def fragments(src: str, dst: str, proto: int, payload: bytes, sizes: list[int], ident: int,
              v4_options: bytes = b"", v6_ext: tuple[int, ...] = ()) -> list[bytes]:
    """Split an IP payload into fragments whose payload sizes are `sizes` (multiples of 8, last free)."""
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    assert sum(sizes) == len(payload) and all(s % 8 == 0 for s in sizes[:-1])
    out = []
    for i, (off, size) in enumerate(zip(offsets, sizes, strict=True)):
        chunk = payload[off:off + size]
        more = i < len(sizes) - 1
        if ip_version(src) == 4:
            opts = v4_options if i == 0 else b""
            out.append(ipv4(src, dst, proto, chunk, ident=ident, flags_off=(0x2000 if more else 0) | off // 8,
                            options=opts))
        else:
            frag = ipv6_fragment(proto, off // 8, more, ident) + chunk
            out.append(ipv6(src, dst, *_v6_chain(v6_ext, PROTO_FRAGMENT, frag)))
    return out


def ip_total_length(packet: bytes) -> int:
    """Octets as the contract counts them (IPv4 total length, IPv6 40 + payload length)."""
    if packet[0] >> 4 == 4:
        return struct.unpack_from("!H", packet, 2)[0]
    return 40 + struct.unpack_from("!H", packet, 4)[0]
