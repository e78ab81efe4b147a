"""Shared fixtures: write a ground-truth scenario, run `espmeter read --json` on a file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.gt import Scenario, registry

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ReadResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        assert self.returncode == 0, f"espmeter read failed ({self.returncode}): {self.stderr}"
        return json.loads(self.stdout)


def run_read(path: Path | str, *extra: str) -> ReadResult:
    """The real CLI in a subprocess, as a user would run it."""
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "read", "--json", str(path), *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    return ReadResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def espmeter_read() -> Callable[..., ReadResult]:
    return run_read


@pytest.fixture
def gt_capture(tmp_path: Path) -> Callable[[str | Scenario], tuple[Path, dict[str, Any]]]:
    """Write a named (or given) ground-truth scenario into tmp_path; return (path, expected JSON)."""

    def write(scenario: str | Scenario) -> tuple[Path, dict[str, Any]]:
        sc = registry()[scenario]() if isinstance(scenario, str) else scenario
        path = tmp_path / f"{sc.name}.{'pcapng' if sc.fmt == 'pcapng' else 'pcap'}"
        return path, sc.write(path)

    return write
