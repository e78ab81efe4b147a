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

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
BATCH_HEAP_BYTES = 32 << 20  # glibc's largest mmap threshold (64-bit): batch copies up to this size


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


def keep_batches_in_heap() -> bool:
    """Batch copies (up to a ring's worth) come from the heap, reused wake-up after wake-up, instead of a
    fresh mmap each: glibc maps them above its mmap threshold, and every page of a new map is a page
    fault the kernel charges to the agent (bench/live.py: 128 000 minor faults and 0.45 s of system CPU
    for 2 M packets, 0.2 µs a packet, against 2700 and 0.01-0.06 s). The heap's free top is returned by
    HeapTrim once a burst is over, not by every free (the trim threshold). False where there is no glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, BATCH_HEAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * BATCH_HEAP_BYTES))


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
