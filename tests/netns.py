"""Network namespaces and veth pairs for live tests (created and removed by the tests themselves)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """Resident set size of a process, KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


@dataclass
class VethPair:
    sender_ns: str
    capture_ns: str
    sender_if: str
    capture_if: str

    def run(self, ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *cmd, check=check)

    def ifindex(self, ns: str, ifname: str) -> int:
        out = self.run(ns, "cat", f"/sys/class/net/{ifname}/ifindex").stdout
        return int(out)

    def replay(self, pcap: str, pps: int | None = None, realtime: bool = False) -> None:
        """tcpreplay into the sender side; the frames arrive on the capture side.

        `realtime` keeps the capture's own timing (for figures that depend on the reorder time)."""
        speed = [] if realtime else ["--pps", str(pps)] if pps else ["--topspeed"]
        self.run(self.sender_ns, "tcpreplay", "-q", "-i", self.sender_if, *speed, pcap)

    def recreate_capture_if(self) -> None:
        """Delete the capture-side link and make it again (a flapping WAN link)."""
        self.run(self.capture_ns, "ip", "link", "del", self.capture_if)
        time.sleep(0.5)
        self._link()

    def create_link(self) -> None:
        """The veth appears now (an interface that did not exist when the agent started)."""
        self._link()

    def _link(self) -> None:
        sh("ip", "link", "add", self.sender_if, "netns", self.sender_ns, "type", "veth",
           "peer", "name", self.capture_if, "netns", self.capture_ns)
        self._up()

    def _up(self) -> None:
        for ns, ifname in ((self.sender_ns, self.sender_if), (self.capture_ns, self.capture_if)):
            self.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1", check=False)
            self.run(ns, "ip", "link", "set", ifname, "mtu", "9000", "up")


@contextmanager
def veth_pair(link: bool = True) -> Iterator[VethPair]:
    """Two namespaces and a veth between them; `link=False` leaves the link to `pair.create_link()`."""
    tag = uuid.uuid4().hex[:6]
    pair = VethPair(f"espm-s-{tag}", f"espm-c-{tag}", f"vs{tag}", f"vc{tag}")
    try:
        for ns in (pair.sender_ns, pair.capture_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        if link:
            pair._link()
        yield pair
    finally:
        for ns in (pair.sender_ns, pair.capture_ns):
            sh("ip", "netns", "del", ns, check=False)


class AgentProcess:
    """`espmeter run` in a namespace; its stderr log goes to a file the test can read."""

    def __init__(self, ns: str, args: list[str], log: Path, env: dict[str, str] | None = None,
                 wrapper: tuple[str, ...] = ()) -> None:
        """`wrapper`: a command the agent runs under, e.g. setpriv to take a capability away."""
        self.log = log
        self.handle = log.open("w")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *wrapper, sys.executable, "-m", "agent.cli", "run", *args],
            stdout=self.handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"agent did not log {text!r}:\n{self.log.read_text()}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.handle.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.handle.close()
