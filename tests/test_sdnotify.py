"""sd_notify against a real AF_UNIX datagram socket, path and abstract namespace."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import SdNotify, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        yield sock, path


def _recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_watchdog_stopping(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = SdNotify({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("capturing on eth0")
    assert _recv(sock) == ["READY=1", "STATUS=capturing on eth0"]
    assert n.watchdog()
    assert _recv(sock) == ["WATCHDOG=1"]
    assert n.status("line1\nline2")
    assert _recv(sock) == ["STATUS=line1 line2"]
    assert n.stopping()
    assert _recv(sock) == ["STOPPING=1"]


def test_reloading_carries_monotonic_usec(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert SdNotify({"NOTIFY_SOCKET": path}).reloading()
    lines = _recv(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert lines[0] == "RELOADING=1"
    match = re.fullmatch(r"MONOTONIC_USEC=(\d+)", lines[1])
    assert match and before <= int(match.group(1)) <= after


def test_abstract_namespace() -> None:
    name = f"espmeter-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert SdNotify({"NOTIFY_SOCKET": "@" + name}).ready()
        assert _recv(sock) == ["READY=1"]


def test_noop_without_systemd() -> None:
    n = SdNotify({})
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.stopping()


def test_uses_process_environment(monkeypatch: pytest.MonkeyPatch, listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert SdNotify().watchdog()
    assert _recv(sock) == ["WATCHDOG=1"]


def test_vanished_socket_is_not_fatal(tmp_path: Path) -> None:
    assert not SdNotify({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready()


def test_watchdog_interval() -> None:
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
