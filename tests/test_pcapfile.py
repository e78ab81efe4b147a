"""Classic pcap files through the memory-mapped reader (agent.pcapfile) read exactly as through libpcap
(pcapy-ng, agent.capture.OfflineSource): the same frames, time stamps and damage messages, and the same
`read --json` document, byte for byte, on every ground-truth scenario and on damaged files."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from agent import compiled
from agent.capture import OfflineSource
from agent.meter import MeterSettings
from agent.offline import Source, _source, meter_file, time_span
from agent.pcapfile import PcapFileSource, index_records, pcap_format
from tests.conftest import REPO, run_read
from tests.gt import registry

SCENARIOS = registry()
PCAP_SCENARIOS = [n for n, make in SCENARIOS.items() if make().fmt == "pcap"]


def document(path: Path, source: Source) -> str:
    """`read --json --events` as the CLI writes it, through `source`."""
    result = meter_file(str(path), MeterSettings(), progress=False, events=True, source=source)
    return json.dumps(result.doc, separators=(",", ":"))


def pcapy_document(path: Path) -> str:
    return document(path, OfflineSource(str(path)))


def mapped(path: Path, **kw: int) -> PcapFileSource:
    source = PcapFileSource.open(str(path), **kw)
    assert source is not None, f"{path}: not read by agent.pcapfile"
    return source


def frames(source: Source) -> tuple[list[tuple[int, int, bytes]], str | None]:
    """Every frame a reader returns (sec, usec, captured bytes), and its error."""
    out = []
    try:
        while (batch := source.read()) is not None:
            for sec, usec, off, caplen in struct.iter_unpack("=IIII", batch.meta):
                out.append((sec, usec, bytes(batch.buf[off:off + caplen])))
    finally:
        source.close()
    return out, source.error


def records(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every record of a little-endian pcap file written by tests/gt."""
    out, off = [], 24
    while off + 16 <= len(data):
        (caplen,) = struct.unpack_from("<I", data, off + 8)
        out.append((off, 16 + caplen))
        off += 16 + caplen
    return out


def rewrite(data: bytes, order: str = "<", nanos: bool = False, snaplen: int | None = None) -> bytes:
    """The same capture in another byte order and/or with nanosecond stamps (the same instants)."""
    magic, major, minor, zone, sigfigs, snap, link = struct.unpack_from("<IHHiIII", data)
    magic = 0xA1B23C4D if nanos else magic
    parts = [struct.pack(order + "IHHiIII", magic, major, minor, zone, sigfigs,
                         snap if snaplen is None else snaplen, link)]
    for off, length in records(data):
        sec, usec, caplen, wire = struct.unpack_from("<IIII", data, off)
        parts.append(struct.pack(order + "IIII", sec, usec * 1000 if nanos else usec, caplen, wire))
        parts.append(data[off + 16:off + length])
    return b"".join(parts)


@pytest.mark.parametrize("name", PCAP_SCENARIOS)
def test_every_scenario_reads_as_libpcap_reads_it(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.pcap"
    SCENARIOS[name]().write(path)
    assert isinstance(_source(str(path), None), PcapFileSource)  # what `read` uses on it
    assert document(path, mapped(path)) == pcapy_document(path)


def test_time_span_is_the_frames_span(tmp_path: Path) -> None:
    """`read --plot`'s bin size: first to last frame, through the mapped reader, damaged files too."""
    path = tmp_path / "outage.pcap"
    SCENARIOS["outage"]().write(path)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(path.read_bytes()[:-5])
    for capture in (path, cut):
        stamps = [sec + usec * 1e-6 for sec, usec, _ in frames(OfflineSource(str(capture)))[0]]
        assert time_span(str(capture)) == stamps[-1] - stamps[0] > 1


def test_batches_and_windows_do_not_change_the_frames(tmp_path: Path) -> None:
    """Tiny windows (every record straddles one) and batches: the frames of libpcap, in order."""
    path = tmp_path / "fragments_all.pcap"
    SCENARIOS["fragments_all"]().write(path)
    want = frames(OfflineSource(str(path)))
    assert len(want[0]) == 318 and want[1] is None
    for batch, window in ((7, 100), (1, 4096), (1000, 50_000)):
        assert frames(mapped(path, batch=batch, window=window)) == want, (batch, window)


@pytest.mark.parametrize("order,nanos", [(">", False), ("<", True), (">", True)])
@pytest.mark.parametrize("name", ["random_loss", "vlan", "raw", "sll2", "esn_wrap"])
def test_byte_order_and_nanosecond_files(name: str, order: str, nanos: bool, tmp_path: Path) -> None:
    plain = tmp_path / f"{name}.pcap"
    SCENARIOS[name]().write(plain)
    other = tmp_path / f"{name}-{'be' if order == '>' else 'le'}-{'ns' if nanos else 'us'}.pcap"
    other.write_bytes(rewrite(plain.read_bytes(), order, nanos))
    fmt = pcap_format(str(other))
    assert fmt is not None and fmt.nanos == nanos and fmt.swapped == (order == ">")
    got = document(other, mapped(other))
    assert got == pcapy_document(other)
    # the same instants: the document of the plain file, but for its name
    assert got == document(plain, mapped(plain)).replace(json.dumps(str(plain)), json.dumps(str(other)))


def test_stamps_libpcap_divides_as_it_does(tmp_path: Path) -> None:
    """Nanosecond fields of 2^31 and above: a signed int32 in this machine's byte order, unsigned in
    a swapped file (libpcap's SWAPLONG); seconds past 2^31 and microsecond fields past 10^6 pass through."""
    frame = bytes(range(60))
    stamps = [(1, 999_999_999), (0x80000001, 0x7FFFFFFF), (5, 0x80000000), (5, 0xFFFFFFFF), (0xFFFFFFFF, 3000),
              (7, 1_999_999_999)]
    seen = set()
    for order in "<>":
        for magic in (0xA1B2C3D4, 0xA1B23C4D):
            path = tmp_path / f"stamps-{order}-{magic:x}.pcap"
            path.write_bytes(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1) + b"".join(
                struct.pack(order + "IIII", sec, frac, 60, 60) + frame for sec, frac in stamps))
            want = frames(OfflineSource(str(path)))
            assert frames(mapped(path)) == want
            seen.add(tuple(usec for _, usec, _ in want[0]))
    assert len(seen) == 3  # microseconds pass through; nanoseconds divide two ways: every case is there


def test_fallback_where_libpcap_rewrites_or_the_format_is_other(tmp_path: Path) -> None:
    """A swapped SLL file (libpcap byte-swaps CAN pseudo-headers), version 2.3, standard input, --bpf:
    libpcap reads them."""
    plain = tmp_path / "sll.pcap"
    SCENARIOS["sll"]().write(plain)
    swapped = tmp_path / "sll-be.pcap"
    swapped.write_bytes(rewrite(plain.read_bytes(), ">"))
    old = tmp_path / "v23.pcap"
    data = bytearray(plain.read_bytes())
    data[6:8] = struct.pack("<H", 3)
    old.write_bytes(bytes(data))
    for path in (swapped, old):
        assert PcapFileSource.open(str(path)) is None
        assert isinstance(_source(str(path), None), OfflineSource)
    assert isinstance(_source(str(plain), "esp"), OfflineSource)
    with plain.open("rb") as stdin:  # standard input: libpcap (read as `tcpdump -r -`)
        piped = subprocess.run([sys.executable, "-m", "agent.cli", "read", "--json", "--events", "-"], stdin=stdin,
                               capture_output=True, text=True, cwd=REPO, timeout=120, check=True).stdout
    assert piped == document(plain, mapped(plain)).replace(json.dumps(str(plain)), '"-"') + "\n"
    assert document(swapped, _source(str(swapped), None)) == document(plain, mapped(plain)).replace(
        json.dumps(str(plain)), json.dumps(str(swapped)))


_READS_AT_EXIT = """
import atexit, runpy, sys
atexit.register(lambda: sys.stderr.write(open("/proc/self/io").read()))
sys.argv = ["espmeter", "read", "--json", "--events", "-"]
runpy.run_module("agent.cli", run_name="__main__")
"""


def test_standard_input_is_read_in_blocks_with_pythonunbuffered(tmp_path: Path) -> None:
    """PYTHONUNBUFFERED (many container images set it) makes CPython's C `stdin` unbuffered; libpcap then
    read every record header and body with its own read(2), two a frame. `read -` gives C stdin a buffer:
    the whole run's read calls stay far below one a frame (without the buffer: 2 a frame), the document
    equal to the file's."""
    plain = tmp_path / "many.pcap"
    SCENARIOS["many_sas"]().write(plain)
    frames = len(SCENARIOS["many_sas"]().build())
    with plain.open("rb") as stdin:
        run = subprocess.run([sys.executable, "-c", _READS_AT_EXIT], stdin=stdin, capture_output=True, text=True,
                             cwd=REPO, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stderr
    reads = int(run.stderr.split("syscr:")[1].split()[0])
    assert frames > 5000 and reads < frames / 4, (reads, frames)
    assert run.stdout == document(plain, mapped(plain)).replace(json.dumps(str(plain)), '"-"') + "\n"


def test_truncation_at_every_offset_of_the_last_records(tmp_path: Path) -> None:
    """Cut inside the last two records (header or data), also where libpcap cuts records to a snaplen
    smaller than their caplen: the same frames and libpcap's error text, word for word."""
    path = tmp_path / "random_loss.pcap"
    SCENARIOS["random_loss"]().write(path)
    full = path.read_bytes()
    errors = set()
    for snaplen in (None, 40):
        data = rewrite(full, snaplen=snaplen)
        offsets = records(data)
        first = offsets[-2][0]
        for cut in range(first, len(data) + 1):
            part = tmp_path / "cut.pcap"
            part.write_bytes(data[:cut])
            want = frames(OfflineSource(str(part)))
            assert frames(mapped(part)) == want, (snaplen, cut)
            assert len(want[0]) == len(offsets) - (2 if cut < offsets[-1][0] else 1 if cut < len(data) else 0)
            if want[1] is not None:
                errors.add(want[1].split(" only got")[0])
    full_caplen = records(full)[-1][1] - 16
    assert errors == {"truncated dump file; tried to read 16 header bytes,",
                      f"truncated dump file; tried to read {full_caplen} captured bytes,",
                      "truncated dump file; tried to read 40 captured bytes,"}  # every rule was met


def test_damaged_file_document_and_exit_code_are_libpcaps(tmp_path: Path) -> None:
    path = tmp_path / "reorder.pcap"
    SCENARIOS["reorder"]().write(path)
    data = path.read_bytes()
    off, _ = records(data)[len(records(data)) // 2]
    cases = {
        "header": data[:off + 9],
        "data": data[:off + 30],
        "over-snaplen": data[:off + 8] + struct.pack("<I", 300_000) + data[off + 12:],
        "over-maximum": rewrite(data[:off + 8] + struct.pack("<I", 300_000) + data[off + 12:], snaplen=400_000),
    }
    said = []
    for name, damaged in cases.items():
        cut = tmp_path / f"{name}.pcap"
        cut.write_bytes(damaged)
        want = pcapy_document(cut)
        assert document(cut, mapped(cut)) == want, name
        res = run_read(cut, "--events")
        assert res.returncode == 3 and res.stdout == want + "\n", name
        said.append(json.loads(want)["capture"]["error"])
    assert said == ["truncated dump file; tried to read 16 header bytes, only got 9",
                    "truncated dump file; tried to read 106 captured bytes, only got 14",
                    "invalid packet capture length 300000, bigger than snaplen of 262144",
                    "invalid packet capture length 300000, bigger than maximum of 262144"]


def test_compiled_index_equals_the_python_one(tmp_path: Path) -> None:
    """agent/_fastpath.c index_pcap and the Python twin, on real records and on random bytes."""
    if compiled.fastpath is None:
        if os.environ.get("CI") and not os.environ.get("ESPMETER_PURE_PYTHON"):
            pytest.fail("agent/_fastpath.c is not built (pip install -e .)")
        pytest.skip("agent/_fastpath.c not built in this tree (setup.py build_ext --inplace)")
    index = compiled.fastpath.index_pcap
    path = tmp_path / "nat_t.pcap"
    SCENARIOS["nat_t"]().write(path)
    real = path.read_bytes()
    rng = random.Random(9)
    cases = [(real, 24), (rewrite(real, ">", True), 24)]
    for _ in range(300):
        buf = bytearray(rng.randbytes(rng.randrange(0, 400)))
        for at in range(0, len(buf) - 12, 4):  # plausible caplens, so that walks go on
            if rng.random() < 0.5:
                buf[at + 8:at + 12] = struct.pack("<I", rng.choice((0, 1, 7, 40, 262144, 262145, 2**32 - 1)))
        cases.append((bytes(buf), rng.randrange(0, 20)))
    taken = 0
    for buf, start in cases:
        for swapped in (False, True):
            for nanos in (False, True):
                for snapshot, limit in ((65535, 262144), (20, 262144), (40, 40), (262144, 2**32 - 1)):
                    for max_frames in (0, 1, 3, 10_000):
                        args = (buf, start, max_frames, swapped, nanos, snapshot, limit)
                        got = index(*args)
                        assert got == index_records(*args), args[1:]
                        taken += len(got[0]) // 16
    assert taken > 10_000
