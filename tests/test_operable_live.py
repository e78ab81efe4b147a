"""`espmeter run` on a router that is not a lab: collectors without a route or down, log formats.

Namespaces and a veth pair are made here; tcpreplay sends a ground-truth capture into one end while
the agent captures the other.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.collect import read_file
from tests.collectors import free_port
from tests.gt.scenarios import registry
from tests.ipfix_sums import is_sa_record, read_json, sums, truth
from tests.netns import ROOT, AgentProcess, veth_pair

pytestmark = pytest.mark.root


def test_collector_without_route_at_start_gets_everything_once_the_route_appears(tmp_path: Path) -> None:
    """A router boots before its WAN: the agent starts, says so once, meters meanwhile, and delivers as
    soon as the route appears. `espmeter collect` listens in the sender namespace on 10.99.0.1; the
    capture side gets its address (hence the route) only after the traffic was metered."""
    cap = str(tmp_path / "cap.pcap")
    registry()["random_loss"]().write(cap)
    want = truth(read_json(cap))
    received = tmp_path / "collected.jsonl"
    with veth_pair() as pair, received.open("w") as sink:
        pair.run(pair.sender_ns, "ip", "addr", "add", "10.99.0.1/24", "dev", pair.sender_if)
        collector = subprocess.Popen(
            ["ip", "netns", "exec", pair.sender_ns, sys.executable, "-m", "agent.cli", "collect", "--json",
             "--listen", "udp://10.99.0.1:4739"], stdout=sink, stderr=subprocess.DEVNULL, cwd=ROOT)
        agent = AgentProcess(pair.capture_ns, ["--interface", pair.capture_if,
                                               "--collector", "udp://10.99.0.1:4739"], tmp_path / "agent.log")
        try:
            agent.wait_for("capturing on")
            pair.replay(cap, pps=20000)
            time.sleep(3.0)  # several retries (one a second) while there is no route
            log = agent.log.read_text()
            assert agent.proc.poll() is None, log
            assert log.count("Network is unreachable") == 1, log
            pair.run(pair.capture_ns, "ip", "addr", "add", "10.99.0.2/24", "dev", pair.capture_if)
            agent.wait_for("10.99.0.1:4739: reachable, sending", timeout=3.0)
            assert agent.stop() == 0, agent.log.read_text()
            time.sleep(0.5)
        finally:
            agent.kill()
            collector.terminate()
            collector.wait(5)
    records = [json.loads(line) for line in received.read_text().splitlines()]
    assert sums(records) == want  # every SA, exact, although metered while no route existed
    assert "Traceback" not in agent.log.read_text()


def test_shutdown_with_a_dead_tcp_collector_says_how_many_records_were_lost(tmp_path: Path) -> None:
    """Two collectors get the same records: a file, and a TCP collector nobody listens on. At SIGTERM the
    agent says how many buffered records it lost: exactly what the file got, minus the RFC 5610 type
    records (sent on a TCP connection only once it is made)."""
    cap = str(tmp_path / "cap.pcap")
    registry()["rekey"]().write(cap)
    out = tmp_path / "same.ipfix"
    dead = f"tcp://127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    with veth_pair() as pair:
        agent = AgentProcess(pair.capture_ns, ["--interface", pair.capture_if, "--collector", f"file://{out}",
                                               "--collector", dead], tmp_path / "agent.log")
        try:
            agent.wait_for("capturing on")
            pair.replay(cap, pps=5000)
            time.sleep(0.5)
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
    want = [r for r in read_file(str(out)) if "informationElementName" not in r]
    log = agent.log.read_text()
    m = re.search(rf"IPFIX collector {re.escape(dead)}: shutdown: (\d+) buffered records \((\d+) messages\) "
                  r"not delivered within [\d.]+ s: lost", log)
    assert m, log
    assert int(m.group(1)) == len(want) and len([r for r in want if is_sa_record(r)]) == len(read_json(cap)["sas"])
    assert log.count("Connection refused") == 1, log  # retried with back-off, logged once


TIMESTAMPED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_log_line_has_the_configured_format(fmt: str, tmp_path: Path) -> None:
    """json: every line is a JSON object, the first (before the configuration is applied) too; text
    outside journald: every line starts with a UTC timestamp."""
    cfg = tmp_path / "espmeter.yaml"
    cfg.write_text(f"log: {{format: {fmt}}}\ncollectors: ['udp://127.0.0.1:{free_port()}']\n")
    with veth_pair() as pair:
        agent = AgentProcess(pair.capture_ns, ["--config", str(cfg), "--interface", pair.capture_if, "--interface",
                                               "nosuch0"], tmp_path / "agent.log", env={"JOURNAL_STREAM": ""})
        try:
            agent.wait_for("espmeter running")
            agent.signal(signal.SIGUSR1)
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
    lines = agent.log.read_text().splitlines()
    assert len(lines) >= 4, lines
    for line in lines:
        if fmt == "json":
            assert isinstance(json.loads(line), dict), line
        else:
            assert TIMESTAMPED.match(line), line
