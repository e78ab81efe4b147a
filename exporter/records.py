"""Typed records handed from the meter to the IPFIX exporter.

These dataclasses are the whole contract between `agent/` and `exporter/`: the agent fills them at
each export interval, the exporter encodes them. Field names follow `espmeter read --json`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# flowEndReason values (RFC 5102 / IANA IPFIX registry)
END_IDLE = 0x01
END_ACTIVE = 0x02
END_FORCED = 0x04
END_RESOURCES = 0x05

# espEncapsulation values
ENCAP_ESP = 0
ENCAP_UDP = 1

# flowDirection values (IE 61)
DIRECTION_INGRESS = 0
DIRECTION_EGRESS = 1


@dataclass(slots=True)
class SARecord:
    """One SA's counters over one export interval (all *_count fields are deltas)."""

    start_ms: int
    end_ms: int
    src: IPAddress
    dst: IPAddress
    spi: int
    encap: int  # ENCAP_ESP or ENCAP_UDP
    sport: int | None
    dport: int | None
    packets: int
    octets: int
    datagrams: int
    lost: int
    reordered: int
    duplicates: int
    late: int
    expected: int
    incomplete: int
    first_seq: int | None  # lowest accepted sequence number in the interval
    last_seq: int | None  # highest accepted sequence number in the interval
    max_reorder_extent: int
    end_reason: int
    vlan: int | None = None
    inner_vlan: int | None = None  # QinQ customer tag (dot1qCustomerVlanId)
    ingress_if: int | None = None
    egress_if: int | None = None
    direction: int | None = None  # DIRECTION_INGRESS / DIRECTION_EGRESS when known
    peer_spi: int | None = None
    tunnel_id: int | None = None
    tunnel_name: str | None = None

    @property
    def ip_version(self) -> int:
        return self.src.version


@dataclass(slots=True)
class BiflowRecord:
    """RFC 5103 biflow of one paired tunnel: forward is the SA observed first."""

    forward: SARecord
    reverse: SARecord


@dataclass(frozen=True, slots=True)
class LossEvent:
    """A maximal run of consecutive lost (final) sequence numbers [first, last] of one SA.

    `after`/`before`: arrival times (epoch s) of datagrams first-1 and last+1; the loss happened
    between them. The SA is named as in its records (interface = ingress or egress ifindex).
    """

    src: IPAddress
    dst: IPAddress
    spi: int
    encap: int
    sport: int | None
    dport: int | None
    ifindex: int | None
    first: int
    last: int
    after: float
    before: float

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(slots=True)
class MeteringStats:
    """Totals since start for the metering-process statistics options records."""

    observation_domain: int
    frames: int = 0
    octets: int = 0
    ignored_frames: int = 0  # frames that were not ESP/IKE (other, malformed, truncated, orphans)
    ignored_octets: int = 0
    malformed: int = 0
    truncated: int = 0
    capture_drops: int = 0  # kernel/pcap drops reported by libpcap
    first_ignored_ms: int | None = None
    last_ignored_ms: int | None = None
    sa_evictions: int = 0
    classes: dict[str, int] = field(default_factory=dict)
