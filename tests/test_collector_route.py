"""A router boots before its WAN: the collector has no route when `espmeter run` starts.

The agent must start, say so once, meter what it captures meanwhile, and deliver as soon as the route
appears. Namespaces made here: the collector (`espmeter collect`) listens in the sender namespace on
10.99.0.1; the capture side gets its address (hence the route) only after the traffic was metered.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.gt.scenarios import registry
from tests.ipfix_sums import read_json, sums, truth
from tests.netns import ROOT, AgentProcess, veth_pair

pytestmark = pytest.mark.root


def test_collector_without_route_at_start_gets_everything_once_the_route_appears(tmp_path: Path) -> None:
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
