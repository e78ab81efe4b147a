"""Typed records handed from the meter to the IPFIX exporter.

These dataclasses are the whole contract between `agent/` and `exporter/`: the agent fills them at
each export interval, the exporter encodes them. Field names follow `espmeter read --json`. Addresses
are packed (4 or 16 bytes), as the encoder writes them: `agent.sa.address_text` renders them (an
`ipaddress` object per address cost ~1.5 us of each record, made and packed again).
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

# protocolIdentifier of an SA's packets
PROTO_ESP = 50
PROTO_UDP = 17

# flowDirection values (IE 61)
DIRECTION_INGRESS = 0
DIRECTION_EGRESS = 1


@dataclass(slots=True)
class SARecord:
    """One SA's counters over one export interval (all *_count fields are deltas)."""

    start_ms: int
    end_ms: int
    src: bytes  # packed
    dst: bytes
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
    loss_events: int = 0  # loss events that became final in the interval
    longest_loss_run: int = 0  # count of the longest of them

    @property
    def ip_version(self) -> int:
        return 4 if len(self.src) == 4 else 6

    @property
    def protocol(self) -> int:
        return protocol(self.encap)


@dataclass(slots=True)
class BiflowRecord:
    """RFC 5103 biflow of one paired tunnel: forward is the SA observed first."""

    forward: SARecord
    reverse: SARecord

    # the tunnel-level values of the biflow record
    @property
    def start_ms(self) -> int:
        return min(self.forward.start_ms, self.reverse.start_ms)

    @property
    def end_ms(self) -> int:
        return max(self.forward.end_ms, self.reverse.end_ms)

    @property
    def protocol(self) -> int:
        return self.forward.protocol

    @property
    def end_reason(self) -> int:
        return self.forward.end_reason

    @property
    def tunnel_id(self) -> int | None:
        return self.forward.tunnel_id if self.forward.tunnel_id is not None else self.reverse.tunnel_id

    @property
    def tunnel_name(self) -> str | None:
        return self.forward.tunnel_name or self.reverse.tunnel_name


@dataclass(frozen=True, slots=True)
class LossEvent:
    """A maximal run of consecutive lost (final) sequence numbers [first, last] of one SA.

    `after`/`before`: arrival times (epoch s) of datagrams first-1 and last+1; the loss happened
    between them. The SA is named as in its records.
    """

    src: bytes  # packed
    dst: bytes
    spi: int
    encap: int
    sport: int | None
    dport: int | None
    ingress_if: int | None
    egress_if: int | None
    first: int
    last: int
    after: float
    before: float
    tunnel_id: int | None = None
    tunnel_name: str | None = None

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    @property
    def protocol(self) -> int:
        return protocol(self.encap)

    @property
    def after_ms(self) -> int:
        return epoch_ms(self.after)

    @property
    def before_ms(self) -> int:
        return epoch_ms(self.before)


def protocol(encap: int) -> int:
    """protocolIdentifier of an SA's packets."""
    return PROTO_UDP if encap == ENCAP_UDP else PROTO_ESP


def epoch_ms(t: float) -> int:
    """Epoch seconds (microsecond precision) to whole milliseconds, without float rounding up or down."""
    return round(t * 1e6) // 1000


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
    loss_events_suppressed: int = 0  # loss-event records held back by the loss_events: cap / minimum
    first_ignored_ms: int | None = None
    last_ignored_ms: int | None = None
    sa_evictions: int = 0
    unconfirmed_sas: int = 0  # SAs evicted while unconfirmed (SPI flood), never exported one by one
    unconfirmed_datagrams: int = 0  # the datagrams those SAs had
    classes: dict[str, int] = field(default_factory=dict)
