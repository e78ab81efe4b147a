"""Vectorised fast path: whole runs of in-order datagrams per SA in one numpy pass over a batch.

Why: per-frame Python costs about a microsecond even on the inline fast path; a busy router sends
long in-order runs per SA. Here the headers of every frame of a pcapy batch are gathered at fixed
offsets (untagged Ethernet, IPv4 without options, unfragmented ESP or ESP-in-UDP/4500), frames are
grouped per SA (lexsort), and a group whose numbers continue its SA exactly (last+1, last+2, ...)
within the SA's fast limits is applied with a handful of integer additions. Everything else — new
SAs, gaps, reordering, fragments, other traffic, and any SA with such a frame in the segment — goes
through the per-frame path in capture order, so results are identical (tests/test_fastpath.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_COLS = np.arange(50, dtype=np.int64)  # bytes gathered per frame: Ethernet + IPv4 + UDP + ESP header
_LOW = 0xFFFFFFFF


@dataclass(slots=True)
class Groups:
    """Per-SA runs found in one segment; `rest` holds the frame indexes left to the per-frame path."""

    keys: list[bytes]
    first_seq: np.ndarray
    count: np.ndarray
    octets: np.ndarray
    last_time: np.ndarray  # of the group's last frame (last_seen)
    max_time: np.ndarray  # against the SA's reorder-time limit
    members: list[np.ndarray]
    rest: np.ndarray


def _u16(h: np.ndarray, at: int) -> np.ndarray:
    return (h[:, at].astype(np.uint32) << 8) | h[:, at + 1]


def _u32(h: np.ndarray, at: int) -> np.ndarray:
    return (_u16(h, at) << 16) | _u16(h, at + 2)


def analyse(buf: bytes, offsets: np.ndarray, caplens: np.ndarray, times: np.ndarray) -> Groups:
    """Group the frames of one segment; see the module docstring for what qualifies."""
    n = len(offsets)
    b = np.frombuffer(buf, dtype=np.uint8)
    idx = np.minimum(offsets.astype(np.int64)[:, None] + _COLS, len(b) - 1)
    h = b[idx]
    ipv4 = (h[:, 12] == 8) & (h[:, 13] == 0) & (caplens >= 42)
    plain = ipv4 & (h[:, 14] == 0x45) & ((h[:, 20] & 0x3F) == 0) & (h[:, 21] == 0)
    total = _u16(h, 16)
    proto = h[:, 23]
    esp = plain & (proto == 50) & (total >= 28)
    sport, dport = _u16(h, 34), _u16(h, 36)
    spi_udp = _u32(h, 42)
    udp = (plain & (proto == 17) & (caplens >= 50) & ((sport == 4500) | (dport == 4500))
           & (_u16(h, 38) >= 16) & (_u16(h, 38) <= total - 20) & (spi_udp != 0))
    cand = esp | udp
    addrs = (_u32(h, 26).astype(np.uint64) << np.uint64(32)) | _u32(h, 30)
    spi = np.where(udp, spi_udp, _u32(h, 34)).astype(np.uint64)
    ports = np.where(udp, (sport << 16) | dport, 0).astype(np.uint64)
    sub = (spi << np.uint64(32)) | ports  # with the UDP flag: ESP and ESP-in-UDP never share a group
    sub = np.where(udp, sub | np.uint64(1 << 31), sub)
    seq = np.where(udp, _u32(h, 46), _u32(h, 38)).astype(np.int64)

    # an SA with any other IPv4 ESP/UDP frame between the same addresses in this segment (options,
    # fragments, ...) keeps its whole segment on the per-frame path, in order
    risky = ipv4 & ~cand & ((proto == 50) | (proto == 17))
    ci = np.nonzero(cand)[0]
    if risky.any():
        ci = ci[~np.isin(addrs[ci], addrs[risky])]
    if not len(ci):
        return Groups([], *(np.empty(0, np.int64),) * 5, [], np.arange(n))
    order = ci[np.lexsort((ci, sub[ci], addrs[ci]))]
    a, s = addrs[order], sub[order]
    start = np.ones(len(order), dtype=bool)
    start[1:] = (a[1:] != a[:-1]) | (s[1:] != s[:-1])
    starts = np.nonzero(start)[0]
    q = seq[order]
    brk = np.ones(len(order), dtype=bool)  # a new run starts at each SA and after each step != +1
    brk[1:] = start[1:] | (((q[1:] - q[:-1]) & _LOW) != 1)
    run_starts = np.nonzero(brk)[0]
    nxt = np.searchsorted(run_starts, starts, side="right")
    gs = starts
    ge = np.append(run_starts, len(order))[nxt]  # each SA's first run; later runs go frame by frame
    firsts = order[gs]
    keys = []
    rows = h[firsts]
    for row, is_udp in zip(rows, udp[firsts], strict=True):
        keys.append(row[26:38].tobytes() + row[42:46].tobytes() if is_udp else row[26:38].tobytes())
    csum = np.concatenate(([0], np.cumsum(total[order].astype(np.int64))))
    octs = csum[ge] - csum[gs]
    members = [order[x:y] for x, y in zip(gs, ge, strict=True)]
    covered = np.zeros(n, dtype=bool)
    for mem in members:
        covered[mem] = True
    tmax = np.array([times[mem].max() for mem in members]) if members else np.empty(0)
    return Groups(keys, q[gs], ge - gs, octs, times[order[ge - 1]], tmax, members, np.nonzero(~covered)[0])
