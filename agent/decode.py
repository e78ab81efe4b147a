"""Frame decoder: link layer → IP (v4 options, v6 extension headers, fragments) → ESP / ESP-in-UDP / IKE.

softflowd-style chain: each layer function reads its header, fills the `Frame` and returns the
offset of the next layer or sets a terminal class. Nothing here raises on bad input: every
frame ends in exactly one class. This is the reference path; `agent.meter` has a specialised
fast path for the common Ethernet/IPv4/ESP frame that must agree with it (tested).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Frame classes (capture.classes in `read --json`); every frame lands in exactly one.
ESP = "esp"
IKE = "ike"
KEEPALIVE = "keepalive"
OTHER = "other"
ORPHAN = "orphan_fragment"
TRUNCATED = "truncated"
MALFORMED = "malformed"
FRAGMENT = "fragment"  # provisional: a non-first fragment, resolved by the fragment table
CLASSES = (ESP, IKE, KEEPALIVE, OTHER, ORPHAN, TRUNCATED, MALFORMED)

# Link types as libpcap reports them (DLT_*), plus the LINKTYPE_* values of capture files.
DLT_NULL = 0
DLT_EN10MB = 1
DLT_RAW = 12
DLT_RAW_BSD = 14
DLT_LINKTYPE_RAW = 101
DLT_LOOP = 108
DLT_LINUX_SLL = 113
DLT_IPV4 = 228
DLT_IPV6 = 229
DLT_LINUX_SLL2 = 276

# libpcap reports DLT_RAW (12 on Linux) for files whose header says LINKTYPE_RAW (101)
LINKTYPE_OF_DLT = {DLT_RAW: DLT_LINKTYPE_RAW}

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
PROTO_ESP = 50
PROTO_UDP = 17
PORT_IKE = 500
PORT_NATT = 4500
IPV6_EXT = {0, 43, 60}  # hop-by-hop, routing, destination options (length in 8-octet units)
IPV6_FRAG = 44
IPV6_AH = 51
MAX_EXT_HEADERS = 8
SLL_OUTGOING = 4

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
_ipv4 = struct.Struct("!BxHHHxB").unpack_from  # ver/ihl, total length, id, flags/offset, protocol
_sll2_header = struct.Struct("!HxxIxxB").unpack_from  # protocol, ifindex, packet type
_spi_seq = struct.Struct("!II").unpack_from
_ports = struct.Struct("!HHH").unpack_from  # sport, dport, length


@dataclass(slots=True)
class Frame:
    """What the decoder learnt about one frame; fields beyond `cls` are set as far as decoding got."""

    cls: str = OTHER
    ifindex: int | None = None
    vlan: int | None = None
    inner_vlan: int | None = None
    direction: str | None = None  # "in" / "out" when the link layer says
    version: int = 0
    src: bytes = b""
    dst: bytes = b""
    proto: int = 0
    ip_len: int = 0  # IP total length (IPv6: 40 + payload length)
    spi: int = 0
    seq: int = 0
    sport: int | None = None
    dport: int | None = None
    # fragments: frag_id is set for every fragment; frag_off/frag_len in payload octets
    frag_id: int | None = None
    frag_off: int = 0
    frag_len: int = 0
    frag_more: bool = False

    @property
    def obs(self) -> tuple[int | None, int | None, int | None] | None:
        """Observation point: interface and VLAN tags tell SAs apart (VRFs reuse addresses)."""
        if self.ifindex is None and self.vlan is None:
            return None
        return (self.ifindex, self.vlan, self.inner_vlan)


def decode(buf: bytes, off: int, caplen: int, linktype: int, ifindex: int | None = None) -> Frame:
    """Decode one frame of `caplen` octets at `buf[off:]`."""
    f = Frame(ifindex=ifindex)
    end = off + caplen
    link = _LINK.get(linktype)
    if link is None:
        f.cls = MALFORMED
        return f
    nxt, ethertype = link(f, buf, off, end)
    if nxt < 0:
        return f
    if ethertype == ETH_IPV4:
        _ipv4_layer(f, buf, nxt, end)
    elif ethertype == ETH_IPV6:
        _ipv6_layer(f, buf, nxt, end)
    else:
        f.cls = OTHER
    return f


# -- link layer: each returns (offset of the network header, ethertype) or (-1, 0) ------------
def _ethernet(f: Frame, buf: bytes, off: int, end: int) -> tuple[int, int]:
    if end - off < 14:
        f.cls = TRUNCATED
        return -1, 0
    return _vlan_tags(f, buf, off + 12, end, _u16(buf, off + 12)[0])


def _vlan_tags(f: Frame, buf: bytes, at: int, end: int, ethertype: int) -> tuple[int, int]:
    """`ethertype` is the link layer's protocol field and `at` where a tag's TPID would sit (the tag
    control field follows at at+2); up to two 802.1Q/802.1ad tags are read. SLL2 keeps its protocol field
    at the front of its header, so there `at` is the two bytes before the payload, not the field itself."""
    tags = 0
    while ethertype in VLAN_TPIDS:
        if tags == 2:
            f.cls = OTHER  # a third tag: not something espmeter decodes
            return -1, 0
        if end - at < 6:
            f.cls = TRUNCATED
            return -1, 0
        vid = _u16(buf, at + 2)[0] & 0x0FFF
        if tags == 0:
            f.vlan = vid
        else:
            f.inner_vlan = vid
        tags += 1
        at += 4
        ethertype = _u16(buf, at)[0]
    return at + 2, ethertype


def _sll(f: Frame, buf: bytes, off: int, end: int) -> tuple[int, int]:
    if end - off < 16:
        f.cls = TRUNCATED
        return -1, 0
    f.direction = "out" if _u16(buf, off)[0] == SLL_OUTGOING else "in"
    return _vlan_tags(f, buf, off + 14, end, _u16(buf, off + 14)[0])


def _sll2(f: Frame, buf: bytes, off: int, end: int) -> tuple[int, int]:
    if end - off < 20:
        f.cls = TRUNCATED
        return -1, 0
    proto, ifindex, pkttype = _sll2_header(buf, off)
    f.ifindex = ifindex
    f.direction = "out" if pkttype == SLL_OUTGOING else "in"
    if proto in VLAN_TPIDS:
        return _vlan_tags(f, buf, off + 18, end, proto)
    return off + 20, proto


def _raw(f: Frame, buf: bytes, off: int, end: int) -> tuple[int, int]:
    if end - off < 1:
        f.cls = TRUNCATED
        return -1, 0
    version = buf[off] >> 4
    if version == 4:
        return off, ETH_IPV4
    if version == 6:
        return off, ETH_IPV6
    f.cls = MALFORMED
    return -1, 0


def _ipv4_only(f: Frame, buf: bytes, off: int, end: int) -> tuple[int, int]:
    return off, ETH_IPV4


def _ipv6_only(f: Frame, buf: bytes, off: int, end: int) -> tuple[int, int]:
    return off, ETH_IPV6


_AF_INET6 = {24, 28, 30}  # NetBSD/OpenBSD, FreeBSD, macOS values of AF_INET6


def _null(f: Frame, buf: bytes, off: int, end: int) -> tuple[int, int]:
    """BSD loopback: a 4-byte address family in the *capturing host's* byte order."""
    if end - off < 4:
        f.cls = TRUNCATED
        return -1, 0
    le = int.from_bytes(buf[off:off + 4], "little")
    be = int.from_bytes(buf[off:off + 4], "big")
    af = le if le < 256 else be
    if af == 2:
        return off + 4, ETH_IPV4
    if af in _AF_INET6:
        return off + 4, ETH_IPV6
    f.cls = OTHER
    return -1, 0


_LINK = {
    DLT_EN10MB: _ethernet, DLT_LINUX_SLL: _sll, DLT_LINUX_SLL2: _sll2,
    DLT_RAW: _raw, DLT_RAW_BSD: _raw, DLT_LINKTYPE_RAW: _raw, DLT_IPV4: _ipv4_only, DLT_IPV6: _ipv6_only,
    DLT_NULL: _null, DLT_LOOP: _null,
}


# -- network layer ---------------------------------------------------------------------------
def _ipv4_layer(f: Frame, buf: bytes, off: int, end: int) -> None:
    if end - off < 20:
        f.cls = TRUNCATED
        return
    ver_ihl, total, ident, frag, proto = _ipv4(buf, off)
    hlen = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or hlen < 20 or total < hlen:
        f.cls = MALFORMED
        return
    if end - off < hlen:
        f.cls = TRUNCATED
        return
    f.version = 4
    f.src = buf[off + 12:off + 16]
    f.dst = buf[off + 16:off + 20]
    f.proto = proto
    f.ip_len = total
    payload = total - hlen
    offset = (frag & 0x1FFF) * 8
    more = bool(frag & 0x2000)
    if offset or more:
        f.frag_id, f.frag_off, f.frag_len, f.frag_more = ident, offset, payload, more
        if offset:
            f.cls = FRAGMENT
            return
    _transport(f, buf, off + hlen, min(end, off + total), payload)


def _ipv6_layer(f: Frame, buf: bytes, off: int, end: int) -> None:
    if end - off < 40:
        f.cls = TRUNCATED
        return
    if buf[off] >> 4 != 6:
        f.cls = MALFORMED
        return
    payload = _u16(buf, off + 4)[0]
    nh = buf[off + 6]
    f.version = 6
    f.src = buf[off + 8:off + 24]
    f.dst = buf[off + 24:off + 40]
    f.ip_len = 40 + payload
    limit = off + 40 + payload
    at = off + 40
    for _ in range(MAX_EXT_HEADERS):
        if nh in IPV6_EXT or nh == IPV6_AH:
            if end - at < 2:
                f.cls = TRUNCATED
                return
            size = (buf[at + 1] + 2) * 4 if nh == IPV6_AH else (buf[at + 1] + 1) * 8
            nh = buf[at]
            at += size
            if at > limit:
                f.cls = MALFORMED
                return
        elif nh == IPV6_FRAG:
            if end - at < 8:
                f.cls = TRUNCATED
                return
            if at + 8 > limit:
                f.cls = MALFORMED
                return
            nh = buf[at]
            offmore = _u16(buf, at + 2)[0]
            f.frag_id = _u32(buf, at + 4)[0]
            f.frag_off = offmore & 0xFFF8
            f.frag_more = bool(offmore & 1)
            at += 8
            f.frag_len = limit - at
            f.proto = nh
            if f.frag_off:
                f.cls = FRAGMENT
                return
        else:
            break
    else:
        f.cls = MALFORMED  # more extension headers than any real stack sends
        return
    f.proto = nh
    _transport(f, buf, at, min(end, limit), limit - at)


# -- transport layer -------------------------------------------------------------------------
def _transport(f: Frame, buf: bytes, at: int, end: int, length: int) -> None:
    """`end` bounds the captured bytes of this IP packet; `length` is its payload length."""
    if f.proto == PROTO_ESP:
        _esp(f, buf, at, end, length)
    elif f.proto == PROTO_UDP:
        _udp(f, buf, at, end, length)
    else:
        f.cls = OTHER


def _esp(f: Frame, buf: bytes, at: int, end: int, length: int) -> None:
    if length < 8:
        f.cls = MALFORMED
    elif end - at < 8:
        f.cls = TRUNCATED
    else:
        f.spi, f.seq = _spi_seq(buf, at)
        f.cls = ESP if f.spi else MALFORMED  # SPI 0 is reserved (RFC 4303 §2.1)


def _udp(f: Frame, buf: bytes, at: int, end: int, length: int) -> None:
    if length < 8:
        f.cls = MALFORMED
        return
    if end - at < 8:
        f.cls = TRUNCATED
        return
    sport, dport, ulen = _ports(buf, at)
    f.sport, f.dport = sport, dport
    if sport != PORT_NATT and dport != PORT_NATT:
        f.cls = IKE if PORT_IKE in (sport, dport) else OTHER
        return
    if ulen < 8 or (ulen > length and not f.frag_more):
        f.cls = MALFORMED
        return
    data = ulen - 8 if not f.frag_more else length - 8
    at += 8
    if data == 1 and end - at >= 1 and buf[at] == 0xFF:
        f.cls = KEEPALIVE  # RFC 3948 §2.2 NAT-keepalive
    elif data >= 4 and end - at >= 4 and buf[at:at + 4] == b"\0\0\0\0":
        f.cls = IKE  # non-ESP marker (RFC 3948 §2.2)
    elif data < 8:
        f.cls = MALFORMED if data >= 0 and end - at >= data else TRUNCATED
    elif end - at < 8:
        f.cls = TRUNCATED
    else:
        f.spi, f.seq = _spi_seq(buf, at)
        f.cls = ESP
