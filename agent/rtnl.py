"""The rtnetlink the live capture needs, on a stdlib AF_NETLINK socket: a link's index and state, this
box's addresses, and link and address events.

pyroute2 did this before at 11-12 MB of the agent's RSS: importing any part of it runs its package
`__init__` (~370 modules: asyncio, sqlite3, ssl, ...), for three messages of a few fixed structs
(rtnetlink(7)).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections.abc import Iterator

_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, (pad), type, index, flags, change
_IFADDR_LEN = 8  # ifaddrmsg: family, prefix length, flags, scope, index
_RTA = struct.Struct("=HH")  # rtattr: length, type
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_IFNAME = 3
IFA_ADDRESS = 1
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
IFF_UP = 0x1
_RECV = 65536
_seq = itertools.count(1)


class NetlinkError(OSError):
    """The kernel's error answer to a request (its errno)."""


def _open() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, sequence, payload start, message end) of each netlink message in `data`."""
    pos = 0
    while pos + _NLMSG.size <= len(data):
        length, kind, _, seq, _ = _NLMSG.unpack_from(data, pos)
        if length < _NLMSG.size or pos + length > len(data):
            return
        yield kind, seq, pos + _NLMSG.size, pos + length
        pos += (length + 3) & ~3


def _attrs(data: bytes, pos: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each rtattr in data[pos:end]."""
    while pos + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, pos)
        if length < _RTA.size or pos + length > end:
            return
        yield kind & 0x3FFF, data[pos + _RTA.size:pos + length]  # without NLA_F_NESTED / NET_BYTEORDER
        pos += (length + 3) & ~3


def _ifname(data: bytes, pos: int, end: int) -> str | None:
    for kind, value in _attrs(data, pos + _IFINFO.size, end):
        if kind == IFLA_IFNAME:
            return value.split(b"\0", 1)[0].decode(errors="replace")
    return None


def _request(kind: int, payload: bytes, dump: bool) -> Iterator[tuple[bytes, int, int]]:
    """Send one request; (data, payload start, end) of each answer, to NLMSG_DONE when `dump`."""
    seq = next(_seq)
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    with _open() as s:
        s.sendto(_NLMSG.pack(_NLMSG.size + len(payload), kind, flags, seq, 0) + payload, (0, 0))
        while True:
            data = s.recv(_RECV)
            for mtype, mseq, start, end in _messages(data):
                if mseq != seq:
                    continue
                if mtype == NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, start)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return  # an acknowledgement
                yield data, start, end
                if not dump:
                    return


def link(name: str) -> tuple[int, bool] | None:
    """(ifindex, administratively up) of the link NAME, or None when there is none."""
    attr = name.encode() + b"\0"
    payload = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _RTA.pack(_RTA.size + len(attr), IFLA_IFNAME) + attr
    try:
        for data, start, _ in _request(RTM_GETLINK, payload + b"\0" * (-len(payload) % 4), dump=False):
            _, _, index, flags, _ = _IFINFO.unpack_from(data, start)
            return index, bool(flags & IFF_UP)
    except NetlinkError:  # ENODEV; EINVAL for a name no link can have
        return None
    return None


def addresses() -> set[bytes]:
    """This box's own addresses (IFA_ADDRESS of every link), packed: 4 octets for IPv4, 16 for IPv6. SAs
    sent from them have no measurable loss here."""
    found = set()
    for data, start, end in _request(RTM_GETADDR, bytes(_IFADDR_LEN), dump=True):
        for kind, value in _attrs(data, start + _IFADDR_LEN, end):
            if kind == IFA_ADDRESS and len(value) in (4, 16):
                found.add(value)
    return found


class LinkMonitor:
    """Link and address notifications (RTMGRP_LINK, RTMGRP_IPV4/IPV6_IFADDR) on a selectable socket."""

    def __init__(self) -> None:
        self.sock = _open()
        self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def events(self) -> tuple[set[str], set[str], bool]:
        """(links new or changed, links gone, addresses changed), draining what is queued."""
        up: set[str] = set()
        gone: set[str] = set()
        addr_changed = False
        while True:
            try:
                data = self.sock.recv(_RECV)
            except OSError:  # nothing queued (EAGAIN), or ENOBUFS: events lost, the slow retry covers them
                break
            for kind, _, start, end in _messages(data):
                if kind in (RTM_NEWADDR, RTM_DELADDR):
                    addr_changed = True
                elif kind in (RTM_NEWLINK, RTM_DELLINK):
                    name = _ifname(data, start, end)
                    if name and kind == RTM_DELLINK:
                        gone.add(name)
                        up.discard(name)
                    elif name:
                        up.add(name)
        return up, gone, addr_changed

    def close(self) -> None:
        self.sock.close()
