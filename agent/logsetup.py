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
    """``2026-12-01T09:30:00.123Z LEVEL name: message`` for a terminal or a file (UTC: no journal adds time)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging API)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


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
    """Configure the ``espmeter`` logger (idempotent: a reload replaces the handler, never adds one).

    The same handler takes the root logger's warnings (libraries, Python warnings) and uncaught
    exceptions, so every line on stderr has the chosen format. Rate limiting (RateLimitFilter)
    keeps its state across a reload."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(fmt, stream, os.environ if environ is None else environ))
    logger = logging.getLogger(LOGGER_NAME)
    kept = next((f for h in logger.handlers for f in h.filters if isinstance(f, RateLimitFilter)), None)
    handler.addFilter(kept or RateLimitFilter(RateLimiter()))
    root = logging.getLogger()
    for target in (logger, root):
        for old in [h for h in target.handlers if target is logger or _limited(h)]:  # root: only ours
            target.removeHandler(old)
        target.addHandler(handler)
    logger.setLevel(_LEVELS[level])
    logger.propagate = False
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    return logger


def _limited(handler: logging.Handler) -> bool:
    return any(isinstance(f, RateLimitFilter) for f in handler.filters)


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger(LOGGER_NAME).critical("uncaught exception: %s", value, exc_info=(kind, value, tb))


# --------------------------------------------------------------------------- rate limiting

RATELIMIT_KEY = "ratelimit_key"
LIMIT_PER_KEY = 1  # lines per key and interval: the first, then one summary per interval with the count
LIMIT_INTERVAL_S = 60.0


def limited(key: str) -> dict[str, str]:
    """``extra=`` of a log call whose line can repeat (a dead collector, a bad packet): see RateLimitFilter."""
    return {RATELIMIT_KEY: key}


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
        limit: int = LIMIT_PER_KEY,
        interval_s: float = LIMIT_INTERVAL_S,
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
        """(key, suppressed, level) of finished windows that suppressed something.

        Such a key stays limited for another interval (the summary was its line of this one);
        a key whose window suppressed nothing is forgotten."""
        now = self._clock()
        result = []
        for key in [k for k, w in self._windows.items() if now - w.start >= self.interval_s]:
            window = self._windows.pop(key)
            if window.suppressed:
                result.append((key, window.suppressed, window.level))
                self._windows[key] = _Window(start=now, admitted=self.limit, level=window.level)
        return result

    def drain(self) -> list[tuple[Hashable, int, int]]:
        """(key, suppressed, level) of every window that suppressed something, finished or not (at exit)."""
        result = [(k, w.suppressed, w.level) for k, w in self._windows.items() if w.suppressed]
        self._windows.clear()
        return result


def suppressed_message(count: int, key: Hashable) -> str:
    return f"suppressed {count} similar message{'s' if count != 1 else ''} ({key})"


class RateLimitFilter(logging.Filter):
    """Handler filter for records logged with ``extra=limited(KEY)``: the one rate limiter of the agent.

    Records without the key pass untouched; an admitted record after a suppressed burst carries the
    summary in its message. :meth:`flush` writes the summaries of bursts that simply stopped.
    """

    def __init__(self, limiter: RateLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, RATELIMIT_KEY, None)
        if key is None:
            return True
        allowed, carried = self.limiter.admit(key, record.levelno)
        if allowed and carried:
            record.msg = f"{record.getMessage()} ({suppressed_message(carried, key)} before this)"
            record.args = None
        return allowed

    def flush(self, handler: logging.Handler, final: bool = False) -> int:
        """Summaries of finished windows (of all windows when `final`); returns the lines written."""
        summaries = self.limiter.drain() if final else self.limiter.expired()
        for key, count, level in summaries:
            record = logging.LogRecord(LOGGER_NAME, level, __file__, 0, suppressed_message(count, key), None, None)
            handler.handle(record)  # record has no key: not limited again
        return len(summaries)


def flush_suppressed(final: bool = False) -> int:
    """Write pending summaries of the agent's log handler: every tick, and with `final` before exit."""
    written = 0
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        for f in handler.filters:
            if isinstance(f, RateLimitFilter):
                written += f.flush(handler, final)
    return written
