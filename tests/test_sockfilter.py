"""agent.sockfilter on an ordinary socket (any socket takes a classic BPF filter, no privilege needed)."""

from __future__ import annotations

import socket

from agent.sockfilter import BPF_MAXINSNS, attach, attached, filter_direction, with_direction

ACCEPT = [(0x06, 0, 0, 0xFFFF)]  # ret #65535


def test_direction_test_prepended_to_the_attached_program() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        attach(s.fileno(), ACCEPT)
        assert attached(s.fileno()) == ACCEPT
        assert filter_direction(s.fileno(), outgoing=True)
        assert attached(s.fileno()) == with_direction(ACCEPT, outgoing=True)
        assert with_direction(ACCEPT, True)[1] == (0x15, 1, 0, 4)  # outgoing: on to the program
        assert with_direction(ACCEPT, False)[1] == (0x15, 0, 1, 4)  # otherwise: to `ret #0`


def test_left_to_libpcap_without_a_program_or_without_room() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        assert attached(s.fileno()) == []
        assert not filter_direction(s.fileno(), outgoing=False)
        long = [(0x06, 0, 0, 0xFFFF)] * (BPF_MAXINSNS - 2)
        attach(s.fileno(), long)
        assert not filter_direction(s.fileno(), outgoing=False)
        assert attached(s.fileno()) == long
