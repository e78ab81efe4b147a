"""Live capture on router interfaces: pcapy-ng AF_PACKET handles, opened and reopened as links come and go.

A direction of `both` opens one handle per direction, so every packet is known as received
(ingressInterface) or sent (egressInterface); each handle's kernel filter takes only its direction
(agent.sockfilter), so a packet is copied into one ring. Handles are non-blocking and selected on getfd():
with the libpcap in the pcapy-ng wheel a blocking next_batch() never returns on an idle link.
pyroute2 link events reopen a capture as soon as its link is back; a slow retry covers the rest.

Each interface has a capture state (`CAPTURING`, `MISSING`, `DOWN`, `NO_PERMISSION`, `FAILED`), logged
once when it changes and shown in sd_notify STATUS= and the statistics line: libpcap's activate()
result says why a capture cannot start (pcapy-ng returns it instead of raising).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import pcapy
from pyroute2 import IPRoute, IPRSocket
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

from agent.capture import BATCH, Batch, CaptureSettings, build_filter
from agent.sockfilter import filter_direction

log = logging.getLogger("espmeter.capture")

_DIRECTIONS = {"in": [("in", pcapy.PCAP_D_IN)], "out": [("out", pcapy.PCAP_D_OUT)],
               "both": [("in", pcapy.PCAP_D_IN), ("out", pcapy.PCAP_D_OUT)]}
BLOCK_TIMEOUT_MS = 100  # libpcap's timeout: the kernel hands over a partly filled ring block after it
CHUNK = 2048  # frames metered between two reads of the ring while it is behind (~8 ms under an SPI flood)
BACKLOG_BYTES = 64 << 20  # frames read ahead of the meter, at most; beyond, the ring holds (and drops)
IFF_UP = 0x1

CAPTURING, MISSING, DOWN, NO_PERMISSION, FAILED = "capturing", "missing", "down", "no-permission", "failed"
# pcap_activate() results (pcap/pcap.h) that name a state; other negative results are FAILED
_ACTIVATE_STATES = {-5: MISSING, -8: NO_PERMISSION, -9: DOWN}  # NO_SUCH_DEVICE, PERM_DENIED, IFACE_NOT_UP


@dataclass(slots=True)
class Handle:
    ifname: str
    ifindex: int
    direction: str
    pcap: object
    linktype: int
    fd: int
    drops: int = 0  # last kernel drop count seen (ps_drop + ps_ifdrop)


@dataclass(slots=True)
class InterfaceCapture:
    name: str
    direction: str  # in / out / both
    handles: list[Handle] = field(default_factory=list)
    errors: int = 0
    state: str = ""  # one of CAPTURING, MISSING, DOWN, NO_PERMISSION, FAILED ("" before the first try)
    detail: str = ""  # FAILED: libpcap's message
    frames: int = 0  # captured since start (over reopenings)
    dropped: int = 0  # kernel drops since start (over reopenings)


class LiveCapture:
    """All configured interfaces; `fds()` for select(), `read(fd)` for the batches of one handle."""

    def __init__(self, interfaces: list[tuple[str, str]], settings: CaptureSettings) -> None:
        self.settings = settings
        self.interfaces = {name: InterfaceCapture(name, direction) for name, direction in interfaces}
        self.by_fd: dict[int, Handle] = {}
        self.ipr = IPRoute()
        self.drops = 0
        self.backlog = False  # the last read() left frames in its ring, or read ahead
        self.queued: dict[int, deque[Batch]] = {}  # per handle (fd): read from its ring, not metered yet
        self.head: dict[int, int] = {}  # per handle (fd): frames of its first queued batch metered already
        self.open_missing()

    # -- opening -------------------------------------------------------------------------------
    def open_missing(self) -> None:
        for ic in self.interfaces.values():
            if not ic.handles:
                self._open(ic)

    def _open(self, ic: InterfaceCapture) -> None:
        link = self._link(ic.name)
        if link is None:
            return self._set(ic, MISSING)
        ifindex, up = link
        if not up:
            return self._set(ic, DOWN)
        s = self.settings
        handles: list[Handle] = []
        state, detail = CAPTURING, f"ifindex {ifindex}, direction {ic.direction}"
        try:
            for label, pcap_dir in _DIRECTIONS[ic.direction]:
                p = pcapy.create(ic.name)
                p.set_snaplen(s.snaplen)
                p.set_buffer_size(s.buffer_size_mb << 20)
                p.set_promisc(0)
                p.set_timeout(BLOCK_TIMEOUT_MS)
                code = p.activate()
                if code < 0:
                    p.close()
                    state = _ACTIVATE_STATES.get(code, FAILED)
                    detail = f"pcap_activate error {code}" if state == FAILED else ""
                    break
                p.setdirection(pcap_dir)
                p.setfilter(build_filter(s.user_filter, p.datalink()))
                if not filter_direction(p.getfd(), pcap_dir == pcapy.PCAP_D_OUT):
                    log.info("%s: direction %s filtered by libpcap after the kernel copy", ic.name, label)
                p.setnonblock(1)
                handles.append(Handle(ic.name, ifindex, label, p, p.datalink(), p.getfd()))
        except pcapy.PcapError as e:
            state, detail = FAILED, str(e)
        if state != CAPTURING:
            ic.errors += 1
            for h in handles:
                h.pcap.close()
            return self._set(ic, state, detail)
        ic.handles = handles
        for h in handles:
            self.by_fd[h.fd] = h
        self._set(ic, state, detail)

    def _link(self, name: str) -> tuple[int, bool] | None:
        """(ifindex, administratively up) of NAME, or None when there is no such link."""
        try:
            msg = self.ipr.link("get", ifname=name)[0]
        except NetlinkError:
            return None
        return msg["index"], bool(msg["flags"] & IFF_UP)

    def _set(self, ic: InterfaceCapture, state: str, detail: str = "") -> None:
        """Log the interface's state once, and again when it changes."""
        if (state, detail) == (ic.state, ic.detail):
            return
        ic.state, ic.detail = state, detail
        if state == CAPTURING:
            log.info("capturing on %s (%s)", ic.name, detail)
        elif state == MISSING:
            log.warning("interface %s does not exist (waiting for it)", ic.name)
        elif state == DOWN:
            log.warning("%s is down (waiting for it to come up)", ic.name)
        elif state == NO_PERMISSION:
            log.warning("cannot capture on %s: permission denied: needs CAP_NET_RAW", ic.name)
        else:
            log.warning("cannot capture on %s: %s (will retry)", ic.name, detail)

    def link_changed(self, name: str) -> list[Batch]:
        """A netlink event for NAME: close a capture whose link went down or away, open one that came back.
        Returns what the rings of a capture it closes still held, to be metered first."""
        ic = self.interfaces.get(name)
        if ic is None:
            return []
        if not ic.handles:
            self._open(ic)
            return []
        link = self._link(name)
        if link is not None and link[1]:
            return []
        held = list(self.remaining(name))
        if ic.handles:  # (a read error may have closed it already, and said why)
            self.close_interface(name)
            self._set(ic, MISSING if link is None else DOWN)
        return held

    def states(self) -> dict[str, str]:
        """Capture state per configured interface."""
        return {name: ic.state for name, ic in self.interfaces.items()}

    def close_interface(self, name: str) -> None:
        ic = self.interfaces.get(name)
        if ic is None:
            return
        for h in ic.handles:
            self.by_fd.pop(h.fd, None)
            self.queued.pop(h.fd, None)
            self.head.pop(h.fd, None)
            with contextlib.suppress(pcapy.PcapError):
                h.pcap.close()
        ic.handles = []

    # -- reading -------------------------------------------------------------------------------
    def fds(self) -> list[int]:
        return list(self.by_fd)

    def pending(self) -> list[int]:
        """The handles (fds) with frames read from their ring and not metered yet: to be read at once."""
        return [fd for fd, queue in self.queued.items() if queue]

    def read(self, fd: int, ring: bool = True) -> Iterator[Batch]:
        """The next frames of one handle, oldest first, in chunks of at most CHUNK frames, about BATCH per
        call (a wake-up); a handle error closes its interface. `ring=False`: only what was read ahead,
        all of it.

        The ring is read ahead of the metering: before each chunk, what the ring holds is copied out (a
        copy costs about 1 % of metering it), up to BACKLOG_BYTES waiting here. So while the meter is
        slower than the link (a CPU shared with other work: bench/flood.py), the ring is emptied every
        CHUNK frames and the backlog waits in memory, not in the ring, which drops what it cannot hold.

        `backlog` says, once the iteration ends, whether frames older than the wake-up may be left: in
        the ring (a bound stopped the reads) or read ahead."""
        h = self.by_fd.get(fd)
        if h is None:
            return
        queue = self.queued.setdefault(fd, deque())
        head = self.head.pop(fd, 0)  # frames of queue[0] yielded already (a chunk is a copy of its records only)
        taken = 0  # frames yielded
        failed = capped = False
        try:
            while taken < BATCH or failed or not ring:
                held = sum(len(b.buf) for b in queue)
                while ring and not failed and held < BACKLOG_BYTES:  # all the ring holds: a block a read
                    got, failed = self._read_ring(h, queue)
                    if not got:
                        break
                    held += len(queue[-1].buf)
                capped = held >= BACKLOG_BYTES
                if not queue:
                    break
                batch, start = queue[0], head
                head += CHUNK
                if 16 * head >= len(batch.meta):
                    queue.popleft()
                    head = 0
                if start or head:
                    batch = Batch(batch.buf, batch.meta[16 * start:16 * head or None], h.linktype, h.ifindex,
                                  h.direction)
                taken += len(batch.meta) // 16
                yield batch
        finally:
            if queue and self.queued.get(fd) is queue:  # (not a handle that failed and closed)
                self.head[fd] = head
            self.backlog = capped or bool(queue)

    def _read_ring(self, h: Handle, queue: deque[Batch]) -> tuple[bool, bool]:
        """One read of the ring onto `queue`: (frames read, the handle failed: what it held is queued)."""
        try:
            buf, meta = h.pcap.next_batch(BATCH)
        except pcapy.PcapError as e:  # e.g. "The interface went down": reopening says why
            held = self._held(h)
            ic = self.interfaces[h.ifname]
            ic.errors += 1
            self.close_interface(h.ifname)
            self._open(ic)
            if ic.state == CAPTURING:
                log.warning("capture on %s failed: %s (reopened)", h.ifname, e)
            for buf, meta in held:
                ic.frames += len(meta) // 16
                queue.append(Batch(buf, meta, h.linktype, h.ifindex, h.direction))
            return False, True
        if not meta:
            return False, False
        self.interfaces[h.ifname].frames += len(meta) // 16
        queue.append(Batch(buf, meta, h.linktype, h.ifindex, h.direction))
        return True, False

    @staticmethod
    def _held(h: Handle) -> list[tuple[bytes, bytes]]:
        """What a failed handle's ring still holds: libpcap reports a link that went down before the
        kernel hands over the partly filled block of its last packets (after the block timeout)."""
        time.sleep(2 * BLOCK_TIMEOUT_MS / 1000)
        held = []
        with contextlib.suppress(pcapy.PcapError):
            while (batch := h.pcap.next_batch(BATCH))[1]:
                held.append(batch)
        return held

    def remaining(self, name: str | None = None) -> Iterator[Batch]:
        """What was read ahead and what every ring (of interface NAME) holds now, its partly filled blocks
        included (read once the kernel hands them over): before the handles close, so that the last packets
        before SIGTERM, a reload or a link going down are metered."""
        time.sleep(2 * BLOCK_TIMEOUT_MS / 1000)
        handles = self.interfaces[name].handles if name is not None else [h for ic in self.interfaces.values()
                                                                           for h in ic.handles]
        for h in list(handles):
            yield from self.read(h.fd)
            yield from self.read(h.fd, ring=False)

    def poll_drops(self) -> int:
        """Kernel and interface drops over all handles since start (libpcap stats are cumulative)."""
        for ic in self.interfaces.values():
            for h in ic.handles:
                try:
                    _, drop, ifdrop = h.pcap.stats()
                except pcapy.PcapError:
                    continue
                now = drop + ifdrop
                if now > h.drops:
                    self.drops += now - h.drops
                    ic.dropped += now - h.drops
                    h.drops = now
        return self.drops

    def local_addresses(self) -> set[bytes]:
        """This box's own addresses: SAs sent from them have no measurable loss here."""
        addrs = set()
        for msg in self.ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS")
            if addr:
                family = socket.AF_INET6 if ":" in addr else socket.AF_INET
                addrs.add(socket.inet_pton(family, addr))
        return addrs

    def close(self) -> None:
        for name in list(self.interfaces):
            self.close_interface(name)
        self.ipr.close()


class LinkMonitor:
    """Netlink link and address events (pyroute2 IPRSocket, selectable): what changed since last read."""

    def __init__(self) -> None:
        self.sock = IPRSocket()
        self.sock.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)

    def fileno(self) -> int:
        return self.sock.fileno()

    def events(self) -> tuple[set[str], set[str], bool]:
        """(links new or changed, links gone, addresses changed), draining what is queued."""
        up: set[str] = set()
        gone: set[str] = set()
        addr_changed = False
        while select.select([self.sock], [], [], 0)[0]:
            try:
                messages = self.sock.get()
            except OSError:
                break
            for msg in messages:
                event = msg.get("event")
                if event in ("RTM_NEWADDR", "RTM_DELADDR"):
                    addr_changed = True
                    continue
                name = msg.get_attr("IFLA_IFNAME")
                if name and event == "RTM_DELLINK":
                    gone.add(name)
                    up.discard(name)
                elif name and event == "RTM_NEWLINK":
                    up.add(name)
        return up, gone, addr_changed

    def close(self) -> None:
        self.sock.close()
