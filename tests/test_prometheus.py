"""The metrics endpoint live: a real Prometheus server scrapes `espmeter run` every second.

Ground-truth captures (tests/gt) are replayed with tcpreplay on a veth pair between two namespaces
made here; the agent captures the far end and serves metrics on the capture namespace's loopback,
where Prometheus scrapes it. What Prometheus stored, read through its HTTP API, must equal the
generator's truth per SA and per tunnel; no counter may ever go down.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.collect import read_file
from tests.gt.scenarios import many_sas, registry
from tests.ipfix_sums import sums
from tests.ipfix_sums import truth as ipfix_truth
from tests.metric_truth import truth
from tests.netns import AgentProcess, VethPair, veth_pair
from tests.promserver import PromServer, http_get

pytestmark = pytest.mark.root
SCENARIOS = registry()
METRICS = "127.0.0.1:9108"
SA_LABELS = ("dst", "encap", "interface", "spi", "src")
TUNNEL_LABELS = ("direction", "peer_a", "peer_b", "ports")


def _agent(pair: VethPair, tmp_path: Path, extra: str = "") -> tuple[AgentProcess, Path]:
    out = tmp_path / "live.ipfix"
    cfg = tmp_path / "espmeter.yaml"
    cfg.write_text(f"interfaces: [{pair.capture_if}]\ncollectors: ['file://{out}']\n{extra}")
    agent = AgentProcess(pair.capture_ns, ["--config", str(cfg)], tmp_path / "agent.log")
    agent.wait_for("capturing on")
    return agent, out


def _stored(prom: PromServer, metric: str, labels: tuple[str, ...]) -> dict[tuple, int]:
    """The latest stored value of every series of `metric`, keyed like tests.metric_truth."""
    got = prom.vector(metric, labels)
    return {tuple(zip(labels, k, strict=True)): v for k, v in got.items()}


def _wait_equal(prom: PromServer, want: dict[str, dict[tuple, int]], labels: tuple[str, ...],
                timeout: float = 20.0) -> dict[str, dict[tuple, int]]:
    deadline = time.monotonic() + timeout
    while True:
        got = {metric: _stored(prom, metric, labels) for metric in want}
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


@pytest.mark.parametrize("name", ["random_loss", "dup_loss", "nat_t", "ipv6_ext", "rekey"])
def test_prometheus_counters_equal_ground_truth(name: str, tmp_path: Path) -> None:
    cap = str(tmp_path / "cap.pcap")
    doc = SCENARIOS[name]().write(cap)
    with veth_pair() as pair:
        agent, out = _agent(pair, tmp_path, f"metrics: {{listen: '{METRICS}'}}\nidle_timeout_s: 2\n")
        prom = PromServer(pair, pair.capture_ns, METRICS, tmp_path)
        try:
            pair.replay(cap, pps=20000)
            want_sa, want_tunnel = truth(doc, pair.capture_if)
            want_sa = {k: dict(v) for k, v in want_sa.items()}
            want_tunnel = {k: dict(v) for k, v in want_tunnel.items()}
            assert _wait_equal(prom, want_sa, SA_LABELS) == want_sa
            assert _wait_equal(prom, want_tunnel, TUNNEL_LABELS) == want_tunnel
            # every scrape saw counters that only grow
            for metric in (*want_sa, *want_tunnel):
                assert prom.query(f"resets({metric}[5m]) > 0") == [], metric
            assert prom.query("up") and prom.query("up")[0]["value"][1] == "1"
            if name == "rekey":  # two SA pairs (old and new SPIs), one tunnel series per direction
                assert len(doc["tunnels"]) == 2 and len(want_tunnel["espmeter_tunnel_packets_total"]) == 2
                assert len(prom.query("espmeter_tunnel_info")) == 1
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            prom.close()
            agent.kill()
    assert sums(read_file(str(out))) == ipfix_truth(doc)  # IPFIX alongside, unchanged


def _scrape(pair: VethPair, metric: str) -> float:
    text = http_get(pair, pair.capture_ns, f"http://{METRICS}/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "{"))


def test_a_datagram_shows_within_a_second_and_a_gap_is_final_by_timer(tmp_path: Path) -> None:
    """Polling the endpoint right after a replay: the packets show within a second; a gap at the
    end of the traffic (nothing follows it) is lost within reorder time (2 s) + 1 s."""
    from tests.gt import Scenario
    from tests.gt.scenario import SASpec

    sc = Scenario("tail_gap")
    sc.add_sa(SASpec("192.0.2.1", "192.0.2.2", 0x77, link=sc.link(), count=50, drops={47, 48}))
    cap = str(tmp_path / "cap.pcap")
    sc.write(cap)
    with veth_pair() as pair:
        agent, _ = _agent(pair, tmp_path, f"metrics: {{listen: '{METRICS}'}}\n")
        try:
            assert _scrape(pair, "espmeter_sa_packets_total") == 0
            pair.replay(cap, pps=20000)
            sent = time.monotonic()
            while _scrape(pair, "espmeter_sa_packets_total") < 48:
                assert time.monotonic() - sent < 1.0, "datagrams not shown within a second"
            shown = time.monotonic() - sent
            assert _scrape(pair, "espmeter_sa_lost_total") == 0
            while _scrape(pair, "espmeter_sa_lost_total") < 2:
                assert time.monotonic() - sent < 3.0, "gap not final within reorder time + 1 s"
                time.sleep(0.05)
            final = time.monotonic() - sent
            assert _scrape(pair, "espmeter_sa_expected_total") == 50
            print(f"datagrams shown after {shown:.3f} s, gap final after {final:.3f} s")
            assert agent.stop() == 0
        finally:
            agent.kill()


def test_ten_thousand_sas_with_max_series(tmp_path: Path) -> None:
    """10 000 SAs, max_series 1000: no scrape ever returned more than 1000 series (Prometheus's own
    scrape_samples_scraped), and every series not served is counted."""
    sc = many_sas(tunnels=5000, packets=6)
    cap = str(tmp_path / "cap.pcap")
    doc = sc.write(cap)
    assert len(doc["sas"]) == 10_000
    with veth_pair() as pair:
        agent, out = _agent(pair, tmp_path, f"metrics: {{listen: '{METRICS}', max_series: 1000}}\n")
        prom = PromServer(pair, pair.capture_ns, METRICS, tmp_path)
        try:
            pair.replay(cap, pps=20000)
            deadline = time.monotonic() + 20  # until a scrape has seen the whole table (it was a fixed 3 s)
            while [r["value"][1] for r in prom.query("espmeter_sas")] != ["10000"]:
                assert time.monotonic() < deadline, "no scrape saw the 10 000 SAs"
                time.sleep(0.5)
            assert int(prom.query("max_over_time(scrape_samples_scraped[5m])")[0]["value"][1]) <= 1000
            served_sas = len(prom.query("espmeter_sa_info"))
            served_tunnels = len(prom.query("espmeter_tunnel_info"))
            suppressed = int(prom.query("espmeter_series_suppressed_total")[0]["value"][1])
            assert served_sas + served_tunnels > 0
            # each SA label set is 10 series, each tunnel (both directions and its info) 21
            assert suppressed == 10 * (10_000 - served_sas) + 21 * (5000 - served_tunnels)
            assert int(prom.query("espmeter_sas")[0]["value"][1]) == 10_000
            assert agent.stop() == 0
        finally:
            prom.close()
            agent.kill()
    assert len(sums(read_file(str(out)))) == 10_000  # IPFIX still has every SA


def test_metrics_port_in_use(tmp_path: Path) -> None:
    """The port is taken: one clear log line; metering and IPFIX export go on exactly."""
    cap = str(tmp_path / "cap.pcap")
    doc = SCENARIOS["random_loss"]().write(cap)
    with veth_pair() as pair:
        holder = subprocess.Popen(
            ["ip", "netns", "exec", pair.capture_ns, sys.executable, "-c",
             "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 9108)); s.listen(); "
             "print('bound', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "bound"
            agent, out = _agent(pair, tmp_path, f"metrics: {{listen: '{METRICS}'}}\n")
            try:
                pair.replay(cap, pps=20000)
                time.sleep(0.5)
                assert agent.stop() == 0
            finally:
                agent.kill()
        finally:
            holder.kill()
            holder.wait()
    lines = [line for line in agent.log.read_text().splitlines() if "9108" in line]
    assert len(lines) == 1, agent.log.read_text()
    assert lines[0].endswith("metrics: cannot listen on 127.0.0.1:9108: Address already in use "
                             "(no metrics endpoint; metering and IPFIX export go on)")
    assert "Traceback" not in agent.log.read_text()
    assert sums(read_file(str(out))) == ipfix_truth(doc)
