"""Pair the two SAs of a tunnel: A→B with B→A (ports mirrored for ESP-in-UDP).

Child-SA SPIs travel encrypted inside IKE, so a passive observer pairs by heuristic: among the
unpaired reverse candidates, prefer one seen at the same observation point (a coherent view of one
link), then the one first seen closest in time. An SA is never paired twice; rekeyed SAs (new SPIs)
form a new pair. Candidates are indexed by flow key, so pairing never scans the SA table; where more
than PAIRING_CANDIDATES wait under one (an SPI flood between two addresses, not tunnels), the heuristic
weighs the newest of them, so a flood in bursts each way costs no more per SA than one a tunnel.

On a gateway an authority (strongSwan over vici, agent.strongswan) may know the true partner and
name of an SA: then it wins, and its SAs are no candidates for SAs it does not know. An SA it names
whose heuristic partner (the one it had, or the one it would have taken) is another counts as a
disagreement.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from itertools import islice
from typing import Protocol

from agent.sa import SA

_NONE: tuple[SA, ...] = ()  # no candidates
PAIRING_CANDIDATES = 64  # the most the heuristic weighs, the newest (first seen closest to a new SA's)


class Claim(Protocol):
    @property
    def name(self) -> str: ...  # the SA's tunnel name

    @property
    def peer(self) -> bytes: ...  # the partner SA's identity (SA.ident)


class PairAuthority(Protocol):
    def claim(self, sa: SA) -> Claim | None: ...


class Pairer:
    def __init__(self, authority: PairAuthority | None = None) -> None:
        # flow key -> the candidate, or, when several wait (parallel SAs, overlapping rekeys, an SPI flood
        # between two addresses), an ordered dict of them as keys, oldest first: no container per unpaired
        # SA (the cyclic collector walks every one that lives), one leaves in O(1) (a list moved all the
        # others) and the newest are found in O(1) (a plain dict's reversed() skips every one deleted)
        self.unpaired: dict[bytes, SA | OrderedDict[SA, None]] = {}
        self.next_tunnel = 1
        self.authority = authority
        self.disagreements = 0

    def add(self, sa: SA) -> SA | None:
        """Offer a new SA; returns its partner when one was found."""
        return self._offer(sa, count=True)

    def _offer(self, sa: SA, count: bool) -> SA | None:
        reverse = sa.reverse_flow_key()
        if self.authority is None:  # the heuristic alone (no SA has a name from an authority)
            return self._place(sa, reverse, self._newest(reverse))
        claim = self.authority.claim(sa)
        if claim is None:  # the heuristic, among the SAs the authority does not reserve
            return self._place(sa, reverse, [c for c in self._newest(reverse) if c.name is None])
        sa.name = claim.name
        guess = _closest(sa, self._newest(reverse))  # what the heuristic alone would take
        peer = self._place(sa, reverse, [c for c in self._waiting(reverse) if c.ident == claim.peer])
        if count and guess is not None and guess is not peer:
            self.disagreements += 1
        return peer

    def adopt(self, sa: SA, claim: Claim) -> None:
        """The authority named an SA after it was offered: its partner replaces the heuristic's."""
        sa.name = claim.name
        peer = sa.peer
        if peer is not None:
            if peer.ident == claim.peer:
                return
            self.disagreements += 1
            sa.peer = peer.peer = sa.tunnel_id = peer.tunnel_id = None
            self._offer(peer, count=False)
        else:
            self.remove(sa)
        reverse = sa.reverse_flow_key()
        self._place(sa, reverse, [c for c in self._waiting(reverse) if c.ident == claim.peer])

    def remove(self, sa: SA) -> None:
        """An SA left the table unpaired: it can no longer be a candidate."""
        if sa.peer is not None:
            return
        self._unwait(sa.flow_key, sa)

    def inherit(self, old: SA, new: SA) -> None:
        """A new generation of an SA keeps its partner, tunnel and name; an unpaired one stays a candidate."""
        new.name = old.name
        if old.peer is not None:
            new.peer, new.tunnel_id = old.peer, old.tunnel_id
            if old.peer.peer is old:
                old.peer.peer = new
        else:
            self.remove(old)
            self.add(new)

    def _place(self, sa: SA, reverse: bytes, candidates: Collection[SA]) -> SA | None:
        """Pair `sa` with the closest of `candidates` (unpaired under its reverse flow key `reverse`), or
        make it a candidate itself."""
        peer = _closest(sa, candidates)
        if peer is None:
            key = sa.flow_key
            waiting = self.unpaired.get(key)
            if waiting is None:
                self.unpaired[key] = sa
            elif isinstance(waiting, OrderedDict):
                waiting[sa] = None
            else:
                self.unpaired[key] = OrderedDict.fromkeys((waiting, sa))
            return None
        self._unwait(reverse, peer)
        self._pair(peer, sa)
        return peer

    def _waiting(self, key: bytes) -> Collection[SA]:
        """The candidates under a flow key, oldest first."""
        waiting = self.unpaired.get(key)
        if waiting is None:
            return _NONE
        return waiting if isinstance(waiting, OrderedDict) else (waiting,)

    def _newest(self, key: bytes) -> Collection[SA]:
        """The candidates the heuristic weighs: at most PAIRING_CANDIDATES, the newest, oldest first."""
        waiting = self.unpaired.get(key)
        if not isinstance(waiting, OrderedDict) or len(waiting) <= PAIRING_CANDIDATES:
            return self._waiting(key)
        newest = list(islice(reversed(waiting), PAIRING_CANDIDATES))
        newest.reverse()
        return newest

    def _unwait(self, key: bytes, sa: SA) -> None:
        """`sa` is no longer a candidate under `key` (if it was one)."""
        waiting = self.unpaired.get(key)
        if waiting is sa:
            del self.unpaired[key]
        elif isinstance(waiting, OrderedDict) and sa in waiting:
            del waiting[sa]
            if len(waiting) == 1:
                self.unpaired[key] = next(iter(waiting))

    def _pair(self, first: SA, second: SA) -> None:
        first.peer, second.peer = second, first
        first.tunnel_id = second.tunnel_id = self.next_tunnel
        self.next_tunnel += 1


def _closest(sa: SA, candidates: Collection[SA]) -> SA | None:
    """The heuristic: same observation point first, then the closest first-seen time."""
    if len(candidates) < 2:
        return next(iter(candidates)) if candidates else None
    return min(candidates, key=lambda c: (c.obs != sa.obs, abs(c.first_seen - sa.first_seen)))
