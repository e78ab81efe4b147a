"""Real signals to this process: flags are set, the wakeup fd becomes readable at once."""

from __future__ import annotations

import os
import select
import signal
import threading
import time

import pytest

from agent.signals import Signals


def _wait_readable(fd: int, timeout: float = 2.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


@pytest.mark.parametrize(
    ("signum", "event"),
    [
        (signal.SIGHUP, "reload"),
        (signal.SIGTERM, "stop"),
        (signal.SIGINT, "stop"),
        (signal.SIGUSR1, "dump"),
    ],
)
def test_signal_sets_flag_and_wakes(signum: signal.Signals, event: str) -> None:
    with Signals() as sig:
        assert sig.take() == set()
        os.kill(os.getpid(), signum)
        assert _wait_readable(sig.fileno())
        assert sig.take() == {event}
        assert sig.take() == set()
        assert not _wait_readable(sig.fileno(), 0)


def test_several_signals_coalesce() -> None:
    with Signals() as sig:
        for signum in (signal.SIGHUP, signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM):
            os.kill(os.getpid(), signum)
        assert sig.take() == {"reload", "dump", "stop"}


def test_select_wakes_promptly_from_another_thread() -> None:
    """A signal sent while the main loop sleeps in select() ends the wait long before its timeout."""
    with Signals() as sig:
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGHUP))
        start = time.monotonic()
        timer.start()
        readable = _wait_readable(sig.fileno(), 10.0)
        elapsed = time.monotonic() - start
        timer.join()
        assert readable and elapsed < 5.0
        assert sig.take() == {"reload"}


def test_uninstall_restores_previous_handlers() -> None:
    before = signal.getsignal(signal.SIGHUP)
    previous_wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(previous_wakeup)
    sig = Signals()
    sig.install()
    assert signal.getsignal(signal.SIGHUP) != before
    sig.close()
    assert signal.getsignal(signal.SIGHUP) == before
    assert signal.set_wakeup_fd(previous_wakeup) == previous_wakeup
