"""Cross-check per-SA loss against tshark's ESP sequence analysis on the same capture.

tshark keys its analysis by SPI alone and only compares each datagram with the previous one of that
SPI, so it is right exactly when there is loss but no reordering, duplicates or late datagrams, no SPI
is reused, and IP defragmentation is off (the first fragment carries the ESP header).  Every scenario
used here is checked for those preconditions before comparing.
"""

from __future__ import annotations

import random
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_read
from tests.gt import FragPlan, SASpec, Scenario, registry

TSHARK = "/usr/bin/tshark"
PREFS = ("-o", "esp.do_esp_sequence_analysis:TRUE", "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE")
MISSING = re.compile(r"Wrong Sequence Number for SPI [0-9a-fA-F]+ - (\d+) missing")


def heavy_loss() -> Scenario:
    """Sixty SAs, random and burst loss, mixed encapsulations, fragments with lost first fragments."""
    rng = random.Random(2024)
    sc = Scenario("heavy_loss")
    for t in range(30):
        drops = {s for s in range(2, 400) if rng.random() < 0.08}
        start = rng.randrange(2, 300)
        drops |= set(range(start, start + rng.randrange(1, 40)))
        frags = {s: FragPlan(2, lost=frozenset({0})) for s in rng.sample(range(2, 399), 3) if s not in drops}
        spec = SASpec(f"10.9.{t}.1", f"10.9.{t}.2", 0x7000 + t, link=sc.link(), encap="udp" if t % 3 else "esp",
                      count=400, payload=120, start_us=t * 30, drops=drops, frags=frags)
        sc.add_tunnel(spec, 0x8000 + t, drops={s for s in range(2, 400) if rng.random() < 0.03})
    return sc


def scenarios() -> dict[str, Any]:
    named = registry()
    picked = {n: named[n] for n in ("random_loss", "burst_loss", "nat_t", "ipv6_ext", "fragments_first_lost",
                                    "fragments_nonfirst_lost", "sll", "raw", "null", "mid_sa", "snaplen")}
    return {**picked, "heavy_loss": heavy_loss}


def tshark_missing(path: Path) -> dict[int, int]:
    """Sum of missing numbers per SPI, from expected-sn (and the expert message agreeing with it)."""
    out = subprocess.run([TSHARK, "-n", "-r", str(path), *PREFS, "-Y", "esp.sequence-analysis.expected-sn",
                          "-T", "fields", "-E", "aggregator=|", "-e", "esp.spi", "-e", "esp.sequence",
                          "-e", "esp.sequence-analysis.expected-sn", "-e", "_ws.expert.message"],
                         capture_output=True, text=True, check=True).stdout
    missing: Counter[int] = Counter()
    for line in out.splitlines():
        spi, seq, expected, message = line.split("\t")
        gap = int(seq, 0) - int(expected, 0)
        assert gap > 0, f"tshark saw a backwards number, precondition broken: {line}"
        match = MISSING.search(message)
        assert match and int(match.group(1)) == gap, line
        missing[int(spi, 0)] += gap
    return dict(missing)


def assert_preconditions(expected: dict[str, Any]) -> None:
    sas = expected["sas"]
    spis = [sa["spi"] for sa in sas]
    assert len(set(spis)) == len(spis), "an SPI is reused: tshark would mix the SAs"
    assert all(sa["reordered"] == sa["duplicates"] == sa["late"] == 0 for sa in sas)
    assert sum(sa["lost"] for sa in sas) > 0 or expected["capture"]["classes"]["esp"] > 0


@pytest.mark.parametrize("name", sorted(scenarios()))
def test_lost_matches_tshark(tmp_path: Path, name: str) -> None:
    sc = scenarios()[name]()
    path = tmp_path / f"{name}.pcap"
    expected = sc.write(path)
    assert_preconditions(expected)
    truth = {sa["spi"]: sa["lost"] for sa in expected["sas"]}
    shark = tshark_missing(path)
    assert {spi: shark.get(spi, 0) for spi in truth} == truth, "generator truth disagrees with tshark"
    actual = run_read(path).json()
    meter = Counter()
    for sa in actual["sas"]:
        meter[sa["spi"]] += sa["lost"]
    assert {spi: meter.get(spi, 0) for spi in truth} == truth
    assert set(meter) == set(truth)


def test_heavy_loss_is_heavy(tmp_path: Path) -> None:
    """The cross-check must exercise real loss, lost first fragments included."""
    expected = heavy_loss().write(tmp_path / "heavy.pcap")
    assert sum(sa["lost"] for sa in expected["sas"]) > 1000
    assert expected["capture"]["classes"]["orphan_fragment"] > 0
