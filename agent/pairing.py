"""Pair the two SAs of a tunnel: A→B with B→A (ports mirrored for ESP-in-UDP).

Child-SA SPIs travel encrypted inside IKE, so a passive observer pairs by heuristic: among the
unpaired reverse candidates, prefer one seen at the same observation point (a coherent view of one
link), then the one first seen closest in time. An SA is never paired twice; rekeyed SAs (new SPIs)
form a new pair. Candidates are indexed by flow key, so pairing never scans the SA table.
"""

from __future__ import annotations

from agent.sa import SA


class Pairer:
    def __init__(self) -> None:
        self.unpaired: dict[tuple, list[SA]] = {}
        self.next_tunnel = 1

    def add(self, sa: SA) -> SA | None:
        """Offer a new SA; returns its partner when one was found."""
        candidates = self.unpaired.get(sa.reverse_flow_key())
        if candidates:
            peer = min(candidates, key=lambda c: (c.obs != sa.obs, abs(c.first_seen - sa.first_seen)))
            candidates.remove(peer)
            if not candidates:
                del self.unpaired[sa.reverse_flow_key()]
            self._pair(peer, sa)
            return peer
        self.unpaired.setdefault(sa.flow_key, []).append(sa)
        return None

    def remove(self, sa: SA) -> None:
        """An SA left the table unpaired: it can no longer be a candidate."""
        if sa.peer is not None:
            return
        candidates = self.unpaired.get(sa.flow_key)
        if candidates and sa in candidates:
            candidates.remove(sa)
            if not candidates:
                del self.unpaired[sa.flow_key]

    def inherit(self, old: SA, new: SA) -> None:
        """A new generation of an SA keeps its partner and tunnel; an unpaired one stays a candidate."""
        if old.peer is not None:
            new.peer, new.tunnel_id = old.peer, old.tunnel_id
            if old.peer.peer is old:
                old.peer.peer = new
        else:
            self.remove(old)
            self.add(new)

    def _pair(self, first: SA, second: SA) -> None:
        first.peer, second.peer = second, first
        first.tunnel_id = second.tunnel_id = self.next_tunnel
        self.next_tunnel += 1
