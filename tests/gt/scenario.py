"""Scenario builder: describe SAs and perturbations, get a capture plus its exact expected result.

The expected values are bookkeeping over what the builder itself wrote (which numbers it dropped,
duplicated, delayed...), not the output of a tracker.  Perturbations that the contract would leave
ambiguous (a "reordered" packet outside the window, a late packet in the restart zone...) are
refused with `AmbiguousScenario` instead of guessed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from . import frames as fr

BASE_US = 1_700_000_000 * 1_000_000
WINDOW = 1024
REORDER_US = 2_000_000
IMPLAUSIBLE = 1_000_000
RESTART_MAX = 1024
# Safety margins keeping every perturbation clearly on one side of a threshold.
WINDOW_MARGIN = 64
TIME_MARGIN_US = 200_000

CLASSES = ("esp", "ike", "keepalive", "other", "orphan_fragment", "truncated", "malformed")


class AmbiguousScenario(ValueError):
    """The requested perturbation would sit on a threshold of the contract."""


@dataclass(frozen=True)
class FragPlan:
    """Fragment an ESP datagram into `count` pieces; `lost` indices are not written, `order` is emission order."""

    count: int = 3
    lost: frozenset[int] = frozenset()
    order: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.order is not None and sorted(self.order) != list(range(self.count)):
            raise AmbiguousScenario("a fragment order must list every fragment once (use `lost` to drop some)")

    def emitted(self) -> list[int]:
        order = self.order if self.order is not None else tuple(range(self.count))
        return [i for i in order if i not in self.lost]

    def sizes(self, total: int) -> list[int]:
        chunk = -(-total // self.count // 8) * 8 or 8
        sizes = [chunk] * (self.count - 1)
        if sum(sizes) >= total or chunk < 16:
            raise AmbiguousScenario("payload too small for this many fragments carrying the ESP header")
        return sizes + [total - sum(sizes)]


@dataclass
class SASpec:
    """One SA generation at one observation point, plus the perturbations applied to it."""

    src: str
    dst: str
    spi: int
    link: fr.Link = field(default_factory=fr.Link)
    encap: str = "esp"
    sport: int | None = None
    dport: int | None = None
    start_seq: int = 1
    count: int = 100
    seqs: list[int] | None = None
    payload: int = 64
    start_us: int = 0
    spacing_us: int = 1000
    generation: int = 0
    v4_options: bytes = b""
    v6_ext: tuple[int, ...] = ()
    drops: set[int] = field(default_factory=set)
    dups: dict[int, int] = field(default_factory=dict)
    delays: dict[int, int] = field(default_factory=dict)
    lates: dict[int, int] = field(default_factory=dict)
    jumps: dict[int, int] = field(default_factory=dict)
    truncs: set[int] = field(default_factory=set)
    frags: dict[int, FragPlan] = field(default_factory=dict)
    pauses: dict[int, int] = field(default_factory=dict)  # seq -> extra microseconds of silence before it

    def __post_init__(self) -> None:
        self.src, self.dst = str(ipaddress.ip_address(self.src)), str(ipaddress.ip_address(self.dst))
        if self.encap == "udp" and (self.sport is None or self.dport is None):
            self.sport, self.dport = 4500, 4500
        if self.start_seq >= 2**32:
            raise AmbiguousScenario("the first number must fit 32 bits: the high ESN bits are inferred as 0")

    @property
    def base_seqs(self) -> list[int]:
        return list(self.seqs) if self.seqs is not None else list(range(self.start_seq, self.start_seq + self.count))

    def key(self) -> tuple:
        """The contract's SA key, plus the generation: identifies one `sas[]` entry."""
        # SLL2 frames carry the interface index; otherwise the observation point is the pcapng interface,
        # None for the first (or only) one, as a pcap file has
        capture_if = None if self.link.capture_if == 0 else ("if", self.link.capture_if)
        interface = self.link.ifindex if self.link.linktype == fr.LINKTYPE_LINUX_SLL2 else capture_if
        return (self.src, self.dst, self.spi, self.sport if self.encap == "udp" else None,
                self.dport if self.encap == "udp" else None, self.link.vlan, self.link.inner_vlan,
                interface, self.generation)

    def direction(self) -> str | None:
        if self.link.linktype not in (fr.LINKTYPE_LINUX_SLL, fr.LINKTYPE_LINUX_SLL2):
            return None
        return "out" if self.link.pkttype == fr.SLL_OUTGOING else "in"


@dataclass
class Item:
    """One ESP datagram as emitted; `kind` is what the contract must call it."""

    seq: int
    kind: str = "ok"  # ok | reordered | dup | late | implausible | trunc
    frag: FragPlan | None = None

    @property
    def observed(self) -> bool:
        return self.kind != "trunc" and not (self.frag is not None and 0 in self.frag.lost)

    @property
    def accepted(self) -> bool:
        return self.observed and self.kind in ("ok", "reordered")


@dataclass
class Emitted:
    """A written frame and how it must be classified / attributed."""

    ts_us: int
    order: int
    link: fr.Link
    data: bytes
    cls: str
    caplen: int | None = None
    sa: int | None = None
    item: Item | None = None
    octets: int = 0
    bears_header: bool = False
    header_end: int = 0  # frame offset just past the ESP sequence number (0: no ESP header here)


def _move(order: list[Item], seq: int, k: int, kind: str) -> None:
    idx = next(i for i, it in enumerate(order) if it.seq == seq and it.kind == "ok")
    item = order.pop(idx)
    item.kind = kind
    order.insert(min(idx + k, len(order)), item)


def plan_items(spec: SASpec) -> list[Item]:
    """Emission order of one SA's datagrams after all perturbations."""
    order = [Item(s) for s in spec.base_seqs if s not in spec.drops]
    for seq, k in sorted(spec.delays.items()):
        _move(order, seq, k, "reordered")
    for seq, k in sorted(spec.lates.items()):
        _move(order, seq, k, "late")
    for seq, d in sorted(spec.dups.items()):
        idx = next(i for i, it in enumerate(order) if it.seq == seq)
        order.insert(idx + d + 1, Item(seq, "dup"))
    for seq, amount in sorted(spec.jumps.items()):
        idx = next(i for i, it in enumerate(order) if it.seq == seq)
        order.insert(idx + 1, Item(seq + amount, "implausible"))
    for it in order:
        if it.kind == "ok" and it.seq in spec.truncs:
            it.kind = "trunc"
        if it.kind in ("ok", "reordered") and it.seq in spec.frags:
            it.frag = spec.frags[it.seq]
    return order
