"""Configuration: defaults, the shipped example, one-line errors with FILE:LINE: KEY, CLI overrides."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from agent.config import (
    ConfigError,
    Settings,
    check_config,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "agent" / "share" / "espmeter.yaml"


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "espmeter.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:")
    return message.removeprefix(f"{path}:")


def test_defaults() -> None:
    s = load_config(None)
    assert s.interfaces == [] and s.collectors == [] and s.filter is None
    assert (s.snaplen, s.buffer_size_mb, s.observation_domain, s.pen, s.mtu) == (256, 8, 1, 32473, 1400)
    assert (s.template_refresh_s, s.template_refresh_messages, s.records) == (300, 100, "sa")
    assert (s.active_timeout_s, s.idle_timeout_s) == (60, 30)
    assert (s.reorder_window, s.reorder_time_s, s.jump_limit) == (1024, 2.0, 1_000_000)
    assert (s.max_sas, s.fragment_timeout_s, s.max_fragments) == (250_000, 30, 10000)
    assert (s.tcp_buffer_messages, s.stats_interval_s) == (10000, 60)
    assert s.tunnel_names == {} and s.user is None
    assert (s.log.level, s.log.format) == ("info", "text")


def test_every_field_has_help_text() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_example_loads_and_lists_every_key_with_its_default() -> None:
    assert load_config(str(EXAMPLE)) == Settings()
    keys = set(yaml.safe_load(EXAMPLE.read_text()))
    assert keys == set(Settings.model_fields)


def test_empty_file_and_empty_sections_are_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# nothing\n")
    assert load_config(str(path)) == Settings()
    path.write_text("log:\ninterfaces:\n")
    assert load_config(str(path)) == Settings()


def test_full_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "interfaces: [eth0, {name: wan1, direction: in}]\n"
        "collectors: ['udp://[::1]:4739', 'tcp://collector.example:4740', 'file:///var/lib/espmeter/x']\n"
        "tunnel_names: {192.0.2.1: paris, '2001:DB8::1': berlin}\n"
        "reorder_time_s: 1\n"
        "log: {level: debug, format: json}\n"
        "user: espmeter\n"
    )
    s = load_config(str(path))
    assert [(i.name, i.direction) for i in s.interfaces] == [("eth0", "both"), ("wan1", "in")]
    assert s.collectors[0] == "udp://[::1]:4739"
    assert s.tunnel_names == {"192.0.2.1": "paris", "2001:db8::1": "berlin"}
    assert s.reorder_time_s == 1.0 and s.log.format == "json" and s.user == "espmeter"
    path.write_text("metrics: {listen: '[::1]:9108', per_sa: false}\n")
    s = load_config(str(path))
    assert (s.metrics.listen, s.metrics.per_sa, s.metrics.max_series) == ("[::1]:9108", False, 50_000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # bad collector URL, second list item on line 3
        (
            "collectors:\n  - udp://192.0.2.1:4739\n  - udp://x\n",
            "3: collectors[1]: 'udp://x': missing port (expected udp://HOST:PORT, tcp://HOST:PORT or file://PATH)",
        ),
        ("collectors: [http://h:80]\n", "1: collectors[0]: 'http://h:80' is not a valid collector URL"),
        ("\ncollectors:\n  - udp://h:0\n", "3: collectors[0]: 'udp://h:0': port must be 1-65535"),
        ("collectors:\n  - tcp://h:70000\n", "2: collectors[0]: 'tcp://h:70000': port must be 1-65535"),
        (
            "collectors: ['udp://[::zz]:1']\n",
            "1: collectors[0]: 'udp://[::zz]:1' is not a valid collector URL",
        ),
        ("snaplen: 300\nsnaplem: 3\n", "2: snaplem: unknown key 'snaplem' (allowed: interfaces, filter,"),
        (
            "log:\n  level: info\n  colour: red\n",
            "3: log.colour: unknown key 'colour' (allowed: level, format)",
        ),
        ("snaplen: '300'\n", "1: snaplen: Input should be a valid integer (got '300')"),
        ("snaplen: true\n", "1: snaplen: Input should be a valid integer (got True)"),
        ("snaplen: 50\n", "1: snaplen: Input should be greater than or equal to 96 (got 50)"),
        ("pen: 65545\n", "1: pen: PEN 65545 is not allowed: nfdump 1.7 truncates PENs to 16 bits"),
        ("pen: 29305\n", "1: pen: PEN 29305 is not allowed"),
        ("observation_domain: 0\n", "1: observation_domain: Input should be greater than or equal to 1"),
        ("mtu: 100\n", "1: mtu: Input should be greater than or equal to 512"),
        ("template_refresh_messages: 0\n", "1: template_refresh_messages: Input should be greater than or equal to 1"),
        ("reorder_window: 70000\n", "1: reorder_window: Input should be less than or equal to 65536"),
        ("records: flows\n", "1: records: 'flows' is not allowed (expected 'sa' or 'biflow')"),
        ("log:\n  level: loud\n", "2: log.level: 'loud' is not allowed"),
        (
            "tunnel_names:\n  192.0.2.1: a\n  10.0.0.300: b\n",
            "3: tunnel_names['10.0.0.300']: '10.0.0.300' is not a valid IPv4 or IPv6 address",
        ),
        (
            "interfaces:\n  - eth0\n  - name: eth1\n    direction: sideways\n",
            "4: interfaces[1].direction: 'sideways' is not allowed (expected 'in', 'out' or 'both')",
        ),
        ("interfaces:\n  - eth0\n  - name: eth1\n    dir: in\n", "4: interfaces[1].dir: unknown key 'dir'"),
        ("interfaces:\n  - 'bad name'\n", "2: interfaces[0].name: 'bad name' is not a valid interface name"),
        ("interfaces: eth0\n", "1: interfaces: Input should be a valid list (got 'eth0')"),
        ("snaplen: [1\n", "2: YAML syntax error: expected ',' or ']', but got '<stream end>'"),
        ("a: b\n  c: d\n", "2: YAML syntax error: mapping values are not allowed here"),
        ("mtu: 1400\nmtu: 1500\n", "2: mtu: duplicate key"),
        ("- eth0\n", "1: top level must be a mapping"),
        ("metrics:\n  listen: '::1:9108'\n",
         "2: metrics.listen: '::1:9108': an IPv6 address goes in brackets: [::1]:9108"),
        ("metrics: {listen: '127.0.0.1'}\n", "1: metrics.listen: '127.0.0.1' is not ADDR:PORT (port 1-65535"),
        ("metrics: {listen: 'localhost:9108'}\n", "1: metrics.listen: 'localhost:9108': 'localhost' is not an IP"),
        ("metrics: {listen: '[1.2.3.4]:9108'}\n", "1: metrics.listen: '[1.2.3.4]:9108': brackets are for IPv6"),
        ("metrics: {listen: '0.0.0.0:0'}\n", "1: metrics.listen: '0.0.0.0:0' is not ADDR:PORT"),
        ("metrics: {max_series: 10}\n", "1: metrics.max_series: Input should be greater than or equal to 100"),
    ],
)
def test_invalid_value_gives_one_error_with_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    message = _error(tmp_path, text)
    assert message.startswith(expected), message
    assert "more problem" not in message


def test_several_errors_are_all_listed_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "espmeter.yaml"
    path.write_text("mtu: 1\nsnaplen: 1\npen: 0\nmtu: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    lines = str(info.value).splitlines()
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{path}:2", "snaplen"], [f"{path}:3", "pen"], [f"{path}:4", "mtu"], [f"{path}:4", "mtu"]
    ], lines
    assert "more problem" not in str(info.value)


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError, match=r"^/nonexistent/e.yaml: cannot read configuration: "):
        load_config("/nonexistent/e.yaml")


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"mtu: 1400\n\xff\xfe")
    with pytest.raises(ConfigError, match=r": not UTF-8 text \(byte 10\)$"):
        load_config(str(path))


def test_cli_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("interfaces: [eth0]\ncollectors: ['udp://192.0.2.1:4739']\nmtu: 1200\n")
    s = load_config(str(path), interfaces=["wan0", "wan1"])
    assert [i.name for i in s.interfaces] == ["wan0", "wan1"]
    assert s.collectors == ["udp://192.0.2.1:4739"] and s.mtu == 1200
    s = load_config(str(path), interfaces=["wan0"], collectors=["tcp://[2001:db8::1]:4739"])
    assert s.collectors == ["tcp://[2001:db8::1]:4739"] and [i.name for i in s.interfaces] == ["wan0"]
    with pytest.raises(ConfigError, match=r"^command line: collectors\[0\]: 'udp://nope': missing port"):
        load_config(str(path), collectors=["udp://nope"])
    with pytest.raises(ConfigError, match=r"^command line: collectors\[0\]: 'udp://nope': missing port"):
        load_config(None, collectors=["udp://nope"])


def test_check_config_prints_effective_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("interfaces: [eth0]\nmtu: 1200\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_config(str(path), out, err) == 0
    assert err.getvalue() == f"{path}:1: pen: warning: 32473 is the RFC 5612 documentation PEN: set your own " \
        "(IANA assigns one free: https://pen.iana.org)\n"
    effective = yaml.safe_load(out.getvalue())
    assert effective["mtu"] == 1200 and effective["snaplen"] == 256
    assert effective["interfaces"] == [{"name": "eth0", "direction": "both"}]
    # the printed configuration is itself a valid configuration, equal to the input
    assert parse_config(out.getvalue(), "effective") == load_config(str(path))


def test_check_config_error_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mtu: 1200\nsnaplen: x\ninterfaces: [eth0]\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_config(str(path), out, err) == 2
    assert out.getvalue() == ""
    assert err.getvalue() == f"{path}:2: snaplen: Input should be a valid integer (got 'x')\n"
