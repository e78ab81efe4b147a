"""Real collectors on loopback for the exporter tests: nfcapd/nfdump, nfacctd, tshark, ipfixDump.

Every collector gets a free port (bind to port 0 first) and its own temporary directory, because other
tests run in parallel on the same machine. Collectors are started and stopped here, by pid.
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exporter.records import SARecord

START_MS = 1795651003000


def make_sa(i: int = 0, **kw) -> SARecord:
    """A synthetic SA record; distinct counters per `i` so collectors cannot aggregate them."""
    values = dict(
        start_ms=START_MS, end_ms=START_MS + 30000, src=ipaddress.ip_address("192.0.2.1").packed,
        dst=ipaddress.ip_address("198.51.100.1").packed, spi=0xC0010000 + i, encap=0, sport=None, dport=None,
        packets=1000 + i, octets=150000 + i, datagrams=1000 + i, lost=5 + i, reordered=2 + i, duplicates=1 + i,
        late=3 + i, expected=1005 + i, incomplete=4 + i, first_seq=1 + i, last_seq=1005 + i,
        max_reorder_extent=6 + i, end_reason=2,
    )
    values.update(kw)
    return SARecord(**values)


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def udp_port_bound(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def _wait(pred, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- nfcapd / nfdump -----------------------------------------------------------------------------------

@dataclass
class Nfcapd:
    port: int
    flowdir: Path
    proc: subprocess.Popen
    files: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}"

    def stop(self) -> Path:
        time.sleep(1.0)  # let nfcapd drain its socket: it exits on SIGTERM without reading what is queued
        _stop(self.proc)
        self.files = sorted(Path(p) for p in glob.glob(str(self.flowdir / "**" / "nfcapd.2*"), recursive=True))
        assert self.files, f"nfcapd wrote no file in {self.flowdir}: {os.listdir(self.flowdir)}"
        return self.files[-1]


@contextlib.contextmanager
def nfcapd(tmp_path: Path) -> Iterator[Nfcapd]:
    """nfcapd on 127.0.0.1:<free port>; `stop()` ends it (SIGTERM) and returns the flow file."""
    flowdir = tmp_path / "flows"
    flowdir.mkdir()
    port = free_port()
    proc = subprocess.Popen(["nfcapd", "-w", str(flowdir), "-b", "127.0.0.1", "-p", str(port), "-t", "3600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: udp_port_bound(port) or proc.poll() is not None, what="nfcapd")
        assert proc.poll() is None, "nfcapd exited at start"
        yield Nfcapd(port, flowdir, proc)
    finally:
        _stop(proc)


def nfdump(path: Path, *args: str) -> str:
    """nfdump with an explicit output format (Debian's default -o is the NSEL event view)."""
    assert "-o" in args or "-E" in args or "-I" in args, "always pass -o"
    return subprocess.run(["nfdump", "-r", str(path), *args], check=True, capture_output=True, text=True).stdout


def nfdump_json(path: Path) -> list[dict]:
    return json.loads(nfdump(path, "-o", "json") or "[]")


def nfdump_sequence_failures(path: Path) -> int:
    out = subprocess.run(["nfdump", "-r", str(path), "-I"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.strip().lower().startswith("sequence failures"):
            return int(line.split(":")[1])
    raise AssertionError(f"no sequence failures line in nfdump -I: {out}")


# --- nfacctd -------------------------------------------------------------------------------------------

NFACCTD_BASE = ["peer_src_ip", "export_proto_seqno", "src_host", "dst_host", "proto", "src_port", "dst_port",
                "in_iface", "out_iface", "timestamp_start", "timestamp_end"]


@dataclass
class Nfacctd:
    port: int
    workdir: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}"

    def stop(self) -> list[dict]:
        """SIGTERM, then a header-only datagram to wake it (it only sees signals after a recv)."""
        time.sleep(2.5)  # one print_refresh_time so the records are written
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(20):
                    s.sendto(struct.pack("!HHIII", 10, 16, 0, 0, 0), ("127.0.0.1", self.port))
                    try:
                        self.proc.wait(0.25)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        _stop(self.proc, signal.SIGKILL, 5)
        out = []
        for f in sorted(glob.glob(str(self.workdir / "out" / "*.json"))):
            out += [json.loads(line) for line in Path(f).read_text().splitlines() if line.strip()]
        return out


def primitive_names(primitives: str) -> list[str]:
    return [line.split("=", 1)[1].split()[0] for line in primitives.splitlines() if line.startswith("name=")]


@contextlib.contextmanager
def nfacctd(tmp_path: Path, primitives: str) -> Iterator[Nfacctd]:
    """nfacctd with the generated aggregate_primitives and the print plugin writing JSON."""
    workdir = tmp_path / "nfacctd"
    (workdir / "out").mkdir(parents=True)
    (workdir / "primitives.lst").write_text(primitives)
    port = free_port()
    names = NFACCTD_BASE + primitive_names(primitives)
    conf = "\n".join([
        "daemonize: false", "nfacctd_ip: 127.0.0.1", f"nfacctd_port: {port}",
        "aggregate_primitives: primitives.lst", "nfacctd_time_new: false", "timestamps_utc: true",
        f"pidfile: {workdir}/nfacctd.pid", f"logfile: {workdir}/nfacctd.log",
        "plugins: print[esp]", f"aggregate[esp]: {', '.join(names)}", "print_output[esp]: json",
        "print_output_file[esp]: out/esp-%Y%m%d-%H%M%S.json", "print_output_file_append[esp]: true",
        "print_refresh_time[esp]: 1",
    ]) + "\n"
    (workdir / "nfacctd.conf").write_text(conf)
    proc = subprocess.Popen(["nfacctd", "-f", "nfacctd.conf"], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: udp_port_bound(port) or proc.poll() is not None, what="nfacctd")
        assert proc.poll() is None, f"nfacctd exited: {(workdir / 'nfacctd.log').read_text()}"
        time.sleep(0.5)  # plugin start
        yield Nfacctd(port, workdir, proc)
    finally:
        _stop(proc, signal.SIGKILL, 5)


# --- tshark on a loopback capture ------------------------------------------------------------------------

@dataclass
class Capture:
    port: int
    pcap: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}"

    def stop(self) -> Path:
        time.sleep(0.5)
        _stop(self.proc, signal.SIGINT)
        return self.pcap

    def tshark(self, *args: str) -> str:
        cmd = ["tshark", "-r", str(self.pcap), "-d", f"udp.port=={self.port},cflow", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def loopback_capture(tmp_path: Path) -> Iterator[Capture]:
    """dumpcap on lo for one free UDP port (needs root), with a sink socket so no ICMP comes back.

    (tcpdump in this environment reports packets "received by filter" but writes none; dumpcap works.)
    """
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    port = sink.getsockname()[1]
    pcap = tmp_path / "ipfix.pcap"
    proc = subprocess.Popen(["dumpcap", "-q", "-i", "lo", "-f", f"udp port {port}", "-w", str(pcap)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "Capturing on" in line, line
        time.sleep(0.5)
        yield Capture(port, pcap, proc)
    finally:
        _stop(proc, signal.SIGINT)
        sink.close()


def ipfix_dump(path: Path) -> str:
    return subprocess.run(["ipfixDump", "--rfc5610", "-i", str(path)], check=True, capture_output=True,
                          text=True).stdout
