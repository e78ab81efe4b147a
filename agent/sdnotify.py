"""sd_notify(3) without libsystemd: one datagram per state change to $NOTIFY_SOCKET.

A no-op when not started by systemd, so the agent runs the same in a shell.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def _socket_address(environ: Mapping[str, str]) -> str | None:
    """'@name' is the abstract namespace, which AF_UNIX spells with a leading NUL."""
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None  # unset, or a vsock address this agent does not need


class SdNotify:
    """Sends service state to systemd; every method returns False when nothing was sent."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._address = _socket_address(os.environ if environ is None else environ)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send KEY=VALUE lines; errors are swallowed because monitoring must not kill metering."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """MONOTONIC_USEC lets systemd (253+, Type=notify-reload) match the reload; older ones ignore it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(*_status(text))


def _status(text: str | None) -> list[str]:
    return [] if text is None else [f"STATUS={text.replace(chr(10), ' ')}"]


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec, as sd_watchdog_enabled advises).

    None when no watchdog is configured or it is meant for another process.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000
