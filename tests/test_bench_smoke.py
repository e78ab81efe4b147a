"""Smoke test of bench/: the generator's true loss is what espmeter reports (correctness, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_generator_truth_matches_espmeter(tmp_path: Path) -> None:
    """5000-frame captures (plain ESP, UDP 4500, 20 % ESP mix) through bench/run.py, espmeter only."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--packets", "5000", "--sas", "200", "--rounds", "1",
         "--tools", "espmeter", "--memory-sas", "0", "--no-startup", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["captures"]) == {"esp", "udp4500", "mix20"}
    for name, res in results["captures"].items():
        espmeter = res["tools"]["espmeter"]
        assert espmeter["rc"] == [0], name
        assert res["truth_lost"] > 0 or name == "mix20", name
        assert espmeter["lost"] == res["truth_lost"], name
        assert f"espmeter lost total = {res['truth_lost']}, truth = {res['truth_lost']}" in proc.stdout


@pytest.mark.parametrize("encap", ["esp", "udp"])
def test_generator_frames(tmp_path: Path, encap: str) -> None:
    """Fixed 128-octet records, the requested number of frames and SAs."""
    sys.path.insert(0, str(BENCH))
    try:
        import gen
    finally:
        sys.path.remove(str(BENCH))
    path = tmp_path / "c.pcap"
    truth = gen.generate(path, 1000, sas=100, encap=encap)
    assert path.stat().st_size == 24 + 1000 * gen.REC
    assert truth["packets"] == truth["esp_packets"] == 1000
    assert truth["sas"] == 100
