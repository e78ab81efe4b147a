"""The collector configurations in docs/ work as written: real nfacctd runs with exactly docs/nfacctd.conf."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from exporter import Exporter, ExportSettings
from exporter.dictionaries import render
from tests.collectors import START_MS, _stop, _wait, free_port, make_sa, udp_port_bound
from tests.conftest import REPO

CONF = REPO / "docs" / "nfacctd.conf"


def _nfacctd_records(workdir: Path, port: int, records: list) -> list[dict]:
    proc = subprocess.Popen(["nfacctd", "-f", "nfacctd.conf", "-l", str(port)], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: udp_port_bound(port) or proc.poll() is not None, what="nfacctd")
        assert proc.poll() is None, "nfacctd exited at start"
        time.sleep(0.5)  # the print plugin starts after the socket is bound
        exp = Exporter(ExportSettings(collectors=[f"udp://127.0.0.1:{port}"]))
        exp.export(records)
        exp.close()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)  # the print plugin writes its cache on exit
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # it sees signals only after a recv
            for _ in range(20):
                s.sendto(struct.pack("!HHIII", 10, 16, 0, 0, 0), ("127.0.0.1", port))
                try:
                    proc.wait(0.25)
                    break
                except subprocess.TimeoutExpired:
                    continue
    finally:
        _stop(proc, signal.SIGKILL, 5)
    return [json.loads(line) for f in sorted(workdir.glob("espmeter-*.json")) for line in f.read_text().splitlines()]


def test_docs_nfacctd_conf_keeps_intervals_apart_and_decodes_every_field(tmp_path: Path) -> None:
    """Three records: two intervals of one SA (same key, consecutive times) and another SA. nfacctd
    with the documented file prints three lines with each record's own figures."""
    (tmp_path / "nfacctd.conf").write_bytes(CONF.read_bytes())
    (tmp_path / "espmeter-primitives.lst").write_text(render("pmacct", 32473))
    first = make_sa(0, start_ms=START_MS, end_ms=START_MS + 60000, packets=100, lost=7, expected=107)
    second = make_sa(0, start_ms=START_MS + 60000, end_ms=START_MS + 120000, packets=200, lost=0, expected=200)
    other = make_sa(1, peer_spi=0xC0010000, tunnel_id=3, tunnel_name="branch-1")
    got = _nfacctd_records(tmp_path, free_port(), [first, second, other])
    assert len(got) == 3, got
    by = {(r["ipsec_spi"], r["timestamp_start"]): r for r in got}
    for sa in (first, second, other):
        start = time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime(sa.start_ms / 1000))
        r = by[(f"{sa.spi:08x}", start)]
        assert r["packets"] == sa.packets and r["bytes"] == sa.octets
        assert int(r["esp_lost_packet_delta_count"]) == sa.lost
        assert int(r["esp_expected_packet_delta_count"]) == sa.expected
        assert int(r["esp_reordered_packet_delta_count"]) == sa.reordered
        assert int(r["esp_duplicate_packet_delta_count"]) == sa.duplicates
        assert int(r["esp_max_reorder_extent"]) == sa.max_reorder_extent
    assert by[(f"{other.spi:08x}", time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime(START_MS / 1000)))][
        "esp_tunnel_name"] == "branch-1"
