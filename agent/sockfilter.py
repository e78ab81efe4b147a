"""A capture handle's direction in its kernel socket filter, so a packet is copied into one ring only.

libpcap 1.9 applies `setdirection` after the kernel's copy, and `inbound`/`outbound` in the expression
lose the first ring block (libpcap filters it again in user space, where the packet-type load fails).
So libpcap attaches its program (compiled for the live handle: VLAN via ancillary loads), which is read
back (SO_GET_FILTER) and attached again behind a packet-type test; `setdirection` stays for the packets
that reach the ring in between. Not one cooked handle per interface (SLL carries the packet type):
pcapy-ng cannot select SLL on a device, and libpcap 1.9's "any" device has no `ifindex` filter.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

SO_ATTACH_FILTER = SO_GET_FILTER = 26  # asm-generic/socket.h: the same option number
BPF_MAXINSNS = 4096
PACKET_OUTGOING = 4  # linux/if_packet.h
SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE
LDH_ABS, JEQ_K, RET_K = 0x28, 0x15, 0x06
INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k

_libc = ctypes.CDLL(None, use_errno=True)


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attached(fd: int) -> list[tuple[int, int, int, int]]:
    """The classic BPF program attached to socket FD (empty when none)."""
    buf = ctypes.create_string_buffer(INSN.size * BPF_MAXINSNS)
    count = ctypes.c_uint(BPF_MAXINSNS)  # SO_GET_FILTER counts instructions, not bytes
    if _libc.getsockopt(fd, socket.SOL_SOCKET, SO_GET_FILTER, buf, ctypes.byref(count)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"SO_GET_FILTER: {os.strerror(err)}")
    return [INSN.unpack_from(buf.raw, INSN.size * i) for i in range(count.value)]


def with_direction(program: list[tuple[int, int, int, int]], outgoing: bool) -> list[tuple[int, int, int, int]]:
    """PROGRAM behind a test that rejects packets whose type is (not, with OUTGOING) PACKET_OUTGOING."""
    return [(LDH_ABS, 0, 0, SKF_AD_PKTTYPE),
            (JEQ_K, 1, 0, PACKET_OUTGOING) if outgoing else (JEQ_K, 0, 1, PACKET_OUTGOING),
            (RET_K, 0, 0, 0),
            *program]


def attach(fd: int, program: list[tuple[int, int, int, int]]) -> None:
    code = ctypes.create_string_buffer(b"".join(INSN.pack(*insn) for insn in program))
    fprog = _Fprog(len(program), ctypes.addressof(code))
    if _libc.setsockopt(fd, socket.SOL_SOCKET, SO_ATTACH_FILTER, ctypes.byref(fprog), ctypes.sizeof(fprog)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"SO_ATTACH_FILTER: {os.strerror(err)}")


def filter_direction(fd: int, outgoing: bool) -> bool:
    """Prepend the direction test to the filter libpcap attached to FD; False when it cannot (no program,
    too long to take the test, an error): libpcap's user-space direction check then does the job alone."""
    try:
        program = attached(fd)
        if not program or len(program) + 3 > BPF_MAXINSNS:
            return False
        attach(fd, with_direction(program, outgoing))
    except OSError:
        return False
    return True
