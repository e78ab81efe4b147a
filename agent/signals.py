"""Signal handling in the ExaBGP style: handlers only record an event; the main loop acts on it.

Doing real work inside a handler (reloading, flushing exports) would run it at an
arbitrary bytecode of the packet loop. Instead handlers add to a pending set and
``signal.set_wakeup_fd`` writes a byte to a pipe, so a main loop blocked in
select() on :meth:`Signals.fileno` wakes at once.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

EVENTS: dict[signal.Signals, str] = {
    signal.SIGHUP: "reload",
    signal.SIGTERM: "stop",
    signal.SIGINT: "stop",
    signal.SIGUSR1: "dump",
}


class Signals:
    """Pending-event flags for SIGHUP (reload), SIGTERM/SIGINT (stop) and SIGUSR1 (dump)."""

    def __init__(self) -> None:
        self._pending: set[str] = set()
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous: dict[signal.Signals, Any] = {}
        self._previous_wakeup: int | None = None

    def install(self) -> None:
        """Must run in the main thread (a Python rule for signal handlers)."""
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in EVENTS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self._pending.add(EVENTS[signal.Signals(signum)])

    def fileno(self) -> int:
        """Readable when a signal arrived; select()/poll() on it."""
        return self._read_fd

    def take(self) -> set[str]:
        """Pending events since the last call (a handler firing meanwhile lands in the next set)."""
        self._drain()
        pending, self._pending = self._pending, set()
        return pending

    def _drain(self) -> None:
        try:
            while os.read(self._read_fd, 512):
                pass
        except BlockingIOError:
            pass

    def uninstall(self) -> None:
        """Restore the previous handlers and wakeup fd, e.g. before exit or in tests."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._previous_wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            self._previous_wakeup = None

    def close(self) -> None:
        self.uninstall()
        os.close(self._read_fd)
        os.close(self._write_fd)

    def __enter__(self) -> Signals:
        self.install()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
