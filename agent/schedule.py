"""The export schedule of the SA table: timers of (due, SA), the earliest first.

An entry is live while its SA is active: an active SA is the table's entry for its key and has exactly
one entry (agent.satable), so an SA holds no due time of its own. Entries of SAs that ended or left the
table are skipped when they come up and dropped in bulk (SATable._stale). Two schedules, one behaviour:
`HeapSchedule`, a heapq list of tuples (the fallback and the oracle), and `agent/_fastpath.c`'s
`Schedule`, the same heap with the same steps in 16 bytes per entry instead of a 56-byte tuple and its
list slot (bench/memory.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Protocol

from agent.compiled import fastpath as _fastpath
from agent.sa import NEVER, SA


class Schedule(Protocol):
    def push(self, due: float, sa: SA) -> None: ...
    def pop(self) -> tuple[float, SA]: ...
    def head(self) -> float:
        """The earliest due time; NEVER when there is no entry."""
    def clear(self) -> None: ...
    def drop_dead(self) -> None:
        """Keep only the entries of active SAs."""
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple[float, SA]]:
        """The entries in heap order."""


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

    def drop_dead(self) -> None:
        self.heap = [e for e in self.heap if e[1].active]
        heapq.heapify(self.heap)

    def __len__(self) -> int:
        return len(self.heap)

    def __iter__(self) -> Iterator[tuple[float, SA]]:
        return iter(self.heap)


def new_schedule(compiled: bool) -> Schedule:
    return _fastpath.Schedule() if compiled and _fastpath else HeapSchedule()
