"""Freed heap back to the OS once a capture burst is over (glibc `malloc_trim`).

A busy wake-up reads megabyte batches (pcapy-ng's `next_batch` copies what a ring holds). Once glibc
has freed the first of them it raises its mmap threshold to that size, and with it the free space it
keeps at the top of the heap (twice the threshold): after the 2000-SA live bench 5-8 MB of freed
batches stayed resident, by how large the batches happened to be. `malloc_trim(0)` returns them (and
free pages inside the heap) in about 0.2 ms, once per burst, not per batch.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


class HeapTrim:
    """Trims once a burst ends: the first tick interval with fewer than `burst` frames after one with more."""

    def __init__(self, burst: int) -> None:
        self.burst = burst
        self.pending = False  # a burst since the last trim
        self.trims = 0
        self._trim = _malloc_trim()

    def interval(self, frames: int) -> bool:
        """One tick interval that read `frames`; True when it trimmed the heap."""
        if frames >= self.burst:
            self.pending = True
            return False
        if not self.pending:
            return False
        self.pending = False
        if self._trim is not None:
            self._trim(0)
        self.trims += 1
        return True
