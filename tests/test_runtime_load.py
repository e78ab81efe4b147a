"""`espmeter run` validates its configuration in a child (agent.runtime.load, `python -m agent.settings`), so the
daemon never imports pydantic: the child must give exactly what the validation in-process gives."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.runtime import Check, ConfigError, load
from agent.settings import runtime

ROOT = Path(__file__).resolve().parent.parent

_FULL = """\
interfaces: [{name: eth0, direction: in}, {name: eth1}]
collectors: ["udp://127.0.0.1:4739", "file:///tmp/x.ipfix"]
records: biflow
active_timeout_s: 7
reorder_window: 64
tunnel_names: {"10.0.0.1": "paris"}
log: {level: debug, format: json}
metrics: {listen: "127.0.0.1:9477", per_sa: false}
strongswan: {vici: "unix:///var/run/charon.vici"}
loss_events: {min_length: 3, log_min: 10}
pen: 32473
"""


def _in_process(path: str | None, interfaces: list[str] | None, collectors: list[str] | None) -> tuple:
    warnings: list[str] = []
    cfg = load_config(path, run=True, interfaces=interfaces, collectors=collectors, warn=warnings.append)
    return runtime(cfg), warnings


@pytest.mark.parametrize("text, interfaces, collectors", [
    (None, ["eth0"], None),
    (None, ["eth0", "eth1"], ["tcp://127.0.0.1:4739"]),
    (_FULL, None, None),
    (_FULL, ["eth9"], ["udp://[::1]:4739"]),  # the command line's lists replace the file's
], ids=["defaults", "command-line", "every-section", "file-and-command-line"])
def test_the_child_gives_the_runtime_the_validation_gives(tmp_path: Path, text: str | None,
                                                          interfaces: list[str] | None,
                                                          collectors: list[str] | None) -> None:
    path = None
    if text is not None:
        path = str(tmp_path / "espmeter.yaml")
        Path(path).write_text(text)
    rt, warnings = load(path, interfaces, collectors)
    want_rt, want_warnings = _in_process(path, interfaces, collectors)
    assert rt == want_rt
    assert warnings == want_warnings and any("documentation PEN" in w for w in warnings)


def test_problems_come_back_worded_as_the_validation_words_them(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("interfaces: [eth0]\nmtu: 100\nbogus: 1\nlog: {level: loud}\n")
    with pytest.raises(ConfigError) as here:
        _in_process(str(path), None, None)
    with pytest.raises(ConfigError) as child:
        load(str(path))
    assert str(child.value) == str(here.value) and len(str(here.value).splitlines()) == 3
    with pytest.raises(ConfigError, match=r"/nonexistent\.yaml: cannot read configuration"):
        load("/nonexistent.yaml")


def test_a_child_that_dies_is_one_line_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(ConfigError, match=r"^the configuration check failed \(exit status 1\): no output$"):
        load(None, ["eth0"])


@pytest.mark.parametrize("executable", ["/nonexistent/python", "/etc/passwd"], ids=["missing", "not-executable"])
def test_a_child_that_cannot_start_is_one_line(monkeypatch: pytest.MonkeyPatch, executable: str) -> None:
    """The interpreter may be one the user the agent dropped to (`user:`) cannot execute: one line, no traceback."""
    monkeypatch.setattr(sys, "executable", executable)
    with pytest.raises(ConfigError, match=rf"^cannot run the configuration check: {executable}: \w"):
        load(None, ["eth0"])


def test_a_check_under_way_is_selected_on_and_leaves_nothing_behind() -> None:
    """The daemon selects on a SIGHUP's Check while its loop goes on; answered or cancelled, the child is
    reaped and its pipes and stderr file closed (no zombie, no descriptor per reload)."""
    fds = len(os.listdir("/proc/self/fd"))
    check = Check(None, ["eth0"])
    assert select.select([check], [], [], 20)[0] == [check]
    assert check.result()[0].interfaces == (("eth0", "both"),)
    cancelled = Check(None, ["eth0"])
    cancelled.cancel()
    assert cancelled._child.returncode is not None and len(os.listdir("/proc/self/fd")) == fds


def test_the_daemon_never_imports_pydantic() -> None:
    """Once imported, pydantic and its schemas stay resident (README: memory of `espmeter run`)."""
    code = ("import sys\nfrom agent.daemon import Agent\nfrom agent.runtime import load\n"
            "load(None, ['eth0'], ['udp://127.0.0.1:4739'])\n"
            "print(sorted(m for m in sys.modules\n"
            "             if m.split('.')[0] in ('pydantic', 'pydantic_core', 'annotated_types')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_child_imports_this_agent_whatever_the_working_directory(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m` would put the working directory first: an `agent` package there must not be the one run."""
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "__init__.py").write_text("raise SystemExit('not this agent')\n")
    (tmp_path / "agent" / "settings.py").write_text("raise SystemExit('not this agent')\n")
    monkeypatch.chdir(tmp_path)
    rt, _ = load(None, ["eth0"])
    assert rt.interfaces == (("eth0", "both"),)
