"""Capture states on real veth links in namespaces: missing, down, no CAP_NET_RAW, capturing — each said
once and again when it changes, in the log, in sd_notify STATUS= and in the statistics line."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.status import Totals, capture_status, stats_line
from tests.gt.scenarios import registry
from tests.ipfix_sums import read_json
from tests.netns import AgentProcess, veth_pair

RETRY_S = 5.0  # agent.daemon.RETRY_S: a state must not be logged again on every retry
STATS = re.compile(r"stats \(1 s\): frames (\d+), ESP (\d+), capture drops (\d+), SAs (\d+), "
                   r"records sent (\d+), not sent (\d+); interfaces: (.*)$", re.M)


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20)
    try:
        yield sock
    finally:
        sock.close()


def next_status(sock: socket.socket) -> str:
    """The STATUS= of the next notification that carries one."""
    while True:
        for line in sock.recv(4096).decode().splitlines():
            if line.startswith("STATUS="):
                return line.removeprefix("STATUS=")


def wait_count(agent: AgentProcess, text: str, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while agent.log.read_text().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent.log.read_text().count(text) == count, agent.log.read_text()


def test_status_and_stats_line_format() -> None:
    states = {"wan0": "capturing", "lan0": "down", "ppp0": "missing"}
    assert capture_status(states) == "wan0 capturing, lan0 down, ppp0 missing"
    line = stats_line(Totals(10, 8, 1, 3, 0), Totals(110, 98, 1, 7, 2), 60.0, 12, states)
    assert line == ("stats (60 s): frames 100, ESP 90, capture drops 0, SAs 12, records sent 4, not sent 2; "
                    "interfaces: wan0 capturing, lan0 down, ppp0 missing")


@pytest.mark.root
def test_missing_down_up_appearing(tmp_path: Path) -> None:
    cap = str(tmp_path / "cap.pcap")
    registry()["no_loss"]().write(cap)
    doc = read_json(cap)
    with veth_pair() as pair, notify_socket(tmp_path) as notify:
        wan, late = pair.capture_if, f"l{pair.capture_if[1:]}"
        pair.run(pair.capture_ns, "ip", "link", "set", wan, "down")
        cfg = tmp_path / "espmeter.yaml"
        cfg.write_text(f"interfaces: [{wan}, {late}]\nstats_interval_s: 1\npen: 4242\n")
        agent = AgentProcess(pair.capture_ns, ["--config", str(cfg)], tmp_path / "agent.log",
                             env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        try:
            ready = notify.recv(4096).decode().splitlines()
            assert ready == ["READY=1", f"STATUS={wan} down, {late} missing"], ready
            time.sleep(RETRY_S + 1.5)  # the retries in between say nothing new
            log = agent.log.read_text()
            assert log.count(f"{wan} is down (waiting for it to come up)") == 1, log
            assert log.count(f"interface {late} does not exist (waiting for it)") == 1, log
            assert "not-yet-activated" not in log and "capturing on" not in log
            assert STATS.findall(log)[-1][6] == f"{wan} down, {late} missing"

            pair.run(pair.capture_ns, "ip", "link", "set", wan, "up")
            wait_count(agent, f"capturing on {wan} ", 1, timeout=3.0)  # the link event, not the retry
            assert next_status(notify) == f"{wan} capturing, {late} missing"
            pair.replay(cap, pps=20000)

            pair.run(pair.capture_ns, "ip", "link", "add", late, "type", "veth", "peer", "name", f"p{late[1:]}")
            pair.run(pair.capture_ns, "ip", "link", "set", late, "up")
            wait_count(agent, f"capturing on {late} ", 1, timeout=3.0)
            assert next_status(notify) == f"{wan} capturing, {late} capturing"

            time.sleep(2.5)  # the replayed frames are in a statistics line
            pair.run(pair.capture_ns, "ip", "link", "set", wan, "down")
            wait_count(agent, f"{wan} is down (waiting for it to come up)", 2, timeout=3.0)
            assert next_status(notify) == f"{wan} down, {late} capturing"
            time.sleep(1.5)
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
    lines = STATS.findall(agent.log.read_text())
    assert sum(int(line[0]) for line in lines) == doc["capture"]["frames"]  # each frame in one interval
    assert sum(int(line[1]) for line in lines) == doc["capture"]["classes"]["esp"]
    assert int(lines[-1][3]) == len(doc["sas"])
    assert lines[-1][6] == f"{wan} down, {late} capturing"


@pytest.mark.root
def test_capture_without_cap_net_raw(tmp_path: Path) -> None:
    """Root without CAP_NET_RAW (setpriv drops it from the bounding set): one clear line, not a retry loop."""
    with veth_pair() as pair, notify_socket(tmp_path) as notify:
        cfg = tmp_path / "espmeter.yaml"
        cfg.write_text(f"interfaces: [{pair.capture_if}]\npen: 4242\n")
        agent = AgentProcess(pair.capture_ns, ["--config", str(cfg)], tmp_path / "agent.log",
                             env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")},
                             wrapper=("setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw"))
        try:
            assert notify.recv(4096).decode().splitlines() == ["READY=1", f"STATUS={pair.capture_if} no-permission"]
            time.sleep(RETRY_S + 1.5)
            log = agent.log.read_text()
            assert log.count(f"cannot capture on {pair.capture_if}: permission denied: needs CAP_NET_RAW") == 1, log
            assert "not-yet-activated" not in log
            assert agent.stop() == 0
        finally:
            agent.kill()
