"""The export schedule of the SA table: timers of (due, SA), the earliest first.

Two of them, one behaviour: `HeapSchedule`, a heapq list of tuples (the fallback and the oracle), and
`agent/_fastpath.c`'s `Schedule`, the same heap with the same steps in 16 bytes per entry instead of a
56-byte tuple and its list slot (bench/memory.py). A table keeps one entry per SA live; entries an SA
left behind (rescheduled, ended, dropped) are skipped when they come up and dropped in bulk
(SATable._stale).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Protocol

from agent.compiled import fastpath as _fastpath
from agent.sa import NEVER, SA, SAKey


class Schedule(Protocol):
    def push(self, due: float, sa: SA) -> None: ...
    def pop(self) -> tuple[float, SA]: ...
    def head(self) -> float:
        """The earliest due time; NEVER when there is no entry."""
    def clear(self) -> None: ...
    def drop_dead(self, sas: dict[SAKey, SA]) -> None:
        """Keep only the entries `live` keeps."""
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple[float, SA]]:
        """The entries in heap order."""


def live(sa: SA, sas: dict[SAKey, SA]) -> bool:
    """An entry still stands for its SA: active and the table's entry for its key (such an SA has one
    entry, agent.satable; so an SA holds no due time of its own: 32 bytes per SA)."""
    return sa.active and sas.get(sa.key) is sa


class HeapSchedule:
    __slots__ = ("heap",)

    def __init__(self) -> None:
        self.heap: list[tuple[float, SA]] = []

    def push(self, due: float, sa: SA) -> None:
        heapq.heappush(self.heap, (due, sa))

    def pop(self) -> tuple[float, SA]:
        return heapq.heappop(self.heap)

    def head(self) -> float:
        return self.heap[0][0] if self.heap else NEVER

    def clear(self) -> None:
        self.heap.clear()

    def drop_dead(self, sas: dict[SAKey, SA]) -> None:
        self.heap = [e for e in self.heap if live(e[1], sas)]
        heapq.heapify(self.heap)

    def __len__(self) -> int:
        return len(self.heap)

    def __iter__(self) -> Iterator[tuple[float, SA]]:
        return iter(self.heap)


def new_schedule(compiled: bool) -> Schedule:
    return _fastpath.Schedule() if compiled and _fastpath else HeapSchedule()
