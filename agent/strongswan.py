"""strongSwan on this gateway: names and true pairs of its CHILD_SAs, from charon over vici.

A reader thread owns the vici sessions: it connects (retrying every RETRY_S while the socket is
missing or charon is down), takes a snapshot (`list-sas`), follows `child-updown` / `child-rekey` /
`ike-updown`, and takes a new snapshot when the main loop asks about an SA it has not heard of. It
only posts what it read; the main loop applies it (`Vici.apply`), so the packet path never waits for
charon. Each CHILD_SA gives two claims, one per direction, keyed by the SA identity the meter uses
(addresses, NAT-T ports when encapsulated, SPI): its name `IKE_SA/CHILD_SA` and its partner.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import vici

from agent.sa import SA, esp_ident, udp_ident

if TYPE_CHECKING:
    from agent.pairing import Pairer
    from agent.satable import SATable

log = logging.getLogger("espmeter")

RETRY_S = 0.5  # reconnect interval while charon is missing
POLL_S = 0.2  # event wait between checks for questions and for stop
ASK_S = 0.25  # at most one snapshot per this interval for questions about unknown SAs
TIMEOUT_S = 5.0  # charon must answer a request within this
WAIT_S = 30.0  # an unknown SA waits this long for charon to name it (a rekey race), then keeps the heuristic
MAX_WAITING = 10_000  # unknown SA identities remembered (another box's traffic, SPI floods)
REPORT_S = 60.0  # at most one log line per this interval about heuristic pairs charon overruled
EVENTS = ("child-updown", "child-rekey", "ike-updown")


@dataclass(frozen=True, slots=True)
class Claim:
    """What charon says about one SA: its name, its partner's identity and its IKE_SA (unique id)."""

    name: str
    peer: bytes
    ike: str


Claims = dict[bytes, Claim]


def vici_path(uri: str) -> str:
    """`unix:///var/run/charon.vici` -> `/var/run/charon.vici` (the config validates the form)."""
    return uri.removeprefix("unix://")


# -- vici messages -> claims (pure; values are bytes as the binding returns them) ----------------------

def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def child_claims(ike_name: str, ike: Mapping[str, Any], child: Mapping[str, Any], ike_id: str) -> Claims:
    """The two claims of one CHILD_SA; none for AH or a CHILD_SA without SPIs yet."""
    try:
        if _text(child.get("protocol", b"ESP")) != "ESP":
            return {}
        local = ipaddress.ip_address(_text(ike["local-host"])).packed
        remote = ipaddress.ip_address(_text(ike["remote-host"])).packed
        spi_in, spi_out = int(_text(child["spi-in"]), 16), int(_text(child["spi-out"]), 16)
        if _text(child.get("encap", b"no")) == "yes":
            lport, rport = int(_text(ike["local-port"])), int(_text(ike["remote-port"]))
            inbound = udp_ident(remote, local, rport, lport, spi_in)
            outbound = udp_ident(local, remote, lport, rport, spi_out)
        else:
            inbound, outbound = esp_ident(remote, local, spi_in), esp_ident(local, remote, spi_out)
        name = f"{ike_name}/{_text(child['name'])}"
    except (KeyError, ValueError, OverflowError):
        return {}
    return {inbound: Claim(name, outbound, ike_id), outbound: Claim(name, inbound, ike_id)}


def ike_claims(message: Mapping[str, Any], part: str | None = None) -> Claims:
    """Claims of every CHILD_SA in a `list-sa` / `child-updown` message (IKE_SA name -> IKE_SA);
    `part` picks `old` or `new` in the nested CHILD_SAs of a `child-rekey` message."""
    out: Claims = {}
    for ike_name, ike in message.items():
        if not isinstance(ike, Mapping):
            continue
        ike_id = _text(ike.get("uniqueid", b""))
        for child in (ike.get("child-sas") or {}).values():
            if part is not None:
                child = child.get(part) if isinstance(child, Mapping) else None
            if isinstance(child, Mapping):
                out.update(child_claims(ike_name, ike, child, ike_id))
    return out


def _ike_ids(message: Mapping[str, Any]) -> list[str]:
    return [_text(ike.get("uniqueid", b"")) for ike in message.values() if isinstance(ike, Mapping)]


def _is_up(message: Mapping[str, Any]) -> bool:
    return any(isinstance(ike, Mapping) and ike.get("up") == b"yes" for ike in message.values())


# -- the reader thread ------------------------------------------------------------------------------------

def _why(path: str, exc: BaseException) -> str:
    """One operator-readable reason why charon cannot be reached at `path`."""
    if isinstance(exc, FileNotFoundError):
        return "no such socket (is charon running with the vici plugin?)"
    if isinstance(exc, PermissionError):
        return "permission denied (the agent's user needs access to the socket)"
    with contextlib.suppress(OSError):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return "not a socket"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (charon is not running)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"charon did not answer within {TIMEOUT_S:g} s"
    return str(exc) or type(exc).__name__


class ViciReader(threading.Thread):
    """Reads charon in the background; every result goes to `inbox` as (kind, data), the wake-up pipe
    tells the main loop's select()."""

    def __init__(self, uri: str, inbox: deque[tuple[str, Any]], wake: int) -> None:
        super().__init__(name="vici", daemon=True)
        self.uri = uri
        self.path = vici_path(uri)
        self.inbox = inbox
        self.wake = wake
        self.stopping = threading.Event()
        self.asked = threading.Event()
        self.connected = False
        self._complained = False

    def run(self) -> None:
        while not self.stopping.is_set():
            sessions: list[Any] = []
            try:
                self._follow(self._session(sessions), self._session(sessions))
            except Exception as exc:  # anything charon (or a stranger on the socket) does: retry
                self._lost(exc)
            finally:
                for s in sessions:
                    with contextlib.suppress(Exception):
                        s.transport.close()
            self.stopping.wait(RETRY_S)

    def stop(self) -> None:
        self.stopping.set()
        if self.ident is not None:  # started
            self.join(TIMEOUT_S)

    def _session(self, sessions: list[Any]) -> Any:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        session = vici.Session(sock)
        sessions.append(session)
        return session

    def _follow(self, events: Any, queries: Any) -> None:
        """Register for events, then take the snapshot (so no change falls between), then follow."""
        last_ask = 0.0
        stream = events.listen(list(EVENTS), timeout=POLL_S)
        try:
            first = next(stream)  # registration happens on the first step
            self._snapshot(queries)
            self.connected, self._complained = True, False
            log.info("strongSwan vici %s: connected; names and pairs from charon", self.uri)
            for label, message in chain([first], stream):
                if self.stopping.is_set():
                    return
                if label is not None:
                    self._event(label.decode(), message)
                elif self.asked.is_set() and time.monotonic() - last_ask >= ASK_S:
                    self.asked.clear()
                    last_ask = time.monotonic()
                    self._snapshot(queries)
        finally:
            with contextlib.suppress(Exception):
                stream.close()  # unregisters; fails harmlessly when charon has gone

    def _snapshot(self, queries: Any) -> None:
        claims: Claims = {}
        for message in queries.list_sas():
            claims.update(ike_claims(message))
        self._post("snapshot", claims)

    def _event(self, kind: str, message: Mapping[str, Any]) -> None:
        if kind == "child-rekey":
            self._post("remove", list(ike_claims(message, "old")))
            self._post("add", ike_claims(message, "new"))
        elif kind == "child-updown":
            claims = ike_claims(message)
            if _is_up(message):
                self._post("add", claims)
            else:
                self._post("remove", list(claims))
        elif kind == "ike-updown" and not _is_up(message):
            self._post("remove_ike", _ike_ids(message))

    def _post(self, kind: str, data: Any) -> None:
        self.inbox.append((kind, data))
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake, b"\0")

    def _lost(self, exc: BaseException) -> None:
        if self.connected and isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
            reason = "charon closed the connection"
        else:
            reason = _why(self.path, exc)
        if self.connected:
            log.warning("strongSwan vici %s: connection lost (%s); pairing by heuristic until charon answers "
                        "again (retrying every %g s)", self.uri, reason, RETRY_S)
        elif not self._complained:
            log.warning("strongSwan vici %s: %s; pairing by heuristic until charon answers (retrying every %g s)",
                        self.uri, reason, RETRY_S)
        else:
            log.debug("strongSwan vici %s: %s", self.uri, reason)
        self.connected, self._complained = False, True


# -- the main loop's side: the authority the pairer consults --------------------------------------------

class Vici:
    """Claims as last read from charon, and the SAs that appeared before charon named them."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.claims: Claims = {}
        # identity -> (since, SAs), oldest first; ordered: the oldest of a plain dict is found by skipping every
        # entry deleted before it (an SPI flood unknown to charon: ~7 us per new SA at MAX_WAITING)
        self.waiting: OrderedDict[bytes, tuple[float, list[SA]]] = OrderedDict()
        self.inbox: deque[tuple[str, Any]] = deque()
        self._rd, self._wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.reader = ViciReader(uri, self.inbox, self._wr)
        self.table: SATable | None = None
        self.pairer: Pairer | None = None
        self.reported = 0  # disagreements already logged
        self.next_report = 0.0

    def start(self, table: SATable) -> None:
        """Become the pairing authority of `table` and start reading charon."""
        self.table, self.pairer = table, table.pairer
        table.pairer.authority = self
        self.reader.start()

    def close(self) -> None:
        self.reader.stop()
        if self.pairer is not None and self.pairer.authority is self:
            self.pairer.authority = None
        if not self.reader.is_alive():  # a reader stuck in a request keeps its pipe (the fd is not reused)
            for fd in (self._rd, self._wr):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def fileno(self) -> int:
        return self._rd

    @property
    def connected(self) -> bool:
        return self.reader.connected

    # -- called by the Pairer on the packet path (new SAs only): a dict lookup, never a wait ------------
    def claim(self, sa: SA) -> Claim | None:
        claim = self.claims.get(sa.ident)
        if claim is None:
            entry = self.waiting.get(sa.ident)
            if entry is None:
                if len(self.waiting) >= MAX_WAITING:
                    del self.waiting[next(iter(self.waiting))]
                self.waiting[sa.ident] = (time.monotonic(), [sa])
                self.reader.asked.set()
            elif sa not in entry[1]:
                entry[1].append(sa)
        return claim

    # -- called by the main loop on every turn --------------------------------------------------------------
    def apply(self) -> None:
        """Apply what the reader posted: charon's word wins over the heuristic for the SAs it names."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._rd, 4096):
                pass
        inbox = self.inbox
        while inbox:
            kind, data = inbox.popleft()
            if kind == "snapshot":
                self.claims = data
                self._resolve(data)
            elif kind == "add":
                self.claims.update(data)
                self._resolve(data)
            elif kind == "remove":
                for ident in data:
                    self.claims.pop(ident, None)
            elif kind == "remove_ike":
                gone = set(data)
                self.claims = {k: c for k, c in self.claims.items() if c.ike not in gone}
        now = time.monotonic()
        if self.reader.connected:  # while charon is away, SAs wait for it (bounded by MAX_WAITING)
            self._expire(now)
        self._report(now)

    def _resolve(self, claims: Claims) -> None:
        """SAs seen before charon named them get their name and, if the heuristic chose wrong, their pair."""
        if not self.waiting or self.pairer is None or self.table is None:
            return
        sas = self.table.sas
        small, large = (self.waiting, claims) if len(self.waiting) < len(claims) else (claims, self.waiting)
        for ident in [i for i in small if i in large]:
            for sa in self.waiting.pop(ident)[1]:
                if sas.get(sa.key) is sa:
                    self.pairer.adopt(sa, claims[ident])

    def _report(self, now: float) -> None:
        """The disagreement count goes to the log (at most every REPORT_S): where the heuristic paired
        differently from charon, charon won."""
        count = self.pairer.disagreements if self.pairer is not None else 0
        if count > self.reported and now >= self.next_report:
            log.info("strongSwan vici %s: %d heuristic pairing(s) overruled by charon (%d since start)",
                     self.uri, count - self.reported, count)
            self.reported, self.next_report = count, now + REPORT_S

    def _expire(self, now: float) -> None:
        waiting = self.waiting
        while waiting:
            ident, (since, _) = next(iter(waiting.items()))
            if now - since < WAIT_S:
                return
            del waiting[ident]
