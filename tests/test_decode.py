"""VLAN tags behind every link layer that can carry them (Ethernet QinQ, Linux SLL, Linux SLL2)."""

from __future__ import annotations

import struct

import pytest

from agent import decode as d

IP = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 16, 0, 0, 64, 50, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
ESP = struct.pack("!II", 0x1234, 7) + bytes(8)
SLL2 = struct.Struct("!HHIHBB8s")  # protocol, reserved, ifindex, ARPHRD, packet type, address length, address
SLL = struct.Struct("!HHH8sH")  # packet type, ARPHRD, address length, address, protocol

FRAMES = {
    "ethernet-qinq": (d.DLT_EN10MB, bytes(12) + struct.pack("!HHHHH", 0x88A8, 100, 0x8100, 200, 0x0800),
                      (100, 200, None)),
    "sll-vlan": (d.DLT_LINUX_SLL, SLL.pack(0, 1, 6, bytes(8), 0x8100) + struct.pack("!HH", 7, 0x0800),
                 (7, None, None)),
    "sll2-vlan": (d.DLT_LINUX_SLL2, SLL2.pack(0x8100, 0, 5, 1, 0, 6, bytes(8)) + struct.pack("!HH", 42, 0x0800),
                  (42, None, 5)),
    "sll2-qinq": (d.DLT_LINUX_SLL2,
                  SLL2.pack(0x88A8, 0, 9, 1, 4, 6, bytes(8)) + struct.pack("!HHHH", 3, 0x8100, 4, 0x0800),
                  (3, 4, 9)),
}


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_esp_behind_vlan_tags(name: str) -> None:
    linktype, header, (vlan, inner, ifindex) = FRAMES[name]
    frame = header + IP + ESP
    f = d.decode(frame, 0, len(frame), linktype)
    assert (f.cls, f.spi, f.seq) == (d.ESP, 0x1234, 7)
    assert (f.vlan, f.inner_vlan, f.ifindex) == (vlan, inner, ifindex)


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_cut_inside_the_tags_is_truncated(name: str) -> None:
    linktype, header, _ = FRAMES[name]
    f = d.decode(header, 0, len(header) - 3, linktype)
    assert f.cls == d.TRUNCATED
