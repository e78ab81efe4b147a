"""`espmeter collect` as a user runs it: banner, readable table, --count of flow records, and the
records it did not get, found from the exporters' sequence numbers (a relay here drops known messages)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from exporter.collect import Decoder, SequenceCheck
from exporter.encoding import RecordEncoder
from exporter.infomodel import InfoModel
from tests.conftest import REPO

DEMO = str(REPO / "agent" / "demo.pcap")


class Collect:
    """`espmeter collect --listen udp://127.0.0.1:0`; the banner says which port it got."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "collect", "--listen", "udp://127.0.0.1:0",
                                      *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.banner = self.proc.stderr.readline()
        m = re.fullmatch(r"espmeter collect: listening on udp://127\.0\.0\.1:(\d+) \(receive buffer (\d+) KiB\)\n",
                         self.banner)
        assert m, self.banner
        self.port, self.rcvbuf_kib = int(m.group(1)), int(m.group(2))

    def finish(self, timeout: float = 20) -> tuple[str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0 and "Traceback" not in err, err
        return out, err


def read_to(port: int, *extra: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "read", "--collector", f"udp://127.0.0.1:{port}",
                           *extra, DEMO], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_help_shows_the_default_address() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "collect", "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert "(default udp://127.0.0.1:4739)" in " ".join(out.split())


def test_count_counts_flow_records_and_the_table_reads_like_read() -> None:
    """--count 6: the demo's six SA records, whatever options records come first (the RFC 5610 records)."""
    collect = Collect("--count", "6")
    read_to(collect.port)
    out, err = collect.finish()
    lines = out.splitlines()
    flows = [line for line in lines if " spi 0x" in line]
    assert len(flows) == 6
    assert "192.0.2.1 -> 198.51.100.1  spi 0xc1a00001  packets 988  bytes 90896  loss 12/1000  reordered 2" in flows[0]
    assert "peer 0x0b5e0001  tunnel 1" in flows[0] and flows[0].startswith("2023-11-14T22:13:20.005Z .. ")
    assert "information element 32473/1 espLostPacketDeltaCount" in lines
    assert "Description" not in out and "informationElementDescription" not in out
    types = len(RecordEncoder(InfoModel.load(), 1, biflow=False).type_elements())  # one RFC 5610 record per IE
    assert err.splitlines()[-1].endswith(f"flow records, {types} options records; 0 sequence gaps, 0 records lost")


def test_receive_buffer_is_large() -> None:
    collect = Collect("--count", "1")
    read_to(collect.port)
    collect.finish()
    if os.geteuid() == 0:  # SO_RCVBUFFORCE: 32 MiB asked, the kernel reports twice that
        assert collect.rcvbuf_kib == 2 * 32 * 1024
    else:
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
        assert collect.rcvbuf_kib == 2 * min(rmem_max, 32 << 20) >> 10


class DroppingRelay:
    """Forwards UDP datagrams to `port`, except those whose index is in `drop`; keeps them all in order."""

    def __init__(self, port: int, drop: set[int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        self._target, self._drop, self._stop = ("127.0.0.1", port), drop, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            if len(self.seen) not in self._drop:
                self.sock.sendto(data, self._target)
            self.seen.append(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_sequence_gaps_are_reported_with_the_records_lost(tmp_path: Path) -> None:
    """MTU 512 gives many small messages; the relay drops two of them: collect names each gap and the
    exact number of records those messages held."""
    cfg = tmp_path / "small.yaml"
    cfg.write_text("mtu: 512\n")
    collect = Collect()
    drop = {5, 7}
    relay = DroppingRelay(collect.port, drop)
    try:
        read_to(relay.port, "--config", str(cfg))
    finally:
        relay.close()
    time.sleep(1.0)  # the last forwarded datagrams (loss-event records, statistics) reach the collector
    collect.proc.terminate()
    out, err = collect.finish()
    decoder = Decoder()
    held = [len(decoder.decode(m)) for m in relay.seen]
    assert held[5] and held[7] and len(held) > 8
    gaps = [line for line in err.splitlines() if "sequence number" in line]
    assert len(gaps) == 2 and gaps[0].endswith(f": {held[5]} records lost"), err
    assert gaps[1].endswith(f": {held[7]} records lost"), err
    assert err.splitlines()[-1].endswith(f"; 2 sequence gaps, {held[5] + held[7]} records lost"), err
    assert f"{len(held) - 2} messages" in err.splitlines()[-1]


def test_sequence_check_follows_restarts_and_wraps() -> None:
    check = SequenceCheck()
    assert check.message("a", 1, 2**32 - 2, 5) == 0
    assert check.message("a", 1, 3, 1) == 0  # wrapped modulo 2^32
    assert check.message("a", 1, 10, 1) == 6
    assert check.message("a", 1, 0, 4) == 0  # went back: an exporter restart, followed
    assert check.message("a", 2, 0, 1) == 0 and check.message("b", 1, 100, 1) == 0  # per domain and session
    assert check.summary() == "1 sequence gap, 6 records lost"
