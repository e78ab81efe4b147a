"""Logging to stderr that journald understands, plus rate limiting for per-packet problems.

Under systemd, stderr is a journal stream ($JOURNAL_STREAM): a ``<N>`` prefix sets
the syslog priority and journald adds the timestamp. One malformed packet per
microsecond must not become one log line per microsecond, hence :class:`RateLimiter`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

LOGGER_NAME = "espmeter"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def syslog_priority(levelno: int) -> int:
    """sd-daemon(3) priorities: 7 debug, 6 info, 4 warning, 3 error, 2 critical."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>name: message``; continuation lines get the prefix too so journald keeps the priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(prefix + line for line in text.splitlines())


class PlainFormatter(logging.Formatter):
    """``level name: message`` for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")


class JsonFormatter(logging.Formatter):
    """One JSON object per line for log shippers; extra ``ratelimit_key`` etc. are kept."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in self._STANDARD:
                entry[key] = value if isinstance(value, int | float | str | bool | None) else str(value)
        return json.dumps(entry, ensure_ascii=False)


def stderr_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """$JOURNAL_STREAM is inherited by children too, so compare it with the stream's own dev:ino."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def make_formatter(fmt: str, stream: TextIO, environ: Mapping[str, str]) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt != "text":
        raise ValueError(f"unknown log format {fmt!r}")
    return JournalFormatter() if stderr_is_journal(stream, environ) else PlainFormatter()


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Logger:
    """Configure the ``espmeter`` logger (idempotent: a reload replaces the handler, never adds one)."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(fmt, stream, os.environ if environ is None else environ))
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(_LEVELS[level])
    logger.propagate = False
    return logger


# --------------------------------------------------------------------------- rate limiting


@dataclass
class _Window:
    start: float
    admitted: int = 0
    suppressed: int = 0
    level: int = logging.WARNING


class RateLimiter:
    """At most LIMIT events per INTERVAL_S per key; counts the rest so they can be summarised.

    Keys are bounded (MAX_KEYS, oldest dropped) because keys may come from packets.
    """

    def __init__(
        self,
        limit: int = 10,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        if limit < 1 or interval_s <= 0 or max_keys < 1:
            raise ValueError("limit and max_keys must be >= 1, interval_s > 0")
        self.limit, self.interval_s, self.max_keys = limit, interval_s, max_keys
        self._clock = clock
        self._windows: dict[Hashable, _Window] = {}

    def admit(self, key: Hashable, level: int = logging.WARNING) -> tuple[bool, int]:
        """(may log now, suppressed count of KEY's previous window to report first)."""
        now = self._clock()
        window = self._windows.get(key)
        carried = 0
        if window is None or now - window.start >= self.interval_s:
            carried = window.suppressed if window else 0
            window = self._open(key, now)
        window.level = level
        if window.admitted < self.limit:
            window.admitted += 1
            return True, carried
        window.suppressed += 1
        return False, carried

    def _open(self, key: Hashable, now: float) -> _Window:
        self._windows.pop(key, None)
        while len(self._windows) >= self.max_keys:
            del self._windows[next(iter(self._windows))]
        window = self._windows[key] = _Window(start=now)
        return window

    def expired(self) -> list[tuple[Hashable, int, int]]:
        """(key, suppressed, level) of finished windows that suppressed something; forgets them."""
        now = self._clock()
        done = [k for k, w in self._windows.items() if now - w.start >= self.interval_s]
        result = []
        for key in done:
            window = self._windows.pop(key)
            if window.suppressed:
                result.append((key, window.suppressed, window.level))
        return result


def suppressed_message(count: int, key: Hashable) -> str:
    return f"suppressed {count} similar message{'s' if count != 1 else ''} ({key})"


class RateLimitedLogger:
    """Wraps a Logger for per-packet problems: ``rl.warning(key, msg, *args)``.

    Call :meth:`flush` periodically (e.g. each stats interval) so a burst that
    simply stops still gets its summary line.
    """

    def __init__(self, logger: logging.Logger, limiter: RateLimiter) -> None:
        self.logger, self.limiter = logger, limiter

    def log(self, level: int, key: Hashable, msg: str, *args: object) -> bool:
        """True when the message was emitted."""
        if not self.logger.isEnabledFor(level):
            return False
        allowed, carried = self.limiter.admit(key, level)
        if carried:
            self.logger.log(level, suppressed_message(carried, key), extra={"limited_key": str(key)})
        if allowed:
            self.logger.log(level, msg, *args, extra={"limited_key": str(key)})
        return allowed

    def debug(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.DEBUG, key, msg, *args)

    def info(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, msg, *args)

    def flush(self) -> int:
        """Emit summaries of finished windows; returns how many lines were written."""
        expired = self.limiter.expired()
        for key, count, level in expired:
            self.logger.log(level, suppressed_message(count, key), extra={"limited_key": str(key)})
        return len(expired)


class RateLimitFilter(logging.Filter):
    """Handler/logger filter for records logged with ``extra={"ratelimit_key": KEY}``.

    Records without the key pass untouched; an admitted record after a suppressed
    burst carries the summary in its message.
    """

    def __init__(self, limiter: RateLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, "ratelimit_key", None)
        if key is None:
            return True
        allowed, carried = self.limiter.admit(key, record.levelno)
        if allowed and carried:
            record.msg = f"{record.getMessage()} ({suppressed_message(carried, key)} before this)"
            record.args = None
        return allowed
