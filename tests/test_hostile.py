"""Hostile input: damaged capture files and fuzzed frames never crash, and every frame is accounted for."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import decode as d
from agent.meter import Meter, MeterSettings
from agent.report import document
from tests.conftest import run_read
from tests.gt.scenarios import registry

SCENARIOS = registry()


def _pcap_header(snaplen: int = 65535, linktype: int = 1) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def test_truncated_file_counts_frames_before_the_damage(tmp_path: Path) -> None:
    good = tmp_path / "good.pcap"
    SCENARIOS["random_loss"]().write(good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])
    res = run_read(cut)
    assert res.returncode == 3
    assert res.stderr.count("\n") == 1 and "damaged" in res.stderr
    frames = json.loads(res.stdout)["capture"]["frames"]
    assert frames > 0
    # exactly the complete records of the first half: each is a 16-byte header plus its caplen
    off, complete = 24, 0
    while off + 16 <= len(data) // 2 + 7:
        caplen = struct.unpack_from("<I", data, off + 8)[0]
        if off + 16 + caplen > len(data) // 2 + 7:
            break
        off += 16 + caplen
        complete += 1
    assert frames == complete


def test_garbage_after_header(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pcap"
    path.write_bytes(_pcap_header() + random.Random(3).randbytes(5000))
    res = run_read(path)
    assert res.returncode == 3 and res.stderr.count("\n") == 1
    assert json.loads(res.stdout)["capture"]["frames"] == 0


def test_not_a_capture_and_empty_and_missing(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a capture\n")
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    for path in (text, empty, tmp_path / "missing.pcap"):
        res = run_read(path)
        assert res.returncode == 2, res
        assert res.stdout == "" and res.stderr.count("\n") == 1 and str(path) in res.stderr


def test_snaplen_zero_and_frames_longer_than_snaplen(tmp_path: Path) -> None:
    """A header claiming snaplen 0 and records whose caplen exceeds the header's snaplen."""
    frame = bytes(14) + b"\x45" + bytes(19)
    path = tmp_path / "snap0.pcap"
    records = b"".join(struct.pack("<IIII", 1, i, len(frame), 1500) + frame for i in range(3))
    path.write_bytes(_pcap_header(snaplen=0) + records)
    res = run_read(path)
    assert res.returncode in (0, 3) and res.stderr.count("\n") <= 1
    doc = json.loads(res.stdout)
    assert sum(doc["capture"]["classes"].values()) == doc["capture"]["frames"]
    small = tmp_path / "small.pcap"
    small.write_bytes(_pcap_header(snaplen=20) + records)
    res = run_read(small)
    assert res.returncode in (0, 3)
    doc = json.loads(res.stdout)
    assert sum(doc["capture"]["classes"].values()) == doc["capture"]["frames"]


def _seed_frames() -> list[tuple[int, bytes]]:
    """Real frames of every link type and encapsulation, from the ground-truth scenarios."""
    out = []
    for name in ("nat_t", "ipv6_ext", "vlan", "sll", "sll2", "raw", "null", "fragments_all", "esn_wrap"):
        sc = SCENARIOS[name]()
        for e in sc.build()[:60]:
            out.append((sc.linktype, e.data))
    return out


SEEDS = _seed_frames()


def _batch(frames: list[bytes]) -> tuple[bytes, bytes]:
    buf = bytearray()
    meta = bytearray()
    for i, f in enumerate(frames):
        meta += struct.pack("=IIII", 1000, i, len(buf), len(f))
        buf += f
    return bytes(buf), bytes(meta)


mutation = st.tuples(
    st.integers(min_value=0, max_value=len(SEEDS) - 1),
    st.integers(min_value=0, max_value=200),  # truncate to
    st.lists(st.tuples(st.integers(min_value=0, max_value=199), st.integers(min_value=0, max_value=255)),
             max_size=6),  # byte overwrites
)


PATHS = {
    "inline-c": MeterSettings(),  # agent/_fastpath.c where it is built
    "inline-python": MeterSettings(compiled=False),
    "reference": MeterSettings(fast_path=False),
}


@settings(max_examples=300, deadline=None)
@given(st.lists(mutation, min_size=1, max_size=40), st.sampled_from(sorted(PATHS)))
def test_fuzzed_frames_never_crash_and_all_land_in_one_class(mutations: list, path: str) -> None:
    by_link: dict[int, list[bytes]] = {}
    for idx, cut, writes in mutations:
        linktype, data = SEEDS[idx]
        frame = bytearray(data[:cut] if cut < len(data) else data)
        for pos, value in writes:
            if pos < len(frame):
                frame[pos] = value
        by_link.setdefault(linktype, []).append(bytes(frame))
    docs = []
    for s in (PATHS[path], PATHS["reference"]):
        meter = Meter(s, keep_history=True)
        for linktype, frames in by_link.items():
            buf, meta = _batch(frames)
            meter.feed(buf, meta, d.DLT_RAW if linktype == d.DLT_LINKTYPE_RAW else linktype)
        meter.finish()
        assert meter.frames == sum(len(f) for f in by_link.values())
        assert sum(meter.classes.values()) == meter.frames
        for sa in meter.table.all_sas():
            assert sa.lost + (sa.datagrams - sa.duplicates - sa.late) == sa.expected
        docs.append(document(meter, "fuzz", 0))
    assert docs[0] == docs[1]


def test_unknown_link_type_is_malformed() -> None:
    meter = Meter(MeterSettings())
    buf, meta = _batch([b"\x01\x02\x03\x04" * 10])
    meter.feed(buf, meta, 147)  # DLT_USER0
    meter.finish()
    assert meter.classes[d.MALFORMED] == 1
