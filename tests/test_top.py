"""`espmeter top`: the table from two scrapes, the command's errors, and the real thing under tmux.

Under tmux (80x30) it reads a live agent's endpoint while a ground-truth capture is replayed on a
veth pair; the screen shows each tunnel direction's loss since start exactly as the generator's
truth has it, sorted by loss, no row wider than 80 columns, and `q` ends it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.top import HEADER, Direction, Reading, endpoint_url, lines
from tests.conftest import REPO
from tests.gt.scenarios import registry
from tests.netns import AgentProcess, veth_pair

T1 = ("192.0.2.1", "198.51.100.1", "")
T2 = ("10.0.0.1", "10.0.0.2", "4500/4500")


def _d(packets: float, lost: float, expected: float, reordered: float = 0, last: float | None = None) -> Direction:
    return Direction({"packets": packets, "lost": lost, "expected": expected, "reordered": reordered}, last)


def test_rows_rates_interval_and_total_loss_sorted_by_loss() -> None:
    before = Reading(1000.0, {(T1, "a_to_b"): _d(100, 0, 100), (T1, "b_to_a"): _d(100, 0, 100),
                              (T2, "a_to_b"): _d(50, 1, 51)}, {T1: "paris"})
    now = Reading(1002.0, {(T1, "a_to_b"): _d(300, 0, 300), (T1, "b_to_a"): _d(296, 4, 300, 2),
                           (T2, "a_to_b"): _d(60, 1, 61, 0, 1001.5)}, {T1: "paris"})
    seen: dict = {}
    rows = lines(now, before, seen)
    assert rows == [
        "paris: 192.0.2.1               a->b     100.0   0.00%   0.00%       0         -",
        "  <=> 198.51.100.1             b->a      98.0   2.00%   1.33%       2  00:16:42",
        "10.0.0.1                       a->b       5.0   0.00%   1.64%       0  00:16:41",
        "  <=> 10.0.0.2 udp 4500/4500   b->a         -       -       -       -         -",
    ]
    assert seen == {(T1, "b_to_a"): 1002.0}  # the view saw this direction's loss grow (no event time served)
    assert all(len(r) == len(HEADER) == 79 for r in rows)
    first = lines(before, None, {})  # no previous scrape: no rate, no interval loss; sorted by total loss
    assert first[0] == "10.0.0.1                       a->b         -       -   1.96%       0         -"


def test_endpoint_url_from_listen() -> None:
    assert endpoint_url("0.0.0.0:9108") == "http://127.0.0.1:9108/metrics"
    assert endpoint_url("[::]:9108") == "http://[::1]:9108/metrics"
    assert endpoint_url("[2001:db8::1]:80") == "http://[2001:db8::1]:80/metrics"


def _top(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "top", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=30, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_command_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "espmeter.yaml"
    cfg.write_text("interfaces: [eth0]\n")
    cases = [
        ((), "espmeter top: no endpoint: give --url URL, or --config FILE with metrics.listen"),
        (("--config", str(cfg)), f"espmeter top: {cfg}: metrics.listen is not set (the agent serves no metrics)"),
        (("--url", "127.0.0.1:9108"), "espmeter top: '127.0.0.1:9108' is not an http:// or https:// URL"),
        (("--url", "http://127.0.0.1:9108/metrics"), "espmeter top: needs a terminal"),
    ]
    for args, message in cases:
        result = _top(*args, cwd=tmp_path)
        if not args and Path("/etc/espmeter/espmeter.yaml").exists():
            continue  # a real installation's config is the default
        assert (result.returncode, result.stdout, result.stderr.strip()) == (2, "", message)


def _pane(session: str) -> list[str]:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                          check=True).stdout.splitlines()


@pytest.mark.root
def test_top_under_tmux_shows_ground_truth(tmp_path: Path) -> None:
    assert shutil.which("tmux"), "tmux is installed by .ci/run"
    cap = str(tmp_path / "cap.pcap")
    doc = registry()["random_loss"]().write(cap)
    want = {}
    for sa in doc["sas"]:
        if sa["expected"]:
            want[(sa["src"], sa["dst"])] = f"{100 * sa['lost'] / sa['expected']:.2f}%"
    session = f"espm-top-{uuid.uuid4().hex[:6]}"
    with veth_pair() as pair:
        cfg = tmp_path / "espmeter.yaml"
        cfg.write_text(f"interfaces: [{pair.capture_if}]\nmetrics: {{listen: '127.0.0.1:9108'}}\n")
        agent = AgentProcess(pair.capture_ns, ["--config", str(cfg)], tmp_path / "agent.log")
        try:
            agent.wait_for("capturing on")
            command = (f"ip netns exec {pair.capture_ns} env PYTHONPATH={REPO} {sys.executable} -m agent.cli top "
                       f"--config {cfg}")
            subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "30", command], check=True)
            pair.replay(cap, pps=5000)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                screen = _pane(session)
                shown = _directions(screen)
                if len(shown) == len(want) and all(shown.get(k) == v for k, v in want.items()):
                    break
                time.sleep(0.5)
            assert shown == want, "\n".join(screen)
            assert screen[2].split() == HEADER.split()
            assert all(len(line) <= 80 for line in screen)
            losses = [float(v.rstrip("%")) for v in [line.split()[-3] for line in screen[3:] if "->" in line]]
            tunnels = [max(losses[i:i + 2]) for i in range(0, len(losses), 2)]
            assert tunnels == sorted(tunnels, reverse=True)  # worst tunnel first (no interval loss any more)
            subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and _alive(session):
                time.sleep(0.1)
            assert not _alive(session), "q did not quit"
            assert agent.stop() == 0
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
            agent.kill()


def _alive(session: str) -> bool:
    return subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0


def _directions(screen: list[str]) -> dict[tuple[str, str], str]:
    """(src, dst) -> TOTAL% from the two lines of each tunnel on the screen."""
    out = {}
    rows = [line for line in screen[3:] if "->" in line]
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        a = first.split()[-7]
        b = second.split()[1]
        for line, (src, dst) in ((first, (a, b)), (second, (b, a))):
            out[(src, dst)] = line.split()[-3]
    return out
