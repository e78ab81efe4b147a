"""The one settings path: every configuration key reaches the runtime objects, through `runtime()` only."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import agent.config
from agent.capture import CaptureSettings
from agent.config import ConfigError, Settings, parse_config
from agent.meter import Meter, MeterSettings
from agent.settings import runtime
from exporter import ExportSettings
from exporter.collect import read_file
from exporter.infomodel import check_pen
from tests.gt.scenarios import registry
from tests.ipfix_sums import is_sa_record, sums, truth

ROOT = Path(__file__).resolve().parent.parent

# a value different from the default for every key of the schema
NON_DEFAULT = {
    "interfaces": ["eth9"],
    "filter": "host 192.0.2.1",
    "snaplen": 512,
    "buffer_size_mb": 16,
    "collectors": ["udp://127.0.0.1:9995"],
    "observation_domain": 7,
    "pen": 4242,
    "mtu": 1200,
    "template_refresh_s": 30,
    "template_refresh_messages": 10,
    "records": "biflow",
    "active_timeout_s": 5,
    "idle_timeout_s": 6,
    "tcp_buffer_messages": 11,
    "stats_interval_s": 12,
    "reorder_window": 64,
    "reorder_time_s": 0.5,
    "jump_limit": 1000,
    "max_sas": 13,
    "fragment_timeout_s": 15,
    "max_fragments": 16,
    "tunnel_names": {"192.0.2.1": "paris"},
    "log": {"level": "debug"},
    "user": "nobody",
    "metrics": {"listen": "127.0.0.1:9108"},
    "strongswan": {"vici": "unix:///var/run/charon.vici"},
    "loss_events": {"min_length": 2},
}


def test_defaults_of_the_runtime_dataclasses_are_the_schema_defaults() -> None:
    rt = runtime(Settings())
    assert rt.meter == MeterSettings()
    assert rt.export == ExportSettings()
    assert rt.capture == CaptureSettings()


def test_every_key_reaches_the_runtime() -> None:
    assert set(NON_DEFAULT) == set(Settings.model_fields), "add the new key to NON_DEFAULT"
    default = runtime(Settings())
    for key, value in NON_DEFAULT.items():
        assert runtime(Settings.model_validate({key: value})) != default, f"{key} is not used by runtime()"
    for sub in ({"min_length": 2}, {"per_interval": 3}, {"log_min": 7}):  # every key of the section too
        assert runtime(Settings.model_validate({"loss_events": sub})) != default, sub


def test_one_pen_validator_and_6871_is_cert() -> None:
    assert not hasattr(agent.config, "check_pen") or agent.config.check_pen is check_pen
    with pytest.raises(ConfigError, match=r"x:1: pen: PEN 6871 is not allowed: .* as 6871 \(CERT\)"):
        parse_config("pen: 6871\n", "x")
    with pytest.raises(ValueError, match=r"\(CERT\)"):
        check_pen(6871 + 65536)


def test_mtu_minimum_is_512_everywhere() -> None:
    from exporter.message import MIN_MTU

    assert MIN_MTU == 512
    with pytest.raises(ConfigError, match="mtu: Input should be greater than or equal to 512"):
        parse_config("mtu: 300\n", "x")
    # the exporter no longer carries its own copy of the bounds
    assert "validate" not in dir(ExportSettings)
    assert "MIN_MTU" not in inspect.getsource(sys.modules["exporter.message"].MessageBuilder)


def test_reload_reconfigures_the_meter_parts() -> None:
    meter = Meter(MeterSettings())
    new = runtime(parse_config("reorder_window: 64\nfragment_timeout_s: 3\nmax_fragments: 5\n"
                               "records: biflow\ntunnel_names: {'192.0.2.1': paris}\n", "x")).meter
    meter.configure(new)
    assert meter.settings is new and meter.table.settings is new.table
    assert meter.table.settings.tracker.window == 64
    assert (meter.frags.timeout, meter.frags.max_entries) == (3.0, 5)
    assert meter.producer.biflow and meter.producer.names == {"192.0.2.1": "paris"}


def _read(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "read", *args], capture_output=True, text=True,
                          cwd=ROOT)


def test_read_config_exports_to_the_files_collectors(tmp_path: Path) -> None:
    """`read --config` sends to the file's `collectors:` with its export settings; no `interfaces:` needed."""
    cap = tmp_path / "c.pcap"
    registry()["random_loss"]().write(str(cap))
    out = tmp_path / "out.ipfix"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"collectors: ['file://{out}']\nobservation_domain: 77\nrecords: biflow\n")
    res = _read("--json", "--config", str(cfg), str(cap))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    records = read_file(str(out))
    assert sums(records) == truth(doc)
    assert all("reverseIPSecSPI" in r for r in records if is_sa_record(r))  # records: biflow
    assert {r["_odid"] for r in records} == {77}
    # --collector replaces the file's list
    other, size = tmp_path / "other.ipfix", out.stat().st_size
    assert _read("--config", str(cfg), "--collector", f"file://{other}", str(cap)).returncode == 0
    assert sums(read_file(str(other))) == truth(doc)
    assert out.stat().st_size == size
