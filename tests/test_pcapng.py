"""pcapng read block by block (agent.pcapng): the interface a packet was captured on is part of its
observation point; single-interface files give what the pcap of the same frames gives."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from agent import compiled, pcapng
from agent.meter import MeterSettings
from agent.offline import meter_file
from agent.pcapng import PcapngSource
from tests.conftest import REPO, run_read
from tests.gt import registry
from tests.test_groundtruth import check

SCENARIOS = registry()


def _without_file(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "capture": {k: v for k, v in doc["capture"].items() if k != "file"}}


@pytest.mark.parametrize("name", [n for n, make in SCENARIOS.items() if make().fmt == "pcap"])
def test_every_scenario_as_pcapng_reads_as_its_pcap(name: str, tmp_path: Path) -> None:
    """Exact truth for the pcapng file (gt knows `interface` is if0), and the pcap's document otherwise."""
    as_pcapng = dataclasses.replace(SCENARIOS[name](), fmt="pcapng")
    got = _without_file(check(as_pcapng, tmp_path))
    sc = SCENARIOS[name]()
    path = tmp_path / f"{name}.pcap"
    sc.write(path)
    want = _without_file(run_read(path, "--events").json())  # check() reads with --events too
    for sa in want["sas"]:
        if sa["interface"] is None:  # a pcap file knows no interface; its pcapng twin has one, unnamed
            sa["interface"] = "if0"
    assert got == want


@pytest.mark.skipif(not (shutil.which("mergecap") and shutil.which("editcap")), reason="needs wireshark-common")
def test_mergecap_file_with_nanosecond_interface(tmp_path: Path) -> None:
    """A real tool's multi-interface file: mergecap of one capture with itself, the second copy at
    nanosecond resolution. Today's libpcap reading makes every second datagram a duplicate."""
    SCENARIOS["random_loss"]().write(tmp_path / "wan.pcap")
    one = run_read(tmp_path / "wan.pcap").json()
    subprocess.run(["editcap", "-F", "nsecpcap", str(tmp_path / "wan.pcap"), str(tmp_path / "lan.pcap")], check=True)
    merged = tmp_path / "merged.pcapng"
    subprocess.run(["mergecap", "-w", str(merged), str(tmp_path / "wan.pcap"), str(tmp_path / "lan.pcap")],
                   check=True)
    doc = run_read(merged).json()
    assert doc["capture"]["frames"] == 2 * one["capture"]["frames"]
    skip = ("interface", "tunnel", "peer_spi")  # pairing may pick either copy's partner (same first-seen)
    for interface in ("if0", "if1"):
        got = sorted(({k: v for k, v in sa.items() if k not in skip} for sa in doc["sas"]
                      if sa["interface"] == interface), key=lambda sa: sa["spi"])
        want = sorted(({k: v for k, v in sa.items() if k not in skip} for sa in one["sas"]), key=lambda sa: sa["spi"])
        assert got == want, interface


def test_bpf_and_damage(tmp_path: Path) -> None:
    path = tmp_path / "two.pcapng"
    SCENARIOS["pcapng_two_interfaces"]().write(path)
    doc = run_read(path, "--bpf", "host 10.0.3.1").json()
    assert sorted((sa["interface"], sa["spi"]) for sa in doc["sas"]) == [("if2", 0x2A03), ("if2", 0x2A04)]
    bad = run_read(path, "--bpf", "hots 10.0.3.1")
    assert bad.returncode == 2 and bad.stderr.startswith("espmeter: BPF filter 'hots 10.0.3.1':"), bad.stderr
    full = run_read(path).json()
    cut = tmp_path / "cut.pcapng"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2 + 7])  # ends inside a block
    res = run_read(cut)
    assert res.returncode == 3, res.stderr
    assert "damaged capture" in res.stderr
    tshark = subprocess.run(["tshark", "-r", str(cut)], capture_output=True, text=True)  # counts up to the cut
    counted = json.loads(res.stdout)["capture"]["frames"]
    assert 0 < counted == len(tshark.stdout.splitlines()) < full["capture"]["frames"]


# ---- The fast path of a run (agent/_fastpath.c index_pcapng, its Python twin index_epbs) ----------------
# Three readers of every file: the C indexer, the Python twin, and no fast path at all (every block through
# the block-by-block reader, which the fast path only shortens): the same batches, errors and documents.

def _block_by_block(buf: bytes, pos: int, *_: object) -> tuple[bytes, int]:
    return b"", pos


def _compiled_index() -> Callable[..., tuple[bytes, int]]:
    if compiled.fastpath is None:
        if os.environ.get("CI") and not os.environ.get("ESPMETER_PURE_PYTHON"):
            pytest.fail("agent/_fastpath.c is not built (pip install -e .)")
        pytest.skip("agent/_fastpath.c not built in this tree (setup.py build_ext --inplace)")
    return compiled.fastpath.index_pcapng


def _paths() -> dict[str, Callable[..., tuple[bytes, int]]]:
    return {"C": _compiled_index(), "Python": pcapng.index_epbs, "block by block": _block_by_block}


def _blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of every block of a little-endian pcapng file written by tests/gt."""
    out, pos = [], 0
    while pos + 12 <= len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        out.append((btype, data[pos + 8:pos + blen - 4]))
        pos += blen
    return out


def _tsresol(units: int) -> int:
    """The if_tsresol octet of `units` per second (10^e or 2^e)."""
    exp = len(str(units)) - 1
    if units == 10**exp:
        return exp
    assert units & (units - 1) == 0, units
    return 0x80 | (units.bit_length() - 1)


def variant(data: bytes, order: str = "<", units: tuple[int, ...] = (), offsets: tuple[int, ...] = ()) -> bytes:
    """A gt pcapng file in byte order `order`, interface i stamping in units[i] per second (if_tsresol)
    with if_tsoffset offsets[i]: the same instants, rounded down to the unit (where 64 bits hold them)."""
    parts, nth = [], 0
    resol: list[int] = []
    shift: list[int] = []
    for btype, body in _blocks(data):
        if btype == 0x0A0D0D0A:
            body = struct.pack(order + "IHHq", *struct.unpack_from("<IHHq", body)) + body[16:]
        elif btype == 1:
            head, opts, at = struct.pack(order + "HHI", *struct.unpack_from("<HHI", body)), [], 8
            while at + 4 <= len(body):
                code, length = struct.unpack_from("<HH", body, at)
                if code == 0:
                    break
                opts.append(struct.pack(order + "HH", code, length) + body[at + 4:at + 4 + length + (-length % 4)])
                at += 4 + length + (-length % 4)
            resol.append(units[nth] if nth < len(units) else 1_000_000)
            shift.append(offsets[nth] if nth < len(offsets) else 0)
            if nth < len(units):
                opts.append(struct.pack(order + "HHB3x", 9, 1, _tsresol(units[nth])))
            if nth < len(offsets):
                opts.append(struct.pack(order + "HHq", 14, 8, offsets[nth]))
            body = head + b"".join(opts) + struct.pack(order + "HH", 0, 0)
            nth += 1
        elif btype == 6:
            ifid, hi, lo, caplen, wire = struct.unpack_from("<IIIII", body)
            stamp = (((hi << 32) | lo) - shift[ifid] * 1_000_000) * resol[ifid] // 1_000_000
            assert stamp >= 0, (ifid, stamp)
            stamp %= 2**64  # what 64 bits of a unit beyond 2^64 per second can say: less than a second
            body = struct.pack(order + "IIIII", ifid, stamp >> 32, stamp & 0xFFFFFFFF, caplen, wire) + body[20:]
        parts.append(struct.pack(order + "II", btype, len(body) + 12) + body + struct.pack(order + "I", len(body) + 12))
    return b"".join(parts)


def batches(path: Path, index: Callable[..., tuple[bytes, int]], monkeypatch: pytest.MonkeyPatch,
            bpf: str | None = None, **kw: int) -> tuple[list[tuple[int, bytes, int, int | None, int]], str | None]:
    """Every batch through `index`: (file offset of its buffer, meta, linktype, ifindex, progress), the error."""
    monkeypatch.setattr(pcapng, "_index", index)
    source = PcapngSource(str(path), bpf, **kw)
    out = []
    try:
        while (batch := source.read()) is not None:
            assert batch.buf is source.data
            out.append((source.consumed, batch.meta, batch.linktype, batch.ifindex, source.progress(batch)))
    finally:
        source.close()
    return out, source.error


def documents(path: Path, monkeypatch: pytest.MonkeyPatch, bpf: str | None = None) -> str:
    """The `read --json --events` document of `path`, the same through every path (else the assertion fails)."""
    docs = {}
    for name, index in _paths().items():
        monkeypatch.setattr(pcapng, "_index", index)
        result = meter_file(str(path), MeterSettings(), bpf=bpf, progress=False, events=True)
        docs[name] = json.dumps(result.doc, separators=(",", ":"))
    assert len(set(docs.values())) == 1, [name for name in docs if docs[name] != docs["block by block"]]
    return docs["C"]


def same_batches(path: Path, monkeypatch: pytest.MonkeyPatch, bpf: str | None = None,
                 **kw: int) -> tuple[list[tuple[int, bytes, int, int | None, int]], str | None]:
    got = {name: batches(path, index, monkeypatch, bpf, **kw) for name, index in _paths().items()}
    for name, value in got.items():
        assert value == got["block by block"], name
    return got["C"]


# (byte order, units per interface, if_tsoffset per interface): each scenario gets one, in turn
VARIANTS = [(">", (), ()), ("<", (10**9,), (-86_400,)), (">", (2**20,), ()), ("<", (10**15, 2**30, 1), ()),
            (">", (10**9, 10**6, 10**12), (-3600, 0, 1)), ("<", (10**21, 2**127), (7, -7))]


def _fits(data: bytes, units: tuple[int, ...], offsets: tuple[int, ...]) -> tuple[int, ...]:
    """`offsets`, and for units whose stamps would overflow 64 bits, the first second of the file."""
    first = min(((hi << 32) | lo) // 1_000_000 for btype, body in _blocks(data) if btype == 6
                for hi, lo in [struct.unpack_from("<II", body, 4)])
    return tuple(offsets[i] if i < len(offsets) else 0 if u * 2**33 < 2**64 else first for i, u in enumerate(units))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_reads_the_same_on_every_path(name: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The gt file and one variant of it (another byte order, time stamp units, offsets): the same
    batches and documents through the C indexer, its Python twin and the block-by-block reader."""
    sc = dataclasses.replace(SCENARIOS[name](), fmt="pcapng")
    plain = tmp_path / f"{name}.pcapng"
    sc.write(plain)
    data = plain.read_bytes()
    order, units, offsets = VARIANTS[sorted(SCENARIOS).index(name) % len(VARIANTS)]
    other = tmp_path / f"{name}-variant.pcapng"
    other.write_bytes(variant(data, order, units, _fits(data, units, offsets)))
    want = documents(plain, monkeypatch)
    got = documents(other, monkeypatch)
    for path in (plain, other):
        frames, error = same_batches(path, monkeypatch)
        assert error is None and frames
    if all(u % 10**6 == 0 and u <= 10**15 for u in units[:len(sc.if_names)]):  # every microsecond kept
        assert got == want.replace(json.dumps(str(plain)), json.dumps(str(other)))


def _frames(result: tuple[list[tuple[int, bytes, int, int | None, int]], str | None]) -> bytes:
    """Every batch's meta with file offsets instead of buffer offsets, and its link type and ifindex."""
    return b"".join(struct.pack("=IIIIIi", sec, usec, at + off, caplen, linktype, -1 if ifindex is None else ifindex)
                    for at, meta, linktype, ifindex, _ in result[0]
                    for sec, usec, off, caplen in struct.iter_unpack("=IIII", meta))


def test_small_chunks_and_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks that end inside every few blocks and small batches: the frames of one big chunk, every path."""
    path = tmp_path / "two.pcapng"
    SCENARIOS["pcapng_two_interfaces"]().write(path)
    path.write_bytes(variant(path.read_bytes(), ">", (10**9, 2**20)))
    want = _frames(same_batches(path, monkeypatch))
    for chunk, batch in ((1000, 65536), (4096, 7), (1 << 16, 1), (1 << 20, 100)):
        monkeypatch.setattr(pcapng, "CHUNK", chunk)
        got = same_batches(path, monkeypatch, batch=batch)
        assert got[1] is None and _frames(got) == want, (chunk, batch)


def test_sections_of_both_byte_orders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three sections (little-endian; big-endian nanoseconds with offsets; little-endian 2^-20 s), with
    and without --bpf: interfaces numbered over the file, every path the same."""
    two = tmp_path / "two.pcapng"
    SCENARIOS["pcapng_two_interfaces"]().write(two)
    one = tmp_path / "one.pcapng"
    dataclasses.replace(SCENARIOS["reorder"](), fmt="pcapng").write(one)
    path = tmp_path / "sections.pcapng"
    path.write_bytes(one.read_bytes() + variant(two.read_bytes(), ">", (10**9, 10**9, 10**9), (-5, 0, 3))
                     + variant(one.read_bytes(), "<", (2**20,)))
    doc = json.loads(documents(path, monkeypatch))
    assert {sa["interface"] for sa in doc["sas"]} == {"if0", "wan", "lan", "if3", "if4"}
    parts = [json.loads(documents(p, monkeypatch))["capture"]["frames"] for p in (one, two, one)]
    assert doc["capture"]["frames"] == sum(parts)
    assert [ifindex for _, _, _, ifindex, _ in same_batches(path, monkeypatch)[0]][-1] == 4
    for bpf in ("host 10.0.3.1", "esp"):
        documents(path, monkeypatch, bpf)
        same_batches(path, monkeypatch, bpf)


def _epb_offsets(data: bytes, order: str) -> list[int]:
    out, pos = [], 0
    while pos + 12 <= len(data):
        btype, blen = struct.unpack_from(order + "II", data, pos)
        if btype == 6:
            out.append(pos)
        pos += blen
    return out


def test_damage_is_found_where_the_block_reader_finds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block in the middle of a run with a bad length, a short block, a caplen beyond its block, an unknown
    interface, a length beyond the file, another type; files cut inside the last blocks: the same frames,
    error text and position through every path."""
    one = tmp_path / "one.pcapng"
    dataclasses.replace(SCENARIOS["reorder"](), fmt="pcapng").write(one)
    errors = set()
    for order, units in (("<", ()), (">", (10**9,))):
        data = variant(one.read_bytes(), order, units)
        data = data[:_epb_offsets(data, order)[80]]  # 80 frames (the cuts are many)
        epbs = _epb_offsets(data, order)
        at = epbs[len(epbs) // 2]
        (blen,) = struct.unpack_from(order + "I", data, at + 4)
        cases = {f"cut {cut}": data[:cut] for cut in range(epbs[-2], len(data))}
        for name, field, value in (("bad length", 4, 30), ("odd length", 4, blen + 2), ("short", 4, 28),
                                   ("beyond the file", 4, 1 << 30), ("caplen", 20, blen - 31),
                                   ("caplen at the end", 20, blen - 32), ("interface", 8, 9), ("type SPB", 0, 3),
                                   ("type PB", 0, 2), ("type unknown", 0, 0x99), ("type SHB", 0, 0x0A0D0D0A)):
            damaged = bytearray(data)
            struct.pack_into(order + "I", damaged, at + field, value)
            cases[name] = bytes(damaged)
        for name, damaged in cases.items():
            path = tmp_path / "damaged.pcapng"
            path.write_bytes(damaged)
            frames, error = same_batches(path, monkeypatch)
            assert sum(len(meta) for _, meta, *_ in frames) // 16 <= len(epbs), name
            if error is not None:
                errors.add(error.split(" at byte ")[0])
            if not name.startswith("cut") or name == f"cut {len(data) - 5}":
                assert json.loads(documents(path, monkeypatch))["capture"].get("error") == error, name
    assert errors == {"bad block length 30", f"bad block length {blen + 2}", "short packet block", "truncated block",
                      "packet longer than its block", "packet of unknown interface 9", "truncated block header",
                      "packet of unknown interface 0"}  # an SHB in the run: a section without interfaces


UNITS = [1, 10, 1000, 10**6, 10**9, 10**12, 10**13, 10**15, 10**19, 10**20, 10**25, 10**26, 10**127, 2, 2**10, 2**20,
         2**30, 2**44, 2**63, 2**64, 2**83, 2**84, 2**85, 2**127, 3, 999_999, 1_000_001, 2**64 - 1, 2**64 + 1]
OFFSETS = [0, 1, -1, 86_400, -2**31, 2**32, 2**63 - 1, -2**63]


def _epb(order: str, ifid: int, stamp: int, frame: bytes, pad: int = 0, btype: int = 6,
         caplen: int | None = None) -> bytes:
    body = struct.pack(order + "IIIII", ifid, stamp >> 32, stamp & 0xFFFFFFFF,
                       len(frame) if caplen is None else caplen, len(frame)) + frame + bytes(-len(frame) % 4 + pad)
    return struct.pack(order + "II", btype, len(body) + 12) + body + struct.pack(order + "I", len(body) + 12)


def test_compiled_indexer_computes_every_field(tmp_path: Path) -> None:
    """index_pcapng's records against the arithmetic of the instants themselves (fractions of a second),
    for any if_tsresol and if_tsoffset, both byte orders: seconds modulo 2^32, microseconds rounded down."""
    index = _compiled_index()
    rng = random.Random(5)
    stamps = [0, 1, 999_999, 1_000_000, 2**32 - 1, 2**32, 2**53 + 1, 2**63, 2**64 - 1,
              *(rng.randrange(2**64) for _ in range(20)), *(rng.randrange(2**44) for _ in range(20))]
    frames = [rng.randbytes(rng.randrange(0, 70)) for _ in stamps]
    for order in "<>":
        buf = b"".join(_epb(order, 3, stamp, frame, pad=4 * (i % 3))
                       for i, (stamp, frame) in enumerate(zip(stamps, frames, strict=True)))
        starts = _epb_offsets(buf, order)
        for units in UNITS:
            for offset in OFFSETS:
                meta, stop = index(buf, 0, 3, 1000, order == ">", units, offset)
                assert stop == len(buf)
                want = []
                for start, stamp, frame in zip(starts, stamps, frames, strict=True):
                    t = Fraction(stamp, units)
                    want.append(((math.floor(t) + offset) % 2**32, math.floor((t - math.floor(t)) * 10**6),
                                 start + 28, len(frame)))
                assert list(struct.iter_unpack("=IIII", meta)) == want, (order, units, offset)
                assert pcapng.index_epbs(buf, 0, 3, 1000, order == ">", units, offset) == (meta, stop)
                assert pcapng.stamp(stamps[-1], units, offset) == want[-1][:2]


def test_compiled_indexer_stops_where_its_twin_stops() -> None:
    """index_pcapng and index_epbs on random runs of blocks (other types and interfaces, bad and short
    lengths, caplens beyond their block, cut anywhere), from any block, with any room."""
    index = _compiled_index()
    rng = random.Random(11)
    taken = stops = 0
    for _ in range(400):
        order = rng.choice("<>")
        parts = []
        for _ in range(rng.randrange(0, 12)):
            frame = rng.randbytes(rng.randrange(0, 40))
            block = bytearray(_epb(order, rng.choice((0, 0, 0, 1)), rng.randrange(2**64), frame, rng.choice((0, 0, 4)),
                                   rng.choice((6, 6, 6, 6, 3, 1, 0x0A0D0D0A))))
            kind = rng.randrange(12)
            if kind == 0:  # a bad, short or odd length
                struct.pack_into(order + "I", block, 4, rng.choice((0, 12, 28, 31, 33, len(block) + 4, 2**32 - 4)))
            elif kind == 1:  # a caplen at or beyond its block
                struct.pack_into(order + "I", block, 20, len(block) - 32 + rng.choice((0, 1, 4, 2**31)))
            parts.append(bytes(block))
        buf = b"".join(parts)
        buf = buf[:rng.randrange(len(buf) + 1)] if rng.random() < 0.5 else buf
        starts = [0, *itertools.accumulate(len(p) for p in parts)]
        for start in {*starts[:4], rng.randrange(len(buf) + 1), len(buf) + 3}:
            for room in (0, 1, 2, 65536):
                for units, offset in ((10**6, 0), (10**9, -3), (rng.choice(UNITS), rng.choice(OFFSETS))):
                    args = (buf, start, rng.choice((0, 0, 1)), room, order == ">", units, offset)
                    got = index(*args)
                    assert got == pcapng.index_epbs(*args), args[1:]
                    taken += len(got[0]) // 16
                    stops += got[1] < len(buf)
    assert taken > 3000 and stops > 3000
    for bad in ((b"", -1, 0, 1, False, 10**6, 0), (b"", 0, 0, -1, False, 10**6, 0), (b"", 0, 0, 1, False, 0, 0),
                (b"", 0, 0, 1, False, -(2**70), 0)):
        with pytest.raises(ValueError):
            index(*bad)


def test_read_of_pcapng_imports_no_numpy(tmp_path: Path) -> None:
    """Neither path of the reader needs numpy (its import is a tenth of a second of start-up)."""
    path = tmp_path / "two.pcapng"
    SCENARIOS["pcapng_two_interfaces"]().write(path)
    code = ("import sys\nfrom agent.cli import main\ncode = main(['read', '--json', sys.argv[1]])\n"
            "sys.exit(10 if 'numpy' in sys.modules else code)")
    for pure in ("", "1"):
        res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO,
                             timeout=120, env={**os.environ, "ESPMETER_PURE_PYTHON": pure})
        assert res.returncode == 0 and json.loads(res.stdout)["capture"]["frames"] > 1000, (pure, res.returncode)


def test_file_cut_short_while_read_and_pipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is mapped a window at a time: a window beyond the end of a file cut short after it was
    opened is damage there, not a traceback; a pipe is neither mapped nor are its first bytes taken:
    libpcap reads it whole, as it reads standard input (the same document as the file)."""
    path = tmp_path / "two.pcapng"
    SCENARIOS["pcapng_two_interfaces"]().write(path)
    size = path.stat().st_size
    monkeypatch.setattr(pcapng, "CHUNK", 8192)
    source = PcapngSource(str(path))
    assert source.read() is not None
    os.truncate(path, size // 2)
    while source.read() is not None:
        pass
    source.close()
    assert source.error is not None and source.error.startswith("file cut short while read at byte "), source.error
    assert size // 2 - 2 * 8192 < int(source.error.split()[-1]) <= size // 2
    # one interface: libpcap, which reads pipes and standard input, does not say which a packet came from
    dataclasses.replace(SCENARIOS["random_loss"](), fmt="pcapng").write(path)
    fifo = tmp_path / "pipe.pcapng"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat {path} > {fifo}"])
    try:
        res = run_read(fifo)
    finally:
        writer.kill()
        writer.wait()
    assert res.returncode == 0 and res.stderr == "", res
    piped, whole = json.loads(res.stdout), json.loads(run_read(path).stdout)
    assert piped["capture"].pop("file") == str(fifo)
    whole["capture"].pop("file")
    assert [sa.pop("interface") for sa in whole["sas"]] == ["if0"] * len(whole["sas"])  # the IDB's name
    assert [sa.pop("interface") for sa in piped["sas"]] == [None] * len(piped["sas"])
    assert piped == whole and whole["sas"]
