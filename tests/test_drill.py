"""Drill-down of `espmeter read` (--bins, --csv, --trace, --sort/--top) against the generator's truth.

The generator knows every datagram's capture time and what the contract calls it (tests/gt):
bins are summed from that (a lost number in the bin of its event's `before`, everything else in the
bin of the datagram's arrival; a non-first fragment that came before its first fragment counts with
it), and trace verdicts are compared datagram by datagram.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.drill import Observer
from agent.meter import MeterSettings
from agent.offline import meter_file
from tests.conftest import run_read
from tests.gt import registry
from tests.gt.scenario import BASE_US
from tests.test_groundtruth import compare_events, compare_sas, sa_key

SCENARIOS = ["burst_loss", "gilbert_elliott", "random_loss", "reorder_loss", "dup_loss", "esn_wrap", "outage",
             "rekey", "implausible", "restart", "fragments_out_of_order", "late", "mixed"]
BIN_FIELDS = ("datagrams", "packets", "octets", "expected", "lost", "reordered", "duplicates", "late")
ACCEPTED = ("in_order", "reordered", "jump")


def expected_bins(sa: dict[str, Any], bin_us: int) -> list[dict[str, Any]]:
    bins: dict[int, Counter] = {}

    def at(us: int) -> Counter:
        return bins.setdefault(us // bin_us, Counter())

    for us, _seq, verdict, _extent, octets in sa["datagram_verdicts"]:
        b = at(BASE_US + us)
        b["datagrams"] += 1
        b["packets"] += 1
        b["octets"] += octets
        b["expected"] += verdict in ACCEPTED
        b["reordered"] += verdict == "reordered"
        b["duplicates"] += verdict == "duplicate"
        b["late"] += verdict in ("late", "implausible")
    for us, octets in sa["fragment_arrivals"]:
        b = at(BASE_US + us)
        b["packets"] += 1
        b["octets"] += octets
    for e in sa["loss_events"]:
        b = at(round(e["before"] * 1e6))
        b["lost"] += e["count"]
        b["expected"] += e["count"]
    lo, hi = round(sa["first_seen"] * 1e6) // bin_us, round(sa["last_seen"] * 1e6) // bin_us
    return [{"start": round(i * bin_us / 1e6, 6), **{k: bins.get(i, Counter())[k] for k in BIN_FIELDS}}
            for i in range(lo, hi + 1)]


def _write(name: str, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    sc = registry()[name]()
    path = tmp_path / f"{name}.pcap"
    return path, sc.write(path)


@pytest.mark.parametrize("name", SCENARIOS)
def test_bins_equal_truth(name: str, tmp_path: Path) -> None:
    path, expected = _write(name, tmp_path)
    plain = run_read(path, "--events").json()
    for seconds in ("0.01", "0.25", "1", "7"):
        bin_us = round(float(seconds) * 1e6)
        doc = run_read(path, "--events", "--bins", seconds).json()
        compare_sas(expected["sas"], doc["sas"])
        compare_events(expected["sas"], doc["sas"])
        by_key = {sa_key(sa): sa for sa in doc["sas"]}
        for want in expected["sas"]:
            got = by_key[sa_key(want)]
            assert got["bins"] == expected_bins(want, bin_us), (seconds, sa_key(want))
            for field in BIN_FIELDS:  # summed over bins, each counter is the SA's total
                assert sum(b[field] for b in got["bins"]) == got[field], (seconds, field)
        # the per-frame path the drill-down runs gives the default path's document
        assert [{k: v for k, v in sa.items() if k != "bins"} for sa in doc["sas"]] == plain["sas"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_trace_verdicts_equal_truth(name: str, tmp_path: Path) -> None:
    path, expected = _write(name, tmp_path)
    observer = Observer(None, lambda sa: True)
    result = meter_file(str(path), MeterSettings(fast_path=False), progress=False, events=True,
                        observer=observer)
    by_key = {sa_key(doc): sa for sa, doc in zip(result.meter.table.all_sas(), result.doc["sas"], strict=True)}
    for want in expected["sas"]:
        lines = observer.sa_lines(by_key[sa_key(want)])
        got = [(round(x.time * 1e6) - BASE_US, x.seq, x.verdict, x.extent, x.length) for x in lines
               if x.missing is None]
        assert got == [tuple(v) for v in want["datagram_verdicts"]], sa_key(want)
        missing = [x for x in lines if x.missing is not None]
        assert [(x.missing.first, x.missing.last) for x in missing] == [
            (e["first"], e["last"]) for e in want["loss_events"]]
        # shown where the tracker made the event final: never before its `before` arrived
        assert all(x.time >= x.missing.before for x in missing)


def test_trace_cli_window_and_json(tmp_path: Path) -> None:
    path, expected = _write("burst_loss", tmp_path)
    t0 = 1_700_000_000
    doc = run_read(path, "--trace", "0x51", "--from", f"{t0}.095", "--to", "2023-11-14T22:13:20.110Z").json()
    (block,) = doc["trace"]
    assert block["spi"] == 0x51
    seqs = [x["seq"] for x in block["lines"]]
    assert seqs == [96, 97, 98, 99, *range(110, 122)]  # 100..109 lost, 1 ms apart
    assert {x["verdict"] for x in block["lines"]} == {"in_order"}
    table = run_read_plain(path, "--trace", "0x51")
    assert "missing 100..109 (10)" in table and "seq 110          len 92     in order" in table
    assert "missing 600..899 (300)" in run_read_plain(path, "--sa", "10.0.1.2,10.0.1.1,0x52")


def test_csv_rows(tmp_path: Path) -> None:
    path, expected = _write("outage", tmp_path)
    proc = run_read(path, "--bins", "5")
    assert proc.returncode == 0
    out = run_read_plain(path, "--bins", "5", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    doc = run_read(path, "--bins", "5").json()
    assert len(rows) == sum(len(sa["bins"]) for sa in doc["sas"])
    first = doc["sas"][0]
    mine = [r for r in rows if r["src"] == first["src"] and int(r["spi"], 16) == first["spi"]]
    assert [int(r["lost"]) for r in mine] == [b["lost"] for b in first["bins"]]
    assert any(int(r["packets"]) == 0 for r in mine)  # the outage shows as empty bins


def run_read_plain(path: Path, *extra: str) -> str:
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run([sys.executable, "-m", "agent.cli", "read", str(path), *extra], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_sort_and_top(tmp_path: Path) -> None:
    path, expected = _write("random_loss", tmp_path)
    table = run_read_plain(path, "--sort", "lost", "--top", "2")
    assert table.count("tunnel ") == 2
    doc = run_read(path).json()
    worst = sorted(doc["tunnels"], key=lambda t: -max(doc["sas"][i]["lost"] for i in t["sas"]))[:2]
    assert [int(line.split()[1].rstrip(":")) for line in table.splitlines() if line.startswith("tunnel ")] == [
        t["id"] for t in worst]
    assert json.loads(json.dumps(doc))  # the JSON document is not cut by --top


@pytest.mark.parametrize("extra", [
    ["--bins", "0"], ["--bins", "-1"], ["--bins", "abc"], ["--bins", "nan"], ["--trace", "0xdead"],
    ["--trace", "zz"], ["--sort", "bogus"], ["--trace", "0x51", "--from", "1700000001", "--to", "1700000000"],
    ["--trace", "0x51", "--from", "yesterday"], ["--csv"], ["--bins", "1", "--csv", "--json"],
    ["--sa", "10.0.1.1,0x51"], ["--top", "-3"],
])
def test_bad_drill_arguments(tmp_path: Path, extra: list[str]) -> None:
    path, _ = _write("burst_loss", tmp_path)
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run([sys.executable, "-m", "agent.cli", "read", str(path), *extra], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, (extra, proc.stderr)
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_collect_shows_loss_event_records(tmp_path: Path) -> None:
    """`espmeter collect` (a real process on loopback) prints each loss event as such, times to the ms."""
    import signal
    import subprocess
    import sys
    import time

    from tests.collectors import free_port, udp_port_bound
    from tests.conftest import REPO

    path, expected = _write("burst_loss", tmp_path)
    port = free_port()
    col = subprocess.Popen([sys.executable, "-m", "agent.cli", "collect", "--listen", f"udp://127.0.0.1:{port}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while not udp_port_bound(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        run_read_plain(path, "--collector", f"udp://127.0.0.1:{port}")
        time.sleep(1.0)
    finally:
        col.send_signal(signal.SIGINT)
        out, err = col.communicate(timeout=20)
    assert col.returncode == 0, err
    lines = [line for line in out.splitlines() if line.startswith("loss event ")]
    want = []
    for sa in expected["sas"]:
        for e in sa["loss_events"]:
            numbers = f"{e['first']}" if e["first"] == e["last"] else f"{e['first']}..{e['last']}"
            after, before = (f"{_iso_ms(e[k])}" for k in ("after", "before"))
            want.append(f"loss event {sa['src']} -> {sa['dst']} spi 0x{sa['spi']:08x}: numbers {numbers} "
                        f"({e['count']} lost) between {after} and {before}")
    assert sorted(line.split("  [")[0] for line in lines) == sorted(want)


def _iso_ms(t: float) -> str:
    from datetime import UTC, datetime

    ms = round(t * 1e6) // 1000
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_loss_event_cap_and_minimum_are_counted(tmp_path: Path) -> None:
    """`loss_events:` per_interval holds records back, never silently; min_length skips short runs."""
    from exporter.collect import is_loss_event, read_file

    path, expected = _write("gilbert_elliott", tmp_path)
    runs = [e for sa in expected["sas"] for e in sa["loss_events"]]
    for min_length, cap in ((1, 2), (3, 1000)):
        cfg = tmp_path / f"c{min_length}.yaml"
        cfg.write_text(f"active_timeout_s: 1\nloss_events:\n  min_length: {min_length}\n  per_interval: {cap}\n")
        out = tmp_path / f"out{min_length}.ipfix"
        run_read_plain(path, "--config", str(cfg), "--collector", f"file://{out}")
        records = read_file(str(out))
        sent = [r for r in records if is_loss_event(r)]
        suppressed = [r["espLossEventsSuppressedTotalCount"] for r in records
                      if "espLossEventsSuppressedTotalCount" in r][-1]
        long_enough = [e for e in runs if e["count"] >= min_length]
        assert len(sent) + suppressed == len(long_enough)
        assert all(r["espLossEventPacketCount"] >= min_length for r in sent)
        assert (suppressed > 0) == (cap == 2)


def test_agent_logs_long_loss_events_rate_limited(tmp_path: Path) -> None:
    """The loss-event log output: one line per long event (tunnel, SPI, numbers, count, window), through
    the agent's rate limiter: a second long event of the same SA within the minute is summarised."""
    import logging
    import sys

    logger, root = logging.getLogger("espmeter"), logging.getLogger()
    saved = (list(logger.handlers), logger.level, logger.propagate, list(root.handlers), root.level, sys.excepthook)
    try:
        _log_loss_events(tmp_path)
    finally:  # setup_logging configures the shared logger (and its limiter): leave it as it was
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        root.handlers[:] = saved[3]
        root.setLevel(saved[4])
        sys.excepthook = saved[5]
        logging.captureWarnings(False)


def _log_loss_events(tmp_path: Path) -> None:
    from agent.logsetup import flush_suppressed, setup_logging
    from agent.losslog import LossEventLog
    from agent.outputs import Outputs, OutputSpec

    path, expected = _write("outage", tmp_path)
    stream = io.StringIO()
    setup_logging("info", "text", stream=stream, environ={})
    outputs = Outputs([OutputSpec("loss-log", 100, lambda: LossEventLog(100))])
    meter_file(str(path), MeterSettings(), outputs, progress=False)
    lines = [line for line in stream.getvalue().splitlines() if "loss event:" in line]
    want = [(sa["spi"], e) for sa in expected["sas"] for e in sa["loss_events"] if e["count"] >= 100]
    assert len(lines) == len(want) == 3
    for spi, e in want:
        (line,) = [x for x in lines if f"spi 0x{spi:08x}" in x]
        assert f"{e['count']} lost, numbers {e['first']}..{e['last']}" in line and "tunnel " in line
    logger = LossEventLog(1)
    from exporter.records import LossEvent

    ev = LossEvent(*[__import__("ipaddress").ip_address(a).packed for a in ("10.0.0.1", "10.0.0.2")], 7, 0, None, None,
                   None, None, 10, 200, 1.0, 2.0)
    for _ in range(5):
        logger.export_loss_events([ev])
    flush_suppressed(final=True)
    mine = [x for x in stream.getvalue().splitlines() if "spi 0x00000007" in x]
    assert len(mine) == 2 and "suppressed 4 similar messages" in mine[1]


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_plot_renders_both_formats(tmp_path: Path, fmt: str) -> None:
    """A chart per tunnel with the most loss: titles name the peers, axes have units, events are marked."""
    import xml.etree.ElementTree as ET

    path, expected = _write("outage", tmp_path)
    out = tmp_path / f"chart.{fmt}"
    run_read_plain(path, "--plot", str(out), "--bins", "0.5", "--top", "2")
    data = out.read_bytes()
    if fmt == "png":
        from matplotlib import image

        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = image.imread(str(out))
        assert pixels.shape[0] > 600 and pixels.shape[1] > 800 and pixels.std() > 0.05  # two tunnels, not blank
    else:
        root = ET.fromstring(data)
        text = " ".join(t for t in root.itertext())
        for peers in ("10.0.1.1 <=> 10.0.1.2", "10.0.2.1 <=> 10.0.2.2"):
            assert f": {peers}: loss per 0.5 s bin" in text
        assert "loss %" in text and "packets/s" in text and "time (UTC, 2023-11-14)" in text
        assert "3000 lost" in text and "500 lost" in text  # the legend carries each direction's loss


@pytest.mark.parametrize("target", ["/nonexistent-dir/x.png", "/proc/x.png", "{tmp}/x.pdf", "{tmp}"])
def test_plot_bad_target(tmp_path: Path, target: str) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    path, _ = _write("burst_loss", tmp_path)
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "read", str(path), "--plot",
                           target.format(tmp=tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
