"""`check-config FILE` rejects everything `run FILE` would, listing every problem as FILE:LINE: key: message;
`run` validates the same way after merging --interface/--collector."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from agent.config import STATE_DIR

ROOT = Path(__file__).resolve().parent.parent


def espmeter(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_every_problem_is_listed_with_its_line(tmp_path: Path) -> None:
    cfg = tmp_path / "espmeter.yaml"
    cfg.write_text(
        "filter: hots 1.2.3.4\n"                          # 1
        "collectors:\n"                                   # 2
        "  - file:///nonexistent/espmeter/x.ipfix\n"      # 3
        "  - udp://127.0.0.1.5:4739\n"                    # 4
        "  - udp://2001:db8::1:4739\n"                    # 5
        "  - tcp://collector.example:4739\n"              # 6: a name is fine, resolved at run time
        f"  - file://{STATE_DIR}/espmeter.ipfix\n"        # 7: made by systemd when the unit starts
        "user: no-such-user-espm\n"                       # 8
        "pen: 4242\n"                                     # 9
    )
    res = espmeter("check-config", str(cfg))
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert re.fullmatch(rf"{cfg}:1: filter: BPF filter 'hots 1.2.3.4' does not compile: .*syntax error.*", lines[0])
    assert lines[1:] == [
        f"{cfg}:1: interfaces: none configured (use `interfaces:` or --interface IF)",
        f"{cfg}:3: collectors[0]: 'file:///nonexistent/espmeter/x.ipfix': directory /nonexistent/espmeter "
        "does not exist",
        f"{cfg}:4: collectors[1]: 'udp://127.0.0.1.5:4739': '127.0.0.1.5' is neither an IP address nor a valid "
        "host name",
        f"{cfg}:5: collectors[2]: 'udp://2001:db8::1:4739': an IPv6 address needs brackets, e.g. "
        "udp://[2001:db8::1]:4739",
        f"{cfg}:8: user: user 'no-such-user-espm' does not exist on this system",
    ]


def test_state_directory_is_the_units() -> None:
    unit = (ROOT / "agent" / "share" / "espmeter.service").read_text()
    assert re.search(r"^StateDirectory=(\S+)$", unit, re.M).group(1) == Path(STATE_DIR).name


def test_documentation_pen_is_a_warning(tmp_path: Path) -> None:
    cfg = tmp_path / "espmeter.yaml"
    cfg.write_text("interfaces: [eth0]\nuser: nobody\n")
    res = espmeter("check-config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith(f"{cfg}:1: pen: warning: 32473 is the RFC 5612 documentation PEN")
    cfg.write_text("interfaces: [eth0]\npen: 4242\n")
    res = espmeter("check-config", str(cfg))
    assert (res.returncode, res.stderr) == (0, "")
    assert "pen: 4242" in res.stdout


def test_run_with_a_bad_filter_fails_at_start_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "espmeter.yaml"
    cfg.write_text("interfaces: [lo]\nfilter: hots 1.2.3.4\npen: 4242\n")
    res = espmeter("run", "--config", str(cfg), timeout=20)
    assert res.returncode == 2
    assert re.fullmatch(rf"espmeter: {cfg}:2: filter: BPF filter 'hots 1.2.3.4' does not compile: [^\n]+\n",
                        res.stderr), res.stderr


def test_run_merges_the_command_line_then_validates(tmp_path: Path) -> None:
    cfg = tmp_path / "espmeter.yaml"
    cfg.write_text("collectors: ['udp://127.0.0.1:4739']\nmtu: 100\n")
    res = espmeter("run", "--config", str(cfg), "--collector", "udp://2001:db8::1:4739", timeout=20)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "espmeter: command line: collectors[0]: 'udp://2001:db8::1:4739': an IPv6 address needs brackets, "
        "e.g. udp://[2001:db8::1]:4739",
        f"espmeter: {cfg}:1: interfaces: none configured (use `interfaces:` or --interface IF)",
        f"espmeter: {cfg}:2: mtu: Input should be greater than or equal to 512 (got 100)",
    ]
    res = espmeter("run", "--collector", "udp://127.0.0.1:4739", timeout=20)
    assert (res.returncode, res.stderr) == (
        2, "espmeter: command line: interfaces: none configured (use `interfaces:` or --interface IF)\n")
