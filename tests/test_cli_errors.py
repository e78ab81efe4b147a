"""What a user can get wrong on the command line ends in ONE line and a documented exit code, never a
traceback; export failures of a one-shot `read` are summarised and exit 4. The real CLI, in a subprocess."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.collect import read_file
from tests.collectors import free_port
from tests.conftest import REPO
from tests.gt.scenarios import many_sas

DEMO = str(REPO / "agent" / "demo.pcap")


def espmeter(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, **kw)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "says"), [
    (["read", "--collector", "udp://127.0.0.1", DEMO], "expected udp://HOST:PORT"),
    (["read", "--collector", "udp://no.such.host.invalid:4739", DEMO], "cannot resolve 'no.such.host.invalid'"),
    (["demo", "/tmp/missing.pcap"], "/tmp/missing.pcap: no such file"),
    (["templates", "-o", "/nonexistent/x"], "cannot write /nonexistent/x"),
    (["read", "/tmp"], "/tmp: is a directory"),
    (["read", "--bpf", "hots 1.2.3.4", DEMO], "BPF filter 'hots 1.2.3.4'"),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    assert says in one_line_error(espmeter(*args))


@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_closed_pipe_ends_quietly(fmt: list[str]) -> None:
    """`espmeter read X | head`: the reader went away before the first byte."""
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "read", *fmt, DEMO], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(60) == 0 and stderr == ""


def test_read_from_stdin_equals_read_of_the_file() -> None:
    from_file = espmeter("read", "--json", DEMO)
    with open(DEMO, "rb") as f:
        from_stdin = espmeter("read", "--json", "-", stdin=f)
    assert from_stdin.returncode == 0 and from_stdin.stderr == ""
    a, b = json.loads(from_file.stdout), json.loads(from_stdin.stdout)
    assert b["capture"].pop("file") == "-"
    a["capture"].pop("file")
    assert a == b and a["sas"]


def test_read_of_a_pipe_equals_read_of_the_file() -> None:
    """`read <(cat x.pcap)`: the shell passes /dev/fd/N, a pipe (refused as "no such file" before)."""
    from_file = json.loads(espmeter("read", "--json", DEMO).stdout)
    proc = subprocess.run(["bash", "-c", f'exec "$0" -m agent.cli read --json <(cat {DEMO})', sys.executable],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    from_pipe = json.loads(proc.stdout)
    assert from_pipe["capture"].pop("file").startswith("/dev/fd/")
    from_file["capture"].pop("file")
    assert from_pipe == from_file and from_file["sas"]


def test_version() -> None:
    proc = espmeter("--version")
    assert proc.returncode == 0 and re.fullmatch(r"espmeter \S+\n", proc.stdout)


def test_bpf_that_matches_nothing_says_so() -> None:
    proc = espmeter("read", "--json", "--bpf", "host 203.0.113.77", DEMO)
    assert one_line_error(proc, 0) == f"espmeter: {DEMO}: no frame matches --bpf 'host 203.0.113.77'"
    doc = json.loads(proc.stdout)
    assert doc["sas"] == [] and doc["capture"]["frames"] == 0


def _stderr_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.splitlines()


def test_dead_udp_collector_logs_first_failure_and_one_summary(tmp_path: Path) -> None:
    """3000 SAs to a port nobody listens on: ICMP refuses every other datagram. One failure line, one
    summary with the count of the rest, one line of what was not sent, exit 4."""
    cap = tmp_path / "many.pcap"
    many_sas().write(cap)
    proc = espmeter("read", "--json", "--collector", f"udp://127.0.0.1:{free_port()}", str(cap))
    lines = _stderr_lines(proc)
    assert proc.returncode == 4, proc.stderr
    assert len(lines) == 3, proc.stderr
    assert "send failed: [Errno 111] Connection refused" in lines[0]
    suppressed = int(re.search(r"suppressed (\d+) similar messages", lines[1]).group(1))
    not_sent = re.fullmatch(r"espmeter: not delivered: udp://127.0.0.1:\d+: (\d+) records in (\d+) messages not sent",
                            lines[2])
    assert not_sent, lines[2]
    assert int(not_sent.group(2)) == suppressed + 1 > 20  # every refused datagram is one failure line saved


def test_refused_tcp_collector_counts_every_record_lost(tmp_path: Path) -> None:
    """Nothing listens: every record read would have sent is reported lost at shutdown, and exit 4.
    The figure is checked against the same export written to a file (minus the RFC 5610 type records,
    which go out only once a connection is made)."""
    out = tmp_path / "same.ipfix"
    assert espmeter("read", "--collector", f"file://{out}", DEMO).returncode == 0
    want = [r for r in read_file(str(out)) if "informationElementName" not in r]
    proc = espmeter("read", "--collector", f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}", DEMO)
    lines = _stderr_lines(proc)
    assert proc.returncode == 4, proc.stderr
    assert any(f"shutdown: {len(want)} buffered records" in line and "lost" in line for line in lines), lines
    assert lines[-1].startswith("espmeter: not delivered: tcp://") and f" {len(want)} records" in lines[-1]


def test_unwritable_file_collector_exits_4(tmp_path: Path) -> None:
    proc = espmeter("read", "--collector", f"file://{tmp_path}/no/such/dir/x.ipfix", DEMO)
    lines = _stderr_lines(proc)
    assert proc.returncode == 4 and len(lines) == 2, proc.stderr
    assert "cannot be opened for writing: No such file or directory" in lines[0]
    assert re.fullmatch(r"espmeter: not delivered: file://.*: \d+ records in \d+ messages not sent", lines[1])


def test_file_collector_appends_and_the_result_decodes(tmp_path: Path) -> None:
    """Two reads into one file: the second says it appends; ipfixDump decodes both sessions' records."""
    out = tmp_path / "x.ipfix"
    first = espmeter("read", "--collector", f"file://{out}", DEMO)
    assert first.returncode == 0 and first.stderr == ""
    size = out.stat().st_size
    second = espmeter("read", "--collector", f"file://{out}", DEMO)
    assert second.returncode == 0
    assert _stderr_lines(second)[0].endswith(f"IPFIX file {out} exists ({size} bytes): appending "
                                             "(IPFIX files concatenate)")
    assert out.stat().st_size == 2 * size
    dump = subprocess.run(["ipfixDump", "--rfc5610", "-i", str(out)], capture_output=True, text=True, check=True)
    spis = re.findall(r"\(295\)\s+IPSecSPI : (\d+)", dump.stdout)
    sas = json.loads(espmeter("read", "--json", "--events", DEMO).stdout)["sas"]
    per_read = [sa["spi"] for sa in sas] + [sa["spi"] for sa in sas for _ in sa["loss_events"]]  # + event records
    assert sorted(map(int, spis)) == sorted(2 * per_read)


def test_run_config_error_is_json_when_the_file_asks_for_json(tmp_path: Path) -> None:
    cfg = tmp_path / "espmeter.yaml"
    cfg.write_text("log: {format: json}\nsnaplen: 5\n")
    line = one_line_error(espmeter("run", "--config", str(cfg), "--interface", "eth0"))
    entry = json.loads(line)
    assert entry["level"] == "error" and entry["msg"].startswith(f"{cfg}:2: snaplen")
