"""Smoke test of bench/: the generator's true loss is what espmeter reports (correctness, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_generator_truth_matches_espmeter(tmp_path: Path) -> None:
    """5000-frame captures (plain ESP, UDP 4500, 20 % ESP mix, a 1000-SA concentrator) through
    bench/run.py, espmeter only: every SA exact against the truth."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--packets", "5000", "--sas", "200", "--concentrator-sas", "1000",
         "--rounds", "1", "--tools", "espmeter", "--memory-sas", "0", "--no-startup", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["captures"]) == {"esp", "udp4500", "mix20", "concentrator"}
    assert results["captures"]["concentrator"]["sas"] == 1000
    for name, res in results["captures"].items():
        espmeter = res["tools"]["espmeter"]
        assert espmeter["rc"] == [0], name
        assert res["truth_lost"] > 0 or name == "mix20", name
        assert espmeter["lost"] == res["truth_lost"], name
        assert espmeter["wrong"] == 0, name
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


def test_zipf_truth_from_the_capture(tmp_path: Path) -> None:
    """The concentrator's truth is what the capture holds: every SA from number 1, in order, and its
    loss the missing numbers between its first and last one. Most SAs are below the mean (20 packets per
    SA: with the benchmark's 2 M packets at 100 k/s, at most one packet a second)."""
    sys.path.insert(0, str(BENCH))
    try:
        import gen
    finally:
        sys.path.remove(str(BENCH))
    path = tmp_path / "z.pcap"
    gen.generate(path, 40_000, sas=2000, popularity="zipf", seed=3)
    truth = json.loads(gen.truth_path(path).read_text())
    raw = np.fromfile(path, dtype=np.uint8, offset=24).reshape(-1, gen.REC)
    words = raw[:, 16 + 34:16 + 42].copy().view(">u4").astype(np.int64)
    seqs: dict[int, list[int]] = {}
    for spi, seq in words:
        seqs.setdefault(int(spi), []).append(int(seq))
    want = gen.sa_truth(truth)
    assert len(seqs) == len(want) == 2000
    for (_src, _dst, spi), (packets, lost) in want.items():
        got = seqs[spi]
        assert got[0] == 1 and got == sorted(got) and len(got) == packets
        assert got[-1] - len(got) == lost
    assert sum(1 for p, _ in want.values() if p <= 20) > 0.8 * len(want)
    assert 0.003 < truth["lost_total"] / (truth["lost_total"] + 40_000) < 0.007
