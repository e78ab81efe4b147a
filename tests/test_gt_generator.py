"""Self-checks of the ground-truth generator: its files must parse with pcapy and tshark, and its
expected values must be self-consistent, or the ground-truth tests prove nothing."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pcapy
import pytest

from tests.gt import AmbiguousScenario, FragPlan, SASpec, Scenario, registry
from tests.gt import frames as fr

TSHARK = "/usr/bin/tshark"
NO_DEFRAG = ("-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE")
DLT = {fr.LINKTYPE_RAW: 12}  # libpcap maps LINKTYPE_RAW to the platform DLT_RAW


def written(tmp_path: Path, name: str) -> tuple[Path, dict[str, Any]]:
    sc = registry()[name]()
    path = tmp_path / f"{name}.{sc.fmt}"
    return path, sc.write(path)


def tshark_fields(path: Path, *fields: str, display: str = "", prefs: tuple[str, ...] = ()) -> list[list[str]]:
    cmd = [TSHARK, "-n", "-r", str(path), *NO_DEFRAG, *prefs, "-T", "fields"]
    cmd += ["-Y", display] if display else []
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


@pytest.mark.parametrize("name", sorted(registry()))
def test_pcapy_reads_every_frame(tmp_path: Path, name: str) -> None:
    path, expected = written(tmp_path, name)
    reader = pcapy.open_offline(str(path))
    assert reader.datalink() == DLT.get(expected["capture"]["linktype"], expected["capture"]["linktype"])
    frames = 0
    while True:
        data, meta = reader.next_batch(4096)
        if not meta:
            break
        for sec, _usec, offset, caplen in struct.iter_unpack("=4I", meta):
            assert sec >= 1_700_000_000 and offset + caplen <= len(data)
            frames += 1
    assert frames == expected["capture"]["frames"]


@pytest.mark.parametrize("name", sorted(registry()))
def test_tshark_reads_without_malformed(tmp_path: Path, name: str) -> None:
    path, expected = written(tmp_path, name)
    prefs = ("-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE")
    rows = tshark_fields(path, "frame.number", "ip.checksum.status", "udp.checksum.status", prefs=prefs)
    assert len(rows) == expected["capture"]["frames"]
    assert not [r for r in rows if "0" in r[1].split(",") or r[2] == "0"], "bad IPv4/UDP checksum written"
    malformed = tshark_fields(path, "frame.number", display="_ws.malformed || _ws.expert.severity == error")
    assert len(malformed) == expected["capture"]["classes"]["malformed"]


@pytest.mark.parametrize("name", sorted(registry()))
def test_expected_is_self_consistent(tmp_path: Path, name: str) -> None:
    _, expected = written(tmp_path, name)
    classes = expected["capture"]["classes"]
    assert sum(classes.values()) == expected["capture"]["frames"]
    for sa in expected["sas"]:
        assert sa["lost"] + sa["datagrams"] - sa["duplicates"] - sa["late"] == sa["expected"]
        assert sa["packets"] >= sa["datagrams"] - 0 and sa["first_seen"] <= sa["last_seen"]
    assert sum(sa["packets"] for sa in expected["sas"]) == classes["esp"]
    for t in expected["tunnels"]:
        fwd, rev = (expected["sas"][i] for i in t["sas"])
        assert (fwd["src"], fwd["dst"]) == (rev["dst"], rev["src"]) == (t["a"], t["b"])
        assert fwd["first_seen"] < rev["first_seen"]


@pytest.mark.parametrize("name", [n for n in sorted(registry()) if n not in ("malformed",)])
def test_tshark_sees_the_datagrams(tmp_path: Path, name: str) -> None:
    """ESP headers per SPI as tshark decodes them == datagrams the generator says it wrote."""
    path, expected = written(tmp_path, name)
    seen = Counter(int(r[0], 0) for r in tshark_fields(path, "esp.spi", display="esp"))
    truth: Counter[int] = Counter()
    for sa in expected["sas"]:
        truth[sa["spi"]] += sa["datagrams"]
    assert seen == truth


@pytest.mark.parametrize(("name", "fields", "values"), [
    ("sll", ("sll.pkttype",), {"0", "4"}),
    ("sll2", ("sll.ifindex", "sll.pkttype"), {"2\t0", "2\t4", "5\t0", "5\t4"}),
    ("sll2_two_interfaces", ("sll.ifindex",), {"2", "3"}),
    ("null", ("null.family",), {"2", "24", "28", "30"}),
    ("vlan", ("ieee8021ad.id", "vlan.id"), {"\t", "\t100", "\t200", "300\t42"}),
    ("ipv6_ext", ("ipv6.hopopts.nxt", "ipv6.routing.type", "ipv6.dstopts.nxt"), {"43\t4\t50", "43\t4\t17", "\t\t"}),
    ("no_loss", ("ip.hdr_len",), {"20", "24"}),
])
def test_link_and_ip_encodings(tmp_path: Path, name: str, fields: tuple[str, ...], values: set[str]) -> None:
    """An independent dissector must see the headers the generator claims to write."""
    path, _ = written(tmp_path, name)
    assert {"\t".join(r) for r in tshark_fields(path, *fields)} == values


@pytest.mark.parametrize("name", ["fragments_out_of_order", "nat_t", "ipv6_ext", "null", "sll2", "mixed"])
def test_esp_header_where_the_generator_says(name: str) -> None:
    """SPI and low 32 sequence bits sit right before `header_end` (what snaplen checks rely on)."""
    sc = registry()[name]()
    for e in sc.build():
        if e.header_end and e.item is not None:
            assert struct.unpack_from("!I", e.data, e.header_end - 4)[0] == e.item.seq & 0xFFFFFFFF


def test_esn_wire_numbers_wrap(tmp_path: Path) -> None:
    path, _ = written(tmp_path, "esn_wrap")
    seqs = [int(r[0]) for r in tshark_fields(path, "esp.sequence", display="esp.spi == 0xe1")]
    assert seqs[0] == 2**32 - 50 and seqs[50] == 0 and seqs[-1] == 49


def test_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    registry()["random_loss"]().write(a)
    registry()["random_loss"]().write(b)
    assert a.read_bytes() == b.read_bytes()


def test_thousands_of_sas_generate_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    expected = registry()["many_sas"]().write(tmp_path / "many.pcap")
    assert len(expected["sas"]) == 3000 and time.monotonic() - start < 10.0


@pytest.mark.parametrize("perturbation", [
    {"delays": {5000: 1100}},  # "reordered" behind the window
    {"lates": {4000: 500}},  # "late" still inside the window and reorder time
    {"lates": {500: 2000}},  # late in the restart zone (<= 1024)
    {"dups": {10: 2000}},  # duplicate far behind the window
    {"jumps": {50: 1_500_000}},  # jump too close to the implausibility limit
])
def test_ambiguous_perturbations_are_refused(tmp_path: Path, perturbation: dict) -> None:
    sc = Scenario("ambiguous")
    sc.add_sa(SASpec("10.0.0.1", "10.0.0.2", 1, count=5000, **perturbation))
    with pytest.raises(AmbiguousScenario):
        sc.write(tmp_path / "x.pcap")


def test_ambiguous_pairing_is_refused(tmp_path: Path) -> None:
    """Declaring the later of two reverse candidates as the partner contradicts 'closest first seen'."""
    sc = Scenario("pairing")
    fwd = sc.add_sa(SASpec("10.0.0.1", "10.0.0.2", 1, count=10, start_us=0))
    sc.add_sa(SASpec("10.0.0.2", "10.0.0.1", 2, count=10, start_us=100))
    far = sc.add_sa(SASpec("10.0.0.2", "10.0.0.1", 3, count=10, start_us=90_000))
    sc.pairs.append((fwd, far))
    with pytest.raises(AmbiguousScenario):
        sc.write(tmp_path / "x.pcap")


def test_fragment_order_must_be_complete() -> None:
    with pytest.raises(AmbiguousScenario):
        FragPlan(3, order=(1, 0))


def test_cli_writes_and_prints_expected(tmp_path: Path) -> None:
    out = tmp_path / "cli.pcap"
    proc = subprocess.run([sys.executable, "-m", "tests.gt", "nat_t", str(out)], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parent.parent)
    assert json.loads(proc.stdout) == registry()["nat_t"]().write(tmp_path / "cli2.pcap") | {
        "capture": json.loads(proc.stdout)["capture"]}
    assert out.stat().st_size > 0
