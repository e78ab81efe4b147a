"""Fast, seeded ESP capture generator for the benchmark (classic pcap, Ethernet, snaplen 128).

Every frame is captured to exactly 128 octets (wire length 200-1400), so records have a fixed size
and a whole chunk is one numpy array. SAs come in tunnel pairs; a fraction of the sequence numbers is
dropped. Popularity `uniform`: the SAs are interleaved round by round in random order. Popularity
`zipf` (a concentrator): tunnel k (from 1) carries a share proportional to 1/k, so a few tunnels are
busy and most SAs send at most one packet a second; every SA is seen from its first number, in
order, and each number after its first is dropped with the loss probability. The truth per SA (its
packets, and its loss: missing numbers between the first and last one kept) is written next to the
capture as `FILE.truth.json`.

    python bench/gen.py OUT.pcap [--packets N] [--sas 2000] [--loss 0.005] [--encap esp|udp] [--mix 0.2]
                                 [--popularity uniform|zipf]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SNAPLEN = 128
REC = 16 + SNAPLEN  # pcap record header + captured octets
CHUNK = 262_144  # frames built and written per step
DT_US = 10  # capture time between two frames: 100 000 frames/s
T0 = 1_700_000_000
PAYLOAD = np.random.default_rng(0).integers(0, 256, SNAPLEN, dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class Plan:
    """Which frame is what: per ESP frame its SA and sequence number, per other frame its flow."""

    is_esp: np.ndarray  # bool per frame
    sa: np.ndarray  # SA index per ESP frame
    seq: np.ndarray  # sequence number per ESP frame
    flow: np.ndarray  # flow index per other frame
    truth: dict


def _put(rec: np.ndarray, off: int, values: np.ndarray | int, dtype: str) -> None:
    """Write big/little-endian integers into column `off` of every row of `rec`."""
    size = np.dtype(dtype).itemsize
    arr = np.broadcast_to(np.asarray(values, dtype=dtype), (rec.shape[0],))
    rec[:, off:off + size] = np.ascontiguousarray(arr).view(np.uint8).reshape(-1, size)


def _ipv4_checksum(rec: np.ndarray, ip: int) -> None:
    words = np.ascontiguousarray(rec[:, ip:ip + 20]).view(">u2").astype(np.uint32).sum(axis=1)
    words = (words & 0xFFFF) + (words >> 16)
    words = (words & 0xFFFF) + (words >> 16)
    _put(rec, ip + 10, (~words & 0xFFFF).astype(np.uint16), ">u2")


def sa_addresses(sa: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, spi) of SA indices: SA 2k is A->B of tunnel k, SA 2k+1 is B->A."""
    tunnel = sa >> 1
    a = (10 << 24) + (tunnel << 8) + 1  # 10.x.y.1
    b = (172 << 24) + (16 << 16) + (tunnel << 8) + 2  # 172.16+.x.2
    back = (sa & 1).astype(bool)
    spi = 0xC0000000 + sa * 7919 + 1
    return np.where(back, b, a), np.where(back, a, b), spi


def esp_frames(sa: np.ndarray, seq: np.ndarray, wire: np.ndarray, encap: str) -> np.ndarray:
    """Captured octets (N x 128) of ESP frames (Ethernet/IPv4/ESP or Ethernet/IPv4/UDP 4500/ESP)."""
    src, dst, spi = sa_addresses(sa.astype(np.int64))
    rec = _ip_frames(src, dst, wire, 17 if encap == "udp" else 50, seq)
    l4 = 34
    if encap == "udp":
        _put(rec, l4, 4500, ">u2")
        _put(rec, l4 + 2, 4500, ">u2")
        _put(rec, l4 + 4, (wire - 34).astype(np.uint16), ">u2")
        _put(rec, l4 + 6, 0, ">u2")
        l4 += 8
    _put(rec, l4, spi.astype(np.uint32), ">u4")
    _put(rec, l4 + 4, seq.astype(np.uint32), ">u4")
    return rec


def other_frames(flow: np.ndarray, wire: np.ndarray) -> np.ndarray:
    """Non-IPsec frames, 192.168/16 -> 198.51/16: TCP to port 443 (even flows), UDP to 20000 (odd)."""
    flow = flow.astype(np.int64)
    tcp = (flow & 1) == 0
    src = (192 << 24) + (168 << 16) + (flow & 0xFFFF)
    dst = (198 << 24) + (51 << 16) + ((flow * 31) & 0xFFFF)
    rec = _ip_frames(src, dst, wire, np.where(tcp, 6, 17), flow)
    _put(rec, 34, (10_000 + flow % 50_000).astype(np.uint16), ">u2")  # never 500/4500
    _put(rec, 36, np.where(tcp, 443, 20_000).astype(np.uint16), ">u2")
    udp_rows = ~tcp
    rec[udp_rows, 38:40] = np.ascontiguousarray((wire[udp_rows] - 34).astype(">u2")).view(np.uint8).reshape(-1, 2)
    rec[udp_rows, 40:42] = 0
    rec[tcp, 46] = 0x50  # data offset 5
    rec[tcp, 47] = 0x10  # ACK
    return rec


def _ip_frames(src: np.ndarray, dst: np.ndarray, wire: np.ndarray, proto: np.ndarray | int,
               ident: np.ndarray) -> np.ndarray:
    rec = np.empty((len(src), SNAPLEN), dtype=np.uint8)
    rec[:] = PAYLOAD
    rec[:, 0:6] = (0x02, 0, 0, 0, 0, 0x01)
    rec[:, 6:12] = (0x02, 0, 0, 0, 0, 0x02)
    _put(rec, 12, 0x0800, ">u2")
    rec[:, 14] = 0x45
    rec[:, 15] = 0
    _put(rec, 16, (wire - 14).astype(np.uint16), ">u2")
    _put(rec, 18, (ident & 0xFFFF).astype(np.uint16), ">u2")
    _put(rec, 20, 0x4000, ">u2")  # DF, no fragment
    rec[:, 22] = 64
    rec[:, 23] = proto
    _put(rec, 24, 0, ">u2")
    _put(rec, 26, src.astype(np.uint32), ">u4")
    _put(rec, 30, dst.astype(np.uint32), ">u4")
    _ipv4_checksum(rec, 14)
    return rec


def plan(packets: int, sas: int, loss: float, mix: float, flows: int, rng: np.random.Generator) -> Plan:
    """Decide every frame; the true loss counts missing numbers strictly inside each SA's kept range."""
    n_esp = packets if mix >= 1.0 else round(packets * mix)
    rounds = -(-int(n_esp / (1.0 - loss)) // sas) + 1
    order = np.argsort(rng.random((rounds, sas)), axis=1).astype(np.int32).ravel()
    seq = np.repeat(np.arange(1, rounds + 1, dtype=np.int64), sas)
    keep = rng.random(order.size) >= loss
    sa, seq = order[keep][:n_esp], seq[keep][:n_esp]
    if sa.size < n_esp:
        raise SystemExit("internal: not enough slots for the ESP frames")
    counts = np.bincount(sa, minlength=sas)
    first = np.full(sas, -1, dtype=np.int64)
    last = np.full(sas, -1, dtype=np.int64)
    first[sa[::-1]] = seq[::-1]  # the earliest write wins in reversed order
    last[sa] = seq
    lost = np.where(counts > 0, last - first + 1 - counts, 0)
    is_esp = np.ones(packets, dtype=bool)
    if n_esp < packets:
        is_esp[:] = False
        is_esp[rng.choice(packets, n_esp, replace=False)] = True
    flow = rng.integers(0, flows, packets - n_esp)
    return Plan(is_esp, sa, seq, flow, _truth(packets, counts, lost))


def zipf_plan(packets: int, sas: int, loss: float, rng: np.random.Generator) -> Plan:
    """A concentrator: both SAs of tunnel k (from 1) get a share of the packets proportional to 1/k,
    every SA at least its first number; packets of all SAs are shuffled together, each SA's in order,
    and before each packet but an SA's first one number is missing with probability loss/(1-loss)."""
    if sas % 2 or packets < sas:
        raise SystemExit("zipf popularity needs an even number of SAs and at least one packet per SA")
    weight = np.repeat(1.0 / np.arange(1, sas // 2 + 1), 2)
    counts = 1 + rng.multinomial(packets - sas, weight / weight.sum())
    sa = np.repeat(np.arange(sas, dtype=np.int32), counts)
    rng.shuffle(sa)
    order = np.argsort(sa, kind="stable")  # frames grouped by SA, each SA's in capture order
    grouped = sa[order]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    nth = np.arange(packets) - starts[grouped]  # 0 for an SA's first packet
    gap = (nth > 0) & (rng.random(packets) < loss / (1.0 - loss))
    missing = np.cumsum(gap)
    seq = np.empty(packets, dtype=np.int64)
    seq[order] = nth + 1 + missing - missing[starts][grouped]
    lost = np.bincount(grouped, weights=gap, minlength=sas).astype(np.int64)
    return Plan(np.ones(packets, dtype=bool), sa, seq, np.zeros(0, dtype=np.int64), _truth(packets, counts, lost))


def _truth(packets: int, counts: np.ndarray, lost: np.ndarray) -> dict:
    """Per SA index: packets captured and numbers lost (the SAs with no packet are not in the capture)."""
    return {"packets": packets, "esp_packets": int(counts.sum()), "sas": int((counts > 0).sum()),
            "lost_total": int(lost.sum()), "lost": lost.tolist(), "sa_packets": counts.tolist()}


def sa_truth(truth: dict) -> dict[tuple[str, str, int], tuple[int, int]]:
    """(src, dst, spi) -> (packets, lost) of every SA in the capture, as `espmeter read --json` keys it."""
    counts = np.asarray(truth["sa_packets"])
    idx = np.flatnonzero(counts)
    src, dst, spi = sa_addresses(idx.astype(np.int64))
    dotted = [str(ipaddress.IPv4Address(int(a))) for a in np.concatenate((src, dst))]
    return {(dotted[i], dotted[len(idx) + i], int(spi[i])): (int(counts[n]), int(truth["lost"][n]))
            for i, n in enumerate(idx)}


def write(path: Path, p: Plan, encap: str, rng: np.random.Generator) -> None:
    """Write the classic pcap in chunks of CHUNK frames."""
    n = p.is_esp.size
    esp_at = np.cumsum(p.is_esp) - 1  # index into sa/seq for ESP frames
    other_at = np.cumsum(~p.is_esp) - 1
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, 1))
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            out.write(_chunk(p, encap, rng, start, stop, esp_at, other_at).tobytes())


def _chunk(p: Plan, encap: str, rng: np.random.Generator, start: int, stop: int,
           esp_at: np.ndarray, other_at: np.ndarray) -> np.ndarray:
    m = stop - start
    rec = np.empty((m, REC), dtype=np.uint8)
    ts = T0 * 1_000_000 + np.arange(start, stop, dtype=np.int64) * DT_US
    wire = rng.integers(200, 1401, m)
    _put(rec, 0, (ts // 1_000_000).astype(np.uint32), "<u4")
    _put(rec, 4, (ts % 1_000_000).astype(np.uint32), "<u4")
    _put(rec, 8, SNAPLEN, "<u4")
    _put(rec, 12, wire.astype(np.uint32), "<u4")
    esp = p.is_esp[start:stop]
    if esp.any():
        idx = esp_at[start:stop][esp]
        rec[esp, 16:] = esp_frames(p.sa[idx], p.seq[idx], wire[esp], encap)
    if not esp.all():
        idx = other_at[start:stop][~esp]
        rec[~esp, 16:] = other_frames(p.flow[idx], wire[~esp])
    return rec


def generate(path: Path, packets: int, sas: int = 2000, loss: float = 0.005, encap: str = "esp",
             mix: float = 1.0, flows: int = 4000, seed: int = 1, popularity: str = "uniform") -> dict:
    """Write `path` and `path.truth.json`; return the truth (without the per-SA lists)."""
    rng = np.random.default_rng(seed)
    if popularity == "zipf":
        if mix < 1.0:
            raise SystemExit("zipf popularity makes an ESP-only capture (no --mix)")
        p = zipf_plan(packets, sas, loss, rng)
    else:
        p = plan(packets, sas, loss, mix, flows, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, p, encap, rng)
    truth = {**p.truth, "encap": encap, "mix": mix, "loss": loss, "seed": seed, "popularity": popularity}
    truth_path(path).write_text(json.dumps(truth))
    return {k: v for k, v in truth.items() if k not in ("lost", "sa_packets")}


def truth_path(path: Path) -> Path:
    return path.with_name(path.name + ".truth.json")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--sas", type=int, default=2000, help="number of SAs (even: tunnel pairs)")
    ap.add_argument("--loss", type=float, default=0.005, help="fraction of sequence numbers dropped")
    ap.add_argument("--encap", choices=("esp", "udp"), default="esp")
    ap.add_argument("--mix", type=float, default=1.0, help="fraction of frames that are ESP")
    ap.add_argument("--flows", type=int, default=4000, help="non-IPsec flows in a mixed capture")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--popularity", choices=("uniform", "zipf"), default="uniform",
                    help="uniform: round-robin SAs; zipf: a concentrator (tunnel k gets a share 1/k)")
    a = ap.parse_args(argv)
    print(json.dumps(generate(a.out, a.packets, a.sas, a.loss, a.encap, a.mix, a.flows, a.seed, a.popularity)))


if __name__ == "__main__":
    main()
