"""pcapng read block by block (agent.pcapng): the interface a packet was captured on is part of its
observation point; single-interface files give what the pcap of the same frames gives."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_read
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
