"""The Prometheus output against ground truth, offline (the daemon's live use is in test_prometheus).

Captures from tests/gt go through the real meter with the metrics output among its outputs; the
figures it would serve are read after every batch and at the end. At the end they equal the
generator's truth per SA and per tunnel; they never go down; the cap and the grace period hold.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.capture import OfflineSource
from agent.meter import Meter, MeterSettings
from agent.metrics import CaptureCounters, Health, MetricsOutput, MetricsSettings, metric_names
from agent.outputs import Outputs, OutputSpec
from agent.satable import TableSettings
from exporter.records import ENCAP_UDP, LossEvent
from tests.gt import Scenario
from tests.gt.scenario import SASpec
from tests.gt.scenarios import registry
from tests.metric_truth import Samples, truth

SCENARIOS = ["random_loss", "burst_loss", "reorder", "dup_loss", "nat_t", "rekey", "esn_wrap", "restart",
             "implausible", "late", "ipv6_ext", "vlan", "fragments_nonfirst_lost", "malformed", "mixed"]
HEALTH = Health({"eth0": CaptureCounters(5, 1)}, {})


def samples(text: str) -> Samples:
    """{metric sample name: {sorted label items: value}} of an exposition."""
    out: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


class Run:
    """The real meter with a metrics output (not serving HTTP) fed from a capture file."""

    def __init__(self, metrics: MetricsSettings | None = None, table: TableSettings | None = None) -> None:
        self.outputs = Outputs()
        self.meter = Meter(MeterSettings(table=table or TableSettings(active_timeout=1.0)), self.outputs)
        self.settings = metrics or MetricsSettings(listen="127.0.0.1:9")
        self.metrics = MetricsOutput(self.settings, self.meter, lambda: HEALTH, serve=False)
        self.outputs.configure([OutputSpec("metrics", self.settings, lambda: self.metrics)])

    def feed(self, path: Path, each_batch: bool = True) -> list[Samples]:
        seen = []
        source = OfflineSource(str(path))
        while (batch := source.read()) is not None:
            self.meter.feed(batch.buf, batch.meta, batch.linktype)
            self.meter.tick(self.meter.now)
            if each_batch:
                seen.append(samples(self.metrics.build()))
        source.close()
        return seen

    def finish(self) -> Samples:
        self.meter.finish()
        return samples(self.metrics.build())


def _write(tmp_path: Path, sc: Scenario) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / f"{sc.name}.{'pcapng' if sc.fmt == 'pcapng' else 'pcap'}"
    return path, sc.write(path)


@pytest.mark.parametrize("name", SCENARIOS)
def test_counters_equal_ground_truth(name: str, tmp_path: Path) -> None:
    path, doc = _write(tmp_path, registry()[name]())
    run = Run()
    # small batches: many reads in the middle of the capture, with 1 s active-timeout records between
    seen = run.feed(path)
    final = run.finish()
    want_sa, want_tunnel = truth(doc)
    for metric, values in (*want_sa.items(), *want_tunnel.items()):
        assert final[metric] == values, metric
    for before, after in zip(seen, [*seen[1:], final], strict=True):  # counters never go down
        for metric, values in before.items():
            if metric.endswith("_total"):
                assert all(after[metric][k] >= v for k, v in values.items()), metric
    infos = final["espmeter_sa_info"]
    assert len(infos) == len(want_sa["espmeter_sa_packets_total"])


def test_gap_final_by_timer_without_traffic(tmp_path: Path) -> None:
    """A gap at the end of the traffic is counted once it is older than the reorder time, not
    at the next record; before that it is neither lost nor expected."""
    sc = Scenario("tail_gap")
    sc.add_sa(SASpec("192.0.2.1", "192.0.2.2", 0x77, link=sc.link(), count=50, drops={40, 41, 42}))
    path, doc = _write(tmp_path, sc)
    run = Run(table=TableSettings(active_timeout=3600.0, idle_timeout=3600.0))
    run.feed(path, each_batch=False)
    lost = "espmeter_sa_lost_total"
    early = samples(run.metrics.build())
    assert sum(early[lost].values()) == 0
    assert sum(early["espmeter_sa_expected_total"].values()) == 47
    run.meter.now += 2.05  # the reorder time (2 s) has passed since the gap opened; no datagram came
    late = samples(run.metrics.build())
    assert sum(late[lost].values()) == 3 == doc["sas"][0]["lost"]
    assert sum(late["espmeter_sa_expected_total"].values()) == 50
    assert sum(late["espmeter_tunnel_lost_total"].values()) == 3


def test_rekey_keeps_one_tunnel_series(tmp_path: Path) -> None:
    path, doc = _write(tmp_path, registry()["rekey"]())
    run = Run()
    run.feed(path, each_batch=False)
    final = run.finish()
    assert len(doc["tunnels"]) == 2  # two SA pairs (old and new SPIs) ...
    packets = final["espmeter_tunnel_packets_total"]
    assert len(packets) == 2  # ... one series per direction
    assert sum(packets.values()) == sum(sa["packets"] for sa in doc["sas"])
    assert len(final["espmeter_tunnel_info"]) == 1
    assert len(final["espmeter_sa_packets_total"]) == 4


def test_loss_events_count_per_sa_and_tunnel() -> None:
    run = Run()
    a, b = ipaddress.ip_address("198.51.100.7").packed, ipaddress.ip_address("192.0.2.1").packed
    events = [LossEvent(a, b, 0x99, ENCAP_UDP, 4500, 4501, None, None, first, first + 2, 10.0 + first, 11.0 + first)
              for first in (5, 50)]
    run.outputs.export_loss_events(events)
    s = samples(run.metrics.build())
    sa = (("dst", "192.0.2.1"), ("encap", "udp"), ("interface", ""), ("spi", "0x00000099"), ("src", "198.51.100.7"))
    tunnel = (("direction", "b_to_a"), ("peer_a", "192.0.2.1"), ("peer_b", "198.51.100.7"), ("ports", "4501/4500"))
    assert s["espmeter_sa_loss_events_total"] == {sa: 2}
    assert s["espmeter_tunnel_loss_events_total"] == {tunnel: 2}
    assert s["espmeter_tunnel_last_loss_event_timestamp_seconds"] == {tunnel: 61.0}
    assert events[0].count == 3


def _series_count(s: Samples) -> int:
    return sum(len(v) for v in s.values())


@pytest.mark.parametrize("per_sa", [True, False])
def test_max_series_caps_and_counts(per_sa: bool, tmp_path: Path) -> None:
    path, doc = _write(tmp_path, registry()["many_sas"]())  # 3000 SAs, 1500 tunnels
    run = Run(MetricsSettings(listen="127.0.0.1:9", per_sa=per_sa, max_series=1000))
    seen = run.feed(path)
    final = run.finish()
    health = 2 + 0 + 3  # one interface, no collector, sas + suppressed + build_info
    for s in [*seen, final]:
        assert _series_count(s) <= 1000
    tunnels = len(final["espmeter_tunnel_info"])
    sas = len(final["espmeter_sa_info"])
    assert (sas > 0) == per_sa
    used = 21 * tunnels + 10 * sas
    assert used <= 1000 - health < used + 21
    peers = {tuple(sorted((t["a"], t["b"]))) for t in doc["tunnels"]}
    wanted = 21 * len(peers) + (10 * len(doc["sas"]) if per_sa else 0)
    assert final["espmeter_series_suppressed_total"][()] == wanted - used


def test_ended_sas_leave_after_grace(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, registry()["no_loss"]())
    run = Run(MetricsSettings(listen="127.0.0.1:9", grace_s=10.0), TableSettings(idle_timeout=1.0))
    run.feed(path, each_batch=False)
    run.meter.tick(run.meter.now + 2)  # idle: every SA ends
    run.meter.now += 2
    ended = samples(run.metrics.build())
    assert len(ended["espmeter_sa_packets_total"]) == 6
    assert ended["espmeter_sas"][()] == 0
    run.meter.now += 11
    gone = samples(run.metrics.build())
    assert "espmeter_sa_packets_total" not in gone or not gone["espmeter_sa_packets_total"]
    assert gone["espmeter_tunnel_packets_total"] == ended["espmeter_tunnel_packets_total"]


def _free_port(family: int) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_endpoint_ipv6_serves_fresh_figures(tmp_path: Path) -> None:
    """A scrape over HTTP ([::1]) is answered with figures read on the daemon's next timer turn; every
    name served is in metric_names() (which the rules and dashboard generators use)."""
    path, doc = _write(tmp_path, registry()["random_loss"]())
    port = _free_port(socket.AF_INET6)
    outputs = Outputs()
    meter = Meter(MeterSettings(), outputs)
    settings = MetricsSettings(listen=f"[::1]:{port}")
    outputs.configure([OutputSpec("metrics", settings, lambda: MetricsOutput(settings, meter, lambda: HEALTH))])
    source = OfflineSource(str(path))
    while (batch := source.read()) is not None:
        meter.feed(batch.buf, batch.meta, batch.linktype)
    meter.finish()
    got: list[str] = []

    def scrape() -> None:
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=5) as r:
            got.append(r.read().decode())

    outputs.tick()  # starts serving
    t = threading.Thread(target=scrape)
    started = time.monotonic()
    t.start()
    while t.is_alive() and time.monotonic() - started < 5:
        outputs.tick()
        time.sleep(0.05)
    t.join()
    outputs.close()
    s = samples(got[0])
    assert s["espmeter_sa_lost_total"] == truth(doc)[0]["espmeter_sa_lost_total"]
    assert s["espmeter_capture_frames_total"] == {(("interface", "eth0"),): 5.0}
    names = {n for n in s if not n.endswith("_created")}
    assert names <= set(metric_names())
    # the capture's loss events reach the output (the gauge has series); no collector
    assert set(metric_names()) - names == {"espmeter_export_records_total", "espmeter_export_failures_total"}


def test_port_in_use_is_one_line_and_the_rest_runs(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        outputs = Outputs()
        meter = Meter(MeterSettings(), outputs)
        settings = MetricsSettings(listen=f"127.0.0.1:{port}")
        calls: list = []
        other = OutputSpec("other", 1, lambda: type("O", (), {"export": lambda self, r: calls.append(r)})())
        outputs.configure([OutputSpec("metrics", settings, lambda: MetricsOutput(settings, meter, lambda: HEALTH)),
                           other])
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        f"metrics: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(no metrics endpoint; metering and IPFIX export go on)"]
    outputs.export(["record"])
    assert calls == [["record"]]
