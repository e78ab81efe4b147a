"""docs/install.md works from the wheel alone: build it (no warning), install it apart from the source
tree, and run the documented steps with what the wheel carries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

INSTALL_MD = (REPO / "docs" / "install.md").read_text()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the source tree, installed into a directory of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".ruff_cache", ".hypothesis"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    assert "Warning" not in build.stdout + build.stderr, build.stdout + build.stderr  # e.g. license deprecation
    (wheel,) = (tmp / "dist").glob("espmeter-*.whl")
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return target


def espmeter(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, run outside the source tree (its dependencies from this venv)."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([str(site / "bin" / "espmeter"), *args], capture_output=True, text=True, cwd=site.parent,
                          env=env, timeout=120)


def test_the_wheel_carries_the_unit_and_the_example_configuration(installed: Path, tmp_path: Path) -> None:
    for fmt, shipped in (("config", "agent/share/espmeter.yaml"), ("systemd", "agent/share/espmeter.service")):
        assert f"espmeter templates --format {fmt} -o " in INSTALL_MD
        out = tmp_path / fmt
        proc = espmeter(installed, "templates", "--format", fmt, "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        assert out.read_text() == (REPO / shipped).read_text()


def test_the_installed_agent_runs_from_the_wheel(installed: Path) -> None:
    version = espmeter(installed, "--version")
    assert version.returncode == 0 and version.stdout.startswith("espmeter 0.")
    probe = subprocess.run([sys.executable, "-c", "import agent; print(agent.__file__)"], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(installed)}, cwd=installed.parent)
    assert probe.stdout.startswith(str(installed))  # not the source tree
    demo = espmeter(installed, "demo")
    assert demo.returncode == 0 and "received by `espmeter collect`" in demo.stdout, demo.stderr


def test_install_doc_asks_for_nothing_the_wheel_does_not_need() -> None:
    assert "libpcap0.8" not in INSTALL_MD  # pcapy-ng's wheel carries libpcap
    assert "systemd/espmeter.service" not in INSTALL_MD and "examples/espmeter.yaml" not in INSTALL_MD
