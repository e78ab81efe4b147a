"""IKE traffic per peer pair (UDP 500 and 4500 together, both directions): shown beside the SAs."""

from __future__ import annotations

from dataclasses import dataclass

from agent.decode import Frame


@dataclass(slots=True)
class IkePair:
    a: bytes  # source of the first IKE packet seen
    b: bytes
    packets: int = 0
    octets: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0


class IkeTable:
    """Peer pairs by (observation point, lower address, higher address), oldest first."""

    def __init__(self) -> None:
        self.pairs: dict[tuple, IkePair] = {}
        self.evictions = 0

    def observe(self, f: Frame, now: float, bound: int) -> IkePair:
        """Account one IKE packet; at `bound` pairs the oldest goes (spoofed UDP 500 must not grow it)."""
        key = (f.obs, f.src, f.dst) if f.src <= f.dst else (f.obs, f.dst, f.src)
        ike = self.pairs.get(key)
        if ike is None:
            if len(self.pairs) >= bound:
                del self.pairs[next(iter(self.pairs))]
                self.evictions += 1
            ike = self.pairs[key] = IkePair(f.src, f.dst, first_seen=now)
        ike.packets += 1
        ike.octets += f.ip_len
        ike.last_seen = now
        return ike
