"""Transports: where finished IPFIX messages go (UDP, TCP, RFC 5655 file).

All transports are non-blocking and driven by `tick()` from the caller's thread, so a dead collector
never stalls the meter. Reliable transports (TCP, file) ask their session for the templates whenever
a new connection (or file) starts; UDP sessions refresh templates themselves.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import ipaddress
import logging
import os
import re
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol
from urllib.parse import urlsplit

from agent.logsetup import limited

from .message import restamp

log = logging.getLogger("espmeter.exporter")
RETRY_S = 1.0  # UDP: a collector without a route (or a name that does not resolve) is tried again this often

Clock = Callable[[], float]
# A reliable transport calls this on every new connection; the argument is the sequence number the
# template messages should carry (that of the first message still waiting, or None for "current").
ConnectHook = Callable[[int | None], list[bytes]]
DropHook = Callable[[bytes], None]


@dataclass(slots=True)
class CollectorCounters:
    """Per-collector counters (also the source of the RFC 7011 4.1/4.3 options records)."""

    messages: int = 0
    records: int = 0
    octets: int = 0
    send_errors: int = 0
    not_sent_messages: int = 0
    not_sent_records: int = 0
    not_sent_packets: int = 0
    not_sent_octets: int = 0
    connects: int = 0

    def __getitem__(self, key: str) -> int:
        return getattr(self, key)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def sent(self, message: bytes) -> None:
        self.messages += 1
        self.records += getattr(message, "records", 0)
        self.octets += len(message)

    def not_sent(self, message: bytes) -> None:
        self.not_sent_messages += 1
        self.not_sent_records += getattr(message, "records", 0)
        self.not_sent_packets += getattr(message, "packets", 0)
        self.not_sent_octets += getattr(message, "octets", 0)


class Transport(Protocol):
    """Where one session's messages go. `reliable`: templates once per connection, never refreshed."""

    url: str
    reliable: bool
    counters: CollectorCounters

    def send(self, message: bytes) -> None: ...

    def tick(self) -> None: ...

    def close(self, timeout: float = 5.0) -> None: ...


@dataclass(frozen=True, slots=True)
class CollectorURL:
    scheme: str
    host: str
    port: int
    path: str
    url: str


COLLECTOR_HELP = "expected udp://HOST:PORT, tcp://HOST:PORT or file://PATH"
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def parse_collector(url: str, listen: bool = False) -> CollectorURL:
    """`udp://HOST:PORT`, `tcp://HOST:PORT` (IPv6 as `[::1]`), `file://PATH`: the one URL validator.

    HOST is an address or a syntactically valid name; names are resolved when the transport opens
    (DNS may not be up at boot). `listen` allows port 0 (any free port) for `espmeter collect`.
    """
    bad = f"{url!r} is not a valid collector URL ({COLLECTOR_HELP})"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. a malformed [IPv6] literal
        raise ValueError(f"{url!r} is not a valid collector URL: {exc} ({COLLECTOR_HELP})") from None
    if parts.netloc.count(":") > 1 and "[" not in parts.netloc:
        raise ValueError(f"{url!r}: an IPv6 address needs brackets, e.g. udp://[2001:db8::1]:4739")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: port must be 1-65535 ({COLLECTOR_HELP})") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = url[len("file://"):] if url.startswith("file://") else ""
        if not path:
            raise ValueError(f"{url!r}: file:// needs a path ({COLLECTOR_HELP})")
        return CollectorURL(scheme, "", 0, path, url)
    if scheme not in ("udp", "tcp") or not url.startswith(f"{parts.scheme}://"):
        raise ValueError(bad)
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(bad)
    if port is None:
        raise ValueError(f"{url!r}: missing port ({COLLECTOR_HELP})")
    if not (0 if listen else 1) <= port <= 65535:
        raise ValueError(f"{url!r}: port must be 1-65535 ({COLLECTOR_HELP})")
    _check_host(url, parts.hostname)
    return CollectorURL(scheme, parts.hostname, port, "", url)


def _check_host(url: str, host: str) -> None:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{url!r}: {host!r} is not a valid IPv6 address ({COLLECTOR_HELP})") from None
        return
    with contextlib.suppress(ValueError):
        ipaddress.IPv4Address(host)
        return
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ValueError(f"{url!r}: {host!r} is neither an IP address nor a valid host name")


def _resolve(host: str, port: int, socktype: int) -> tuple[int, tuple]:
    infos = socket.getaddrinfo(host, port, type=socktype)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    return infos[0][0], infos[0][4]


def check_resolvable(url: str) -> None:
    """ValueError unless URL parses and its host resolves now (a one-shot `read` cannot wait for DNS)."""
    target = parse_collector(url)
    if target.scheme == "file":
        return
    try:
        _resolve(target.host, target.port, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ValueError(f"collector {url!r}: cannot resolve {target.host!r}: {exc.strerror}") from None


class UdpTransport:
    """Connected, non-blocking UDP socket: ICMP port unreachable comes back as a send error.

    The socket is made on first use and again every RETRY_S while that fails (no route yet at boot,
    DNS not up): the agent starts and meters anyway, and what could not be sent is counted.
    """

    reliable = False

    def __init__(self, target: CollectorURL, on_drop: DropHook | None = None, *, retry_s: float = RETRY_S,
                 clock: Clock = time.monotonic):
        self.url = target.url
        self.counters = CollectorCounters()
        self._target = target
        self._on_drop = on_drop
        self._retry_s = retry_s
        self._clock = clock
        self._sock: socket.socket | None = None
        self._next_attempt = 0.0
        self._closed = False
        self._unreachable = False  # the last attempt to make the socket failed (logged)

    def _open(self) -> bool:
        if self._sock is not None:
            return True
        if self._closed or self._clock() < self._next_attempt:
            return False
        sock = None
        try:
            family, addr = _resolve(self._target.host, self._target.port, socket.SOCK_DGRAM)
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(addr)  # ENETUNREACH when there is no route yet
        except OSError as exc:
            if sock is not None:
                sock.close()
            self._next_attempt = self._clock() + self._retry_s
            self._unreachable = True
            log.warning("IPFIX collector %s: unreachable: %s (metering goes on; records are counted as not "
                        "sent until it is reachable, tried every %.0f s)", self.url, _reason(exc), self._retry_s,
                        extra=limited(f"IPFIX collector {self.url} unreachable"))
            return False
        self._sock = sock
        if self._unreachable:
            log.info("IPFIX collector %s: reachable, sending (%d messages not sent before)", self.url,
                     self.counters.not_sent_messages)
            self._unreachable = False
        return True

    def send(self, message: bytes) -> None:
        if self._sock is None and not self._open():
            self._fail(message)
            return
        assert self._sock is not None
        try:
            self._sock.send(message)
        except OSError as exc:  # ECONNREFUSED (ICMP), ENOBUFS, EAGAIN...: count it, keep going
            log.warning("IPFIX collector %s: send failed: %s (counting, will keep sending)", self.url, exc,
                        extra=limited(f"IPFIX collector {self.url} send failed"))
            self._fail(message)
            return
        self.counters.sent(message)

    def _fail(self, message: bytes) -> None:
        self.counters.send_errors += 1
        self.counters.not_sent(message)
        if self._on_drop:
            self._on_drop(message)

    def tick(self) -> None:
        self._open()

    def close(self, timeout: float = 5.0) -> None:
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _reason(exc: OSError) -> str:
    """`Network is unreachable`, `Name or service not known`: the errno text without the number."""
    return exc.strerror or str(exc)


class TcpTransport:
    """Non-blocking TCP with exponential reconnect back-off and a bounded buffer of unsent messages.

    Messages that do not fit in the buffer are counted as not sent (notSentFlowTotalCount). A message
    cut by a lost connection is sent again whole on the next one. The export time is set when a
    message is handed to the socket, so no data goes out with an export time before its template's.
    """

    reliable = True

    def __init__(self, target: CollectorURL, on_connect: ConnectHook, on_drop: DropHook | None = None, *,
                 buffer_messages: int = 10000, reconnect_min_s: float = 1.0, reconnect_max_s: float = 60.0,
                 clock: Clock = time.time):
        self.url = target.url
        self.counters = CollectorCounters()
        self._target = target
        self._on_connect = on_connect
        self._on_drop = on_drop
        self._bound = max(1, buffer_messages)
        self._min_s = reconnect_min_s
        self._max_s = max(reconnect_max_s, reconnect_min_s)
        self._clock = clock
        self._sock: socket.socket | None = None
        self._connected = False
        self._greeting: collections.deque[bytes] = collections.deque()  # templates of this connection
        self._pending: collections.deque[bytes] = collections.deque()  # data, bounded
        self._out = b""  # message being written, restamped
        self._offset = 0
        self._backoff = reconnect_min_s
        self._next_attempt = 0.0

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending(self) -> int:
        return len(self._pending)

    def send(self, message: bytes) -> None:
        if len(self._pending) >= self._bound:
            log.warning("IPFIX collector %s: buffer full (%d messages): new records are counted as not sent",
                        self.url, self._bound, extra=limited(f"IPFIX collector {self.url} buffer full"))
            self.counters.not_sent(message)
            if self._on_drop:
                self._on_drop(message)
            return
        self._pending.append(message)
        self._pump()

    def tick(self) -> None:
        if self._sock is None and self._clock() >= self._next_attempt:
            self._connect()
        self._pump()

    def _connect(self) -> None:
        try:
            family, addr = _resolve(self._target.host, self._target.port, socket.SOCK_STREAM)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex(addr)
        except OSError as exc:
            self._failed(exc)
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._failed(OSError(err, os.strerror(err)))
            return
        self._sock = sock
        self._connected = False

    def _failed(self, exc: OSError) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._connected = False
        self._greeting.clear()  # a new connection gets a new greeting
        self._out, self._offset = b"", 0
        self._next_attempt = self._clock() + self._backoff
        log.warning("IPFIX collector %s: %s; reconnecting in %.1fs (%d messages buffered)", self.url,
                    _reason(exc), self._backoff, len(self._pending),
                    extra=limited(f"IPFIX collector {self.url} connection failed"))
        self._backoff = min(self._backoff * 2, self._max_s)

    def _established(self) -> None:
        self._connected = True
        self._backoff = self._min_s
        self.counters.connects += 1
        self._out, self._offset = b"", 0
        first_seq = struct.unpack_from("!I", self._pending[0], 8)[0] if self._pending else None
        self._greeting.extend(self._on_connect(first_seq))
        log.info("IPFIX collector %s: connected", self.url, extra=limited(f"IPFIX collector {self.url} connected"))

    def _peer_closed(self) -> bool:
        """Collectors never talk back: readable means EOF or an error (the listener went away)."""
        assert self._sock is not None
        readable, _, _ = select.select([self._sock], [], [], 0)
        if not readable:
            return False
        try:
            return self._sock.recv(65536) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _pump(self) -> None:
        if self._sock is None:
            return
        if not self._connected:
            _, writable, _ = select.select([], [self._sock], [], 0)
            if not writable:
                return
            err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._failed(OSError(err, os.strerror(err)))
                return
            self._established()
        if self._peer_closed():
            self._failed(OSError(errno.ECONNRESET, "connection closed by collector"))
            return
        while self._greeting or self._pending:
            queue = self._greeting or self._pending
            if not self._out:
                self._out = restamp(queue[0], int(self._clock()))
                self._offset = 0
            try:
                n = self._sock.send(memoryview(self._out)[self._offset:])
            except BlockingIOError:
                return
            except OSError as exc:
                self._failed(exc)
                return
            self._offset += n
            if self._offset < len(self._out):
                return
            self.counters.sent(queue.popleft())
            self._out, self._offset = b"", 0

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is buffered within `timeout` (real time), then count the rest as not sent."""
        deadline = time.monotonic() + timeout
        while (self._pending or self._greeting) and time.monotonic() < deadline:
            self.tick()
            if not (self._pending or self._greeting):
                break
            wait = [self._sock] if self._sock is not None else []
            if wait:
                select.select([], wait, [], 0.05)
            else:
                time.sleep(0.05)
        if self._pending:
            records = sum(getattr(m, "records", 0) for m in self._pending)
            log.warning("IPFIX collector %s: shutdown: %d buffered records (%d messages) not delivered within "
                        "%.1f s: lost", self.url, records, len(self._pending), timeout)
        for message in self._pending:
            self.counters.not_sent(message)
        self._pending.clear()
        self._greeting.clear()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
            self._sock.close()
            self._sock = None
        self._connected = False


class FileTransport:
    """RFC 5655 IPFIX file: messages appended. An unwritable path is logged and retried, never raised."""

    reliable = True

    def __init__(self, target: CollectorURL, on_connect: ConnectHook, on_drop: DropHook | None = None, *,
                 retry_s: float = 60.0, clock: Clock = time.time):
        self.url = target.url
        self.path = target.path
        self.counters = CollectorCounters()
        self._on_connect = on_connect
        self._on_drop = on_drop
        self._retry_s = retry_s
        self._clock = clock
        self._file = None
        self._next_attempt = 0.0
        self._opened = False  # opened once already: a reopen after an error appends without a word

    def _open(self) -> bool:
        if self._file is not None:
            return True
        if self._clock() < self._next_attempt:
            return False
        try:
            self._file = open(self.path, "ab")  # noqa: SIM115 (kept open across calls)
        except OSError as exc:
            self._next_attempt = self._clock() + self._retry_s
            log.error("IPFIX file %s cannot be opened for writing: %s (retrying every %.0fs)",
                      self.path, _reason(exc), self._retry_s, extra=limited(f"IPFIX file {self.path} open failed"))
            return False
        size = self._file.tell()
        if size and not self._opened:
            log.info("IPFIX file %s exists (%d bytes): appending (IPFIX files concatenate)", self.path, size)
        self._opened = True
        self.counters.connects += 1
        for message in self._on_connect(None):
            self._write(message)
        return self._file is not None

    def _write(self, message: bytes) -> bool:
        if self._file is None:
            return False
        try:
            self._file.write(message)
            self._file.flush()
        except OSError as exc:
            log.error("IPFIX file %s: write failed: %s (retrying every %.0fs)", self.path, _reason(exc),
                      self._retry_s, extra=limited(f"IPFIX file {self.path} write failed"))
            self._file.close()
            self._file = None
            self._next_attempt = self._clock() + self._retry_s
            return False
        self.counters.sent(message)
        return True

    def send(self, message: bytes) -> None:
        if not (self._open() and self._write(message)):
            self.counters.send_errors += 1
            self.counters.not_sent(message)
            if self._on_drop:
                self._on_drop(message)

    def tick(self) -> None:
        self._open()

    def close(self, timeout: float = 5.0) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
