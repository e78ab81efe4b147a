"""Vectorised fast path: whole runs of in-order datagrams per SA in one numpy pass over a batch.

Why: per-frame Python costs about a microsecond even on the inline fast path; a busy router sends
long in-order runs per SA. Here nine header words of every frame of a pcapy batch are gathered at
fixed offsets (untagged Ethernet, IPv4 without options, unfragmented ESP or ESP-in-UDP/4500), frames
are grouped per SA (a stable sort on a hash, checked exactly), and each SA's first run of numbers
that continues it exactly (last+1, last+2, ...) is applied with a handful of integer additions.
Everything else — new SAs, gaps, reordering, fragments, other traffic, later runs, and any SA with
another IPv4 ESP/UDP frame between the same addresses in the segment — goes through the per-frame
path in capture order, so results are identical (tests/test_fastpath.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LOW = 0xFFFFFFFF
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(slots=True)
class Groups:
    """The candidate frames of one segment grouped per SA, and each group cut into runs of +1 steps.

    Group k's runs are `group_runs[k]:group_runs[k + 1]`; run r's frames are
    `order[run_start[r]:run_start[r] + count[r]]`. `rest` holds the frames left to the per-frame path.
    """

    keys: list[bytes]
    group_runs: np.ndarray
    order: np.ndarray
    run_start: np.ndarray
    first_seq: np.ndarray
    count: np.ndarray
    last_time: np.ndarray  # of the run's last frame (last_seen)
    max_time: np.ndarray  # against the SA's reorder-time limit
    octets: np.ndarray  # per position in `order`: IP total length
    times: np.ndarray  # per position in `order`
    csum: np.ndarray  # cumulative octets: frames [i, j) of `order` carry csum[j] - csum[i]
    rest: np.ndarray

    def frames_from(self, r: int, skip: int, k: int) -> np.ndarray:
        """Frames of group k from run r on, skipping the first `skip` frames of run r."""
        end = self.run_start[self.group_runs[k + 1]] if k + 1 < len(self.keys) else len(self.order)
        return self.order[self.run_start[r] + skip:end]


class Words:
    """Big-endian 32-bit words at `offsets + c`, read through four aligned zero-copy views of the buffer.

    Gathering whole words (nine per frame) rather than a frame × byte matrix keeps the cost of the
    gather below that of the per-frame path it replaces. The views are little-endian and each result is
    byte-swapped once: arithmetic on a big-endian dtype would swap again in every operation. When all
    frames share one alignment (fixed-size frames), a word's index is the frame's index plus a constant.
    """

    def __init__(self, buf: bytes, offsets: np.ndarray) -> None:
        self.views = [np.frombuffer(buf, dtype="<u4", offset=k, count=(len(buf) - k) // 4)
                      if len(buf) >= k + 4 else np.empty(0, dtype="<u4") for k in range(4)]
        off = offsets.astype(np.int64)
        self.n = len(off)
        align = off & 3
        self.single: tuple[int, np.ndarray, int] | None = None
        if self.n and not (align != align[0]).any():
            q = off >> 2
            self.single = (int(align[0]), q, int(q.max()))
        self.classes = [] if self.single else [
            (mask, off[mask]) for mask in ((align == j) for j in range(4)) if mask.any()]

    def at(self, c: int) -> np.ndarray:
        if self.single is not None:
            j, q, qmax = self.single
            view = self.views[(j + c) & 3]
            step = (j + c) >> 2
            idx = q + step if qmax + step < len(view) else np.minimum(q + step, len(view) - 1)
            return view[idx].byteswap(inplace=True) if len(view) else np.zeros(self.n, dtype="<u4")
        out = np.zeros(self.n, dtype="<u4")
        for mask, off in self.classes:
            k = int(off[0] + c) & 3
            view = self.views[k]
            if len(view):
                out[mask] = view[np.minimum((off + c - k) >> 2, len(view) - 1)]
        return out.byteswap(inplace=True)


def _empty(n: int) -> Groups:
    none = np.empty(0, np.int64)
    return Groups([], none, none, none, none, none, none, none, none, none, none, np.arange(n))  # 11 fields


def _group_order(h: np.ndarray) -> np.ndarray:
    """Indexes that group equal hashes, in frame order within a group.

    A stable sort on the top 16 bits is a radix sort (an order of magnitude cheaper than sorting 64-bit
    keys); the few buckets that hold more than one hash are then sorted on the whole hash. Sorting on
    the whole hash keeps bucket order, since the bucket is its top bits.
    """
    bucket = (h >> np.uint64(48)).astype(np.uint16)
    order = np.argsort(bucket, kind="stable")
    hs, bs = h[order], bucket[order]
    mixed = (hs[1:] != hs[:-1]) & (bs[1:] == bs[:-1])
    if mixed.any():
        at = np.isin(bs, bs[1:][mixed])
        sub = order[at]
        order[at] = sub[np.argsort(h[sub], kind="stable")]
    return order


def _keys(src: np.ndarray, dst: np.ndarray, ports: np.ndarray, spi: np.ndarray, udp: np.ndarray) -> list[bytes]:
    """SA identifiers as agent.sa builds them (esp_ident / udp_ident), sliced from one packed array."""
    rows = np.empty((len(src), 4), dtype=">u4")
    rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = src, dst, spi, ports
    esp_blob = rows[:, :3].tobytes()
    rows[:, 2], rows[:, 3] = ports, spi
    udp_blob = rows.tobytes()
    return [udp_blob[16 * i:16 * i + 16] if u else esp_blob[12 * i:12 * i + 12]
            for i, u in enumerate(udp.tolist())]


def analyse(buf: bytes, offsets: np.ndarray, caplens: np.ndarray, times: np.ndarray) -> Groups:
    """Group the frames of one segment; see the module docstring for what qualifies."""
    n = len(offsets)
    w = Words(buf, offsets)
    w12, w16, w20 = w.at(12), w.at(16), w.at(20)  # ethertype + ver/ihl, total length, frag + protocol
    ipv4 = ((w12 >> 16) == 0x0800) & (caplens >= 42)
    plain = ipv4 & (((w12 >> 8) & 0xFF) == 0x45) & (((w20 >> 16) & 0x3FFF) == 0)
    total = w16 >> 16
    proto = w20 & 0xFF
    esp = plain & (proto == 50) & (total >= 28)
    w34, w38 = w.at(34), w.at(38)  # ESP: SPI, sequence; UDP: ports, length + checksum
    sport, dport, ulen = w34 >> 16, w34 & 0xFFFF, w38 >> 16
    udp = (plain & (proto == 17) & (caplens >= 50) & ((sport == 4500) | (dport == 4500))
           & (ulen >= 16) & (ulen + 20 <= total))
    any_udp = bool(udp.any())  # the two ESP-in-UDP words are gathered only when there is such a frame
    spi_udp = np.where(udp, w.at(42), 0) if any_udp else np.zeros(len(udp), dtype=np.uint32)
    udp &= spi_udp != 0
    cand = esp | udp
    src, dst = w.at(26), w.at(30)
    addrs = (src.astype(np.uint64) << np.uint64(32)) | dst
    spi = np.where(udp, spi_udp, w34)
    ports = np.where(udp, w34, 0)  # never 0 for ESP-in-UDP (one port is 4500): the encapsulations differ
    sub = (spi.astype(np.uint64) << np.uint64(32)) | ports
    seq = (np.where(udp, w.at(46), w38) if any_udp else w38).astype(np.int64)

    # an SA with any other IPv4 ESP/UDP frame between the same addresses in this segment (options,
    # fragments, IKE, ...) keeps its whole segment on the per-frame path, in order
    risky = ipv4 & ~cand & ((proto == 50) | (proto == 17))
    ci = np.nonzero(cand)[0]
    if risky.any():
        ci = ci[~np.isin(addrs[ci], addrs[risky])]
    if not len(ci):
        return _empty(n)
    hashes = addrs * _MIX ^ sub
    order = ci[_group_order(hashes[ci])]
    a, s = addrs[order], sub[order]
    start = np.ones(len(order), dtype=bool)
    start[1:] = (a[1:] != a[:-1]) | (s[1:] != s[:-1])  # exact: a hash collision only splits a group
    q = seq[order]
    brk = start.copy()  # a new run starts at each SA and after each step that is not +1
    brk[1:] |= ((q[1:] - q[:-1]) & _LOW) != 1
    starts = np.nonzero(start)[0]
    run_start = np.nonzero(brk)[0]
    firsts = order[starts]
    # an SA split by a hash collision shows as two groups: both go to the per-frame path
    key = hashes[firsts]
    _, first_of, seen = np.unique(key, return_index=True, return_counts=True)
    split = np.isin(key, key[first_of[seen > 1]])
    group_runs = np.searchsorted(run_start, starts)
    run_end = np.append(run_start[1:], len(order))
    octs = total[order].astype(np.int64)
    csum = np.concatenate(([0], np.cumsum(octs)))
    t = times[order]
    g = Groups(
        keys=_keys(src[firsts], dst[firsts], ports[firsts], spi[firsts], udp[firsts]),
        group_runs=group_runs, order=order, run_start=run_start, first_seq=q[run_start],
        count=run_end - run_start, last_time=t[run_end - 1], max_time=np.maximum.reduceat(t, run_start),
        octets=octs, times=t, csum=csum, rest=np.empty(0, np.int64),
    )
    for k in np.nonzero(split)[0]:
        g.keys[k] = b""  # never an SA key: the meter leaves the whole group to the per-frame path
    covered = np.zeros(n, dtype=bool)
    covered[order] = True
    g.rest = np.nonzero(~covered)[0]
    return g
