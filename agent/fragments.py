"""IP fragment attribution: later fragments belong to the SA of their first fragment.

No reassembly: only (obs, src, dst, protocol, id) → owner, plus which payload ranges arrived, so
that a datagram with missing pieces is counted as incomplete (not as sequence loss) and fragments
whose first piece never came are counted as orphans. Entries live in an insertion-ordered dict,
which is also their expiry order (the timeout is fixed), so expiry pops from the front.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FragKey = tuple


@dataclass(slots=True)
class FragEntry:
    created: float
    owner: Any = None  # the SA (or another sink) of the first fragment, once seen
    held_packets: int = 0  # non-first fragments that arrived before the first one
    held_octets: int = 0
    offsets: set[int] = field(default_factory=set)
    covered: int = 0
    total: int = -1  # payload length, known once the last fragment (MF=0) arrived

    def add(self, offset: int, length: int, more: bool) -> bool:
        """Record one fragment; False when this exact piece was already seen."""
        if offset in self.offsets:
            return False
        self.offsets.add(offset)
        self.covered += length
        if not more:
            self.total = offset + length
        return True

    @property
    def complete(self) -> bool:
        return self.owner is not None and self.total >= 0 and self.covered >= self.total


class FragmentTable:
    """Bounded by `timeout` and `max_entries`; `on_expire(entry)` settles what expired."""

    def __init__(self, timeout: float, max_entries: int, on_expire: Callable[[FragEntry], None]) -> None:
        self.timeout = timeout
        self.max_entries = max_entries
        self.on_expire = on_expire
        self.entries: dict[FragKey, FragEntry] = {}

    def first(self, key: FragKey, owner: Any, offset_len: int, more: bool, now: float) -> FragEntry | None:
        """The first fragment arrived: returns the entry (with held fragments to move to owner)."""
        entry = self._entry(key, now)
        if entry.owner is not None:
            return None  # a duplicated first fragment: nothing new to attribute
        entry.owner = owner
        entry.add(0, offset_len, more)
        if entry.complete:
            del self.entries[key]
        return entry

    def later(self, key: FragKey, offset: int, length: int, more: bool, octets: int, now: float) -> Any:
        """A non-first fragment: returns its owner, or None while the first fragment is missing."""
        entry = self._entry(key, now)
        entry.add(offset, length, more)
        owner = entry.owner
        if owner is None:
            entry.held_packets += 1
            entry.held_octets += octets
        elif entry.complete:
            del self.entries[key]
        return owner

    def expire(self, now: float) -> None:
        entries = self.entries
        while entries:
            key = next(iter(entries))
            if now - entries[key].created <= self.timeout:
                break
            self.on_expire(entries.pop(key))

    def flush(self) -> None:
        entries, self.entries = self.entries, {}
        for entry in entries.values():
            self.on_expire(entry)

    def _entry(self, key: FragKey, now: float) -> FragEntry:
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.max_entries:
                oldest = next(iter(self.entries))
                self.on_expire(self.entries.pop(oldest))
            entry = self.entries[key] = FragEntry(created=now)
        return entry
