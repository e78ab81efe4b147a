"""The shipped unit: systemd-analyze verify passes, hardening stays tight, nothing needs W+X memory."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "agent" / "share" / "espmeter.service"
# Measured with systemd 252 `systemd-analyze security --offline=true`: 1.6 (docs/install.md).
MAX_EXPOSURE = 1.6


def _directives(text: str) -> dict[str, list[str]]:
    """Unit files repeat keys (SystemCallFilter=), so configparser is no use."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_verify_passes(tmp_path: Path) -> None:
    # verify insists ExecStart's binary exists; point only that at an existing one.
    true = shutil.which("true")
    assert true
    text = UNIT.read_text()
    copy = text.replace("ExecStart=/usr/local/bin/espmeter ", f"ExecStart={true} ")
    assert copy.count("\n") == text.count("\n") and copy != text
    unit = tmp_path / "espmeter.service"
    unit.write_text(copy)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "espmeter.service" not in result.stderr, result.stderr


def test_security_exposure_bound() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for espmeter\.service: (\d+\.\d+)", output)
    assert match, output
    assert float(match.group(1)) <= MAX_EXPOSURE, output


def test_required_directives() -> None:
    d = _directives(UNIT.read_text())
    expected = {
        "Type": "notify",
        "ExecStart": "/usr/local/bin/espmeter run --config /etc/espmeter/espmeter.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "WatchdogSec": "30",
        "DynamicUser": "yes",
        "AmbientCapabilities": "CAP_NET_RAW",
        "CapabilityBoundingSet": "CAP_NET_RAW",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_PACKET AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        "SystemCallArchitectures": "native",
        "MemoryMax": "512M",
        "TimeoutStopSec": "60",
        "KillSignal": "SIGTERM",
        "MemoryDenyWriteExecute": "yes",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    # these would hide the host's interfaces or void CAP_NET_RAW there
    assert "PrivateNetwork" not in d and "PrivateUsers" not in d and "IPAddressDeny" not in d


def test_runtime_needs_no_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes kills W+X mappings; the agent's libraries must not make any."""
    code = (
        "import ctypes, numpy, pcapy, pyroute2, yaml, pydantic\n"
        "numpy.random.default_rng(1).integers(0, 10, 1000).sum()\n"
        "ctypes.CDLL(None).getpid()\n"
        "bad = [l for l in open('/proc/self/maps') if 'w' in l.split()[1] and 'x' in l.split()[1]]\n"
        "print(len(bad)); print(''.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[0] == "0", result.stdout
