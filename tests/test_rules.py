"""`espmeter templates --format prometheus-rules|grafana`, checked by Prometheus's own promtool.

`promtool test rules` evaluates the generated rules on series that cross the loss threshold and
on series that stay under it, a tunnel that goes silent and one that does not, an interface that
drops and one that does not, a collector that fails and one that does not.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.metrics import metric_names
from tests.conftest import REPO

A = 'instance="r1", job="espmeter", peer_a="192.0.2.1", peer_b="198.51.100.1", ports=""'
B = 'instance="r1", job="espmeter", peer_a="10.0.0.1", peer_b="10.0.0.2", ports="4500/4500"'
LOSS_A = {"instance": "r1", "job": "espmeter", "peer_a": "192.0.2.1", "peer_b": "198.51.100.1",
          "tunnel_name": "paris", "severity": "warning"}


def _templates(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "templates", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def _series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _alert(labels: dict[str, str], summary: str, description: str | None = None) -> dict:
    annotations = {"summary": summary} | ({"description": description} if description else {})
    return {"exp_labels": labels, "exp_annotations": annotations}


def _loss(direction: str, percent: str, threshold: str) -> dict:
    return _alert({**LOSS_A, "direction": direction}, f"ESP loss {percent} on paris 192.0.2.1 <=> 198.51.100.1 "
                  f"({direction})", f"More than {threshold} of the ESP sequence numbers of this tunnel direction "
                  "were lost over 5 minutes (measured passively by espmeter).")


def _promtool_test(tmp_path: Path, rules: str, alerts: list[dict], exprs: list[dict]) -> None:
    (tmp_path / "rules.yml").write_text(rules)
    series = [
        (f'espmeter_tunnel_lost_total{{{A}, direction="a_to_b"}}', "0+2x40"),  # 2 % of 100 per minute
        (f'espmeter_tunnel_expected_total{{{A}, direction="a_to_b"}}', "0+100x40"),
        (f'espmeter_tunnel_lost_total{{{A}, direction="b_to_a"}}', "0+0.5x40"),  # 0.5 %
        (f'espmeter_tunnel_expected_total{{{A}, direction="b_to_a"}}', "0+100x40"),
        (f'espmeter_tunnel_info{{{A}, tunnel_name="paris"}}', "1x40"),
        (f'espmeter_tunnel_datagrams_total{{{B}, direction="a_to_b"}}', "0+100x10 1000x30"),  # silent after 10 m
        (f'espmeter_tunnel_datagrams_total{{{B}, direction="b_to_a"}}', "0+100x40"),
        (f'espmeter_tunnel_info{{{B}, tunnel_name="berlin"}}', "1x40"),
        ('espmeter_capture_dropped_total{instance="r1", job="espmeter", interface="eth0"}', "0+5x40"),
        ('espmeter_capture_dropped_total{instance="r1", job="espmeter", interface="eth1"}', "0x40"),
        ('espmeter_export_failures_total{instance="r1", job="espmeter", collector="udp://c1:4739"}', "0+1x40"),
        ('espmeter_export_failures_total{instance="r1", job="espmeter", collector="udp://c2:4739"}', "0x40"),
    ]
    test = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": alerts,
        "promql_expr_test": exprs,
    }]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    check = subprocess.run(["promtool", "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_rules_cross_and_do_not_cross(tmp_path: Path) -> None:
    rules = _templates("--format", "prometheus-rules")
    assert rules.returncode == 0, rules.stderr
    silent_b = {"instance": "r1", "job": "espmeter", "peer_a": "10.0.0.1", "peer_b": "10.0.0.2",
                "ports": "4500/4500", "direction": "a_to_b", "tunnel_name": "berlin", "severity": "warning"}
    alerts = [
        {"eval_time": "4m", "alertname": "EspmeterTunnelLoss", "exp_alerts": []},  # crossed, not yet for 5 m
        # 2 % crosses, 0.5 % does not
        {"eval_time": "15m", "alertname": "EspmeterTunnelLoss", "exp_alerts": [_loss("a_to_b", "2%", "1.00%")]},
        {"eval_time": "12m", "alertname": "EspmeterTunnelSilent", "exp_alerts": []},  # silent for 2 m only
        {"eval_time": "25m", "alertname": "EspmeterTunnelSilent", "exp_alerts": [_alert(
            silent_b, "No ESP for 5 minutes on berlin 10.0.0.1 <=> 10.0.0.2 (a_to_b) "
            "(it carried traffic in the last hour)")]},
        {"eval_time": "15m", "alertname": "EspmeterCaptureDrops", "exp_alerts": [_alert(
            {"instance": "r1", "job": "espmeter", "interface": "eth0", "severity": "warning"},
            "espmeter on r1 drops packets before capture on eth0: its figures are incomplete "
            "(this is not tunnel loss)")]},
        {"eval_time": "15m", "alertname": "EspmeterExportFailures", "exp_alerts": [_alert(
            {"instance": "r1", "job": "espmeter", "collector": "udp://c1:4739", "severity": "warning"},
            "espmeter on r1 cannot deliver IPFIX to udp://c1:4739")]},
        {"eval_time": "15m", "alertname": "EspmeterSeriesSuppressed", "exp_alerts": []},
    ]
    ratio = {k: v for k, v in LOSS_A.items() if k != "severity"}
    exprs = [{"expr": "espmeter:tunnel_loss_ratio:5m", "eval_time": "10m", "exp_samples": [
        {"labels": _series("espmeter:tunnel_loss_ratio:5m", {**ratio, "direction": "a_to_b"}), "value": 0.02},
        {"labels": _series("espmeter:tunnel_loss_ratio:5m", {**ratio, "direction": "b_to_a"}), "value": 0.005},
    ]}]
    _promtool_test(tmp_path, rules.stdout, alerts, exprs)


def test_loss_ratio_and_for_options(tmp_path: Path) -> None:
    """--loss-ratio 0.001: the 0.5 % direction crosses too; --for 10m: not firing at 10 m, firing at 15 m."""
    rules = _templates("--format", "prometheus-rules", "--loss-ratio", "0.001", "--for", "10m")
    assert rules.returncode == 0, rules.stderr
    both = [_loss("a_to_b", "2%", "0.10%"), _loss("b_to_a", "0.5%", "0.10%")]
    alerts = [{"eval_time": "10m", "alertname": "EspmeterTunnelLoss", "exp_alerts": []},
              {"eval_time": "15m", "alertname": "EspmeterTunnelLoss", "exp_alerts": both}]
    _promtool_test(tmp_path, rules.stdout, alerts, [])


@pytest.mark.parametrize(("args", "message"), [
    (["--loss-ratio", "2"], "espmeter templates: --loss-ratio 2.0 must be between 0 and 1 (0.01 = 1 %)"),
    (["--for", "5 minutes"], "espmeter templates: --for '5 minutes' is not a Prometheus duration (e.g. 30s, 5m, 1h)"),
])
def test_bad_rule_options_are_one_line_exit_2(args: list[str], message: str) -> None:
    result = _templates("--format", "prometheus-rules", *args)
    assert (result.returncode, result.stdout, result.stderr.strip()) == (2, "", message)


def test_grafana_dashboard_is_valid_and_names_only_served_metrics() -> None:
    result = _templates("--format", "grafana")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["title"] and doc["uid"] and doc["panels"]
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    assert all(p["targets"] for p in doc["panels"])
    named = {m for e in exprs for m in re.findall(r"\bespmeter_[a-z_]+", e)}
    assert named <= set(metric_names()), named - set(metric_names())
    # together the panels show every per-tunnel counter
    assert {f"espmeter_tunnel_{c}_total" for c in ("lost", "expected", "packets", "octets", "reordered",
                                                     "duplicates", "late", "loss_events")} <= named
