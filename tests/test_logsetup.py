"""Log formats (journald prefix, plain, JSON) and per-key rate limiting with a fake clock."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.logsetup import (
    RateLimiter,
    RateLimitFilter,
    flush_suppressed,
    limited,
    setup_logging,
    stderr_is_journal,
    syslog_priority,
)


@pytest.fixture(autouse=True)
def _restore_espmeter_logger() -> Iterator[None]:
    """setup_logging reconfigures the shared 'espmeter' logger; other tests' caplog must still see it."""
    logger, root = logging.getLogger("espmeter"), logging.getLogger()
    saved = (list(logger.handlers), logger.level, logger.propagate, list(root.handlers), root.level, sys.excepthook)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
    root.handlers[:] = saved[3]
    root.setLevel(saved[4])
    sys.excepthook = saved[5]
    logging.captureWarnings(False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _journal_env(fh: io.TextIOBase) -> dict[str, str]:
    st = os.fstat(fh.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_plain_text_when_not_journal() -> None:
    out = io.StringIO()
    log = setup_logging("info", "text", stream=out, environ={})
    log.getChild("capture").warning("eth0: %d drops", 5)
    log.debug("hidden")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING espmeter.capture: eth0: 5 drops\n",
                        out.getvalue())


def test_journal_prefix_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "journal", "w+") as fh:
        log = setup_logging("debug", "text", stream=fh, environ=_journal_env(fh))
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("two\nlines")
        log.critical("c")
        fh.seek(0)
        assert fh.read().splitlines() == [
            "<7>espmeter: d",
            "<6>espmeter: i",
            "<4>espmeter: w",
            "<3>espmeter: two",
            "<3>lines",
            "<2>espmeter: c",
        ]


def test_inherited_journal_stream_of_another_fd_is_ignored(tmp_path: Path) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        assert stderr_is_journal(a, _journal_env(a))
        assert not stderr_is_journal(b, _journal_env(a))
        assert not stderr_is_journal(a, {"JOURNAL_STREAM": "junk"})
        assert not stderr_is_journal(io.StringIO(), _journal_env(a))


def test_json_lines() -> None:
    out = io.StringIO()
    log = setup_logging("info", "json", stream=out, environ={})
    log.info("sa %s up", "0x1234", extra={"spi": 0x1234})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "info" and first["logger"] == "espmeter"
    assert first["msg"] == "sa 0x1234 up" and first["spi"] == 0x1234 and isinstance(first["ts"], float)
    assert second["level"] == "error" and "RuntimeError: boom" in second["exc"]


def test_setup_is_idempotent() -> None:
    out = io.StringIO()
    setup_logging("info", "text", stream=io.StringIO(), environ={})
    log = setup_logging("warning", "text", stream=out, environ={})
    assert len(log.handlers) == 1 and [h for h in logging.getLogger().handlers if h.filters] == log.handlers
    log.info("no")
    log.warning("yes")
    assert out.getvalue().split(" ", 1)[1] == "WARNING espmeter: yes\n"


def test_syslog_priority() -> None:
    assert [syslog_priority(n) for n in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]


def test_rate_limiter_window_and_carry() -> None:
    clock = FakeClock()
    rl = RateLimiter(limit=3, interval_s=10, clock=clock)
    assert [rl.admit("k") for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert rl.admit("other") == (True, 0)  # keys are independent
    clock.now += 9.9
    assert rl.admit("k") == (False, 0)
    clock.now += 0.1
    assert rl.admit("k") == (True, 3)  # new window reports the 3 suppressed before
    assert rl.admit("k") == (True, 0)


def test_rate_limiter_expired_summaries() -> None:
    clock = FakeClock()
    rl = RateLimiter(limit=1, interval_s=5, clock=clock)
    for _ in range(1235):
        rl.admit("bad-spi", logging.WARNING)
    rl.admit("quiet")
    assert rl.expired() == []
    clock.now += 5
    assert rl.expired() == [("bad-spi", 1234, logging.WARNING)]
    assert rl.expired() == []
    assert rl.admit("bad-spi") == (False, 0)  # the summary was this interval's line
    assert rl.admit("quiet") == (True, 0)  # nothing was suppressed: forgotten, starts afresh
    clock.now += 5
    assert rl.expired() == [("bad-spi", 1, logging.WARNING)]
    assert rl.drain() == [] and rl.admit("quiet") == (True, 0)
    rl.admit("quiet")
    assert rl.drain() == [("quiet", 1, logging.WARNING)]


def test_rate_limiter_bounds_keys() -> None:
    rl = RateLimiter(limit=1, interval_s=5, clock=FakeClock(), max_keys=2)
    for key in ("a", "b", "c"):
        rl.admit(key)
    assert rl.admit("a") == (True, 0)  # "a" was evicted, so it starts afresh
    with pytest.raises(ValueError):
        RateLimiter(limit=0)


def test_one_limiter_for_the_agent_first_line_then_one_summary_a_minute() -> None:
    """setup_logging installs the limiter: a dead collector logs its first failure, then one summary
    per interval with the count, and a final summary at exit; unrelated lines pass."""
    out = io.StringIO()
    log = setup_logging("info", "text", stream=out, environ={})
    clock = FakeClock()
    log.handlers[0].filters[0].limiter._clock = clock
    child = log.getChild("exporter")
    for _ in range(1000):
        child.warning("send failed", extra=limited("udp send"))
    log.warning("unrelated")
    assert flush_suppressed() == 0
    clock.now += 60
    assert flush_suppressed() == 1
    for _ in range(5):
        child.warning("send failed", extra=limited("udp send"))
    assert flush_suppressed(final=True) == 1
    setup_logging("info", "json", stream=out, environ={})  # a reload keeps the limiter's state
    assert logging.getLogger("espmeter").handlers[0].filters[0].limiter._clock is clock
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "WARNING espmeter.exporter: send failed",
        "WARNING espmeter: unrelated",
        "WARNING espmeter: suppressed 999 similar messages (udp send)",
        "WARNING espmeter: suppressed 5 similar messages (udp send)",
    ]


def test_json_format_covers_library_warnings_and_uncaught_exceptions() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out, environ={})
    logging.getLogger("pyroute2").warning("netlink hiccup")
    try:
        raise OSError("boom")
    except OSError:
        sys.excepthook(*sys.exc_info())
    lib, crash = (json.loads(line) for line in out.getvalue().splitlines())
    assert lib["logger"] == "pyroute2" and lib["msg"] == "netlink hiccup"
    assert crash["level"] == "critical" and "OSError: boom" in crash["exc"]


def test_rate_limit_filter() -> None:
    out = io.StringIO()
    log = setup_logging("info", "text", stream=out, environ={})
    clock = FakeClock()
    log.handlers[0].filters[:] = [RateLimitFilter(RateLimiter(limit=1, interval_s=10, clock=clock))]
    for i in range(4):
        log.warning("bad packet %d", i, extra=limited("bad"))
    log.warning("unrelated")
    clock.now += 10
    log.warning("bad packet %d", 9, extra=limited("bad"))
    assert [line.split(" ", 1)[1] for line in out.getvalue().splitlines()] == [
        "WARNING espmeter: bad packet 0",
        "WARNING espmeter: unrelated",
        "WARNING espmeter: bad packet 9 (suppressed 3 similar messages (bad) before this)",
    ]
