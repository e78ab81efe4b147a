"""What `espmeter run` runs with (`Runtime`), validated in a child process.

The configuration is validated with pydantic (agent.config). Once imported, pydantic and the schemas
pydantic-core builds for the settings models stay resident: about a third of an idle agent (README).
So the daemon never imports them: `load` runs the validation (`python -m agent.settings`) in a child,
at start and at each SIGHUP, and takes back `Runtime`, plain dataclasses, and the warnings to log.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.capture import CaptureSettings
from agent.meter import MeterSettings
from agent.metrics import MetricsSettings
from exporter.settings import ExportSettings


class ConfigError(Exception):
    """A configuration problem, already formatted as one ``FILE:LINE: KEY: message`` line."""


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything the agent runs with, derived from one validated configuration (agent.settings.runtime)."""

    meter: MeterSettings
    export: ExportSettings
    capture: CaptureSettings
    interfaces: tuple[tuple[str, str], ...]  # (name, direction)
    log: LogSettings
    user: str | None
    metrics: MetricsSettings | None  # None: no endpoint
    vici: str | None  # strongSwan's vici socket URL; None: heuristic pairing only
    loss_log_min: int  # loss events this long get a log line (0: none); the rest of loss_events is in meter


Request = tuple[str | None, list[str] | None, list[str] | None]  # config file, --interface, --collector
Answer = tuple[Runtime | None, str | None, list[str]]  # the runtime or the error, and the warnings


def load(config: str | None, interfaces: list[str] | None = None,
         collectors: list[str] | None = None) -> tuple[Runtime, list[str]]:
    """`agent.settings.load_runtime` for `espmeter run`, in a child: the Runtime and the warnings;
    ConfigError with every problem, as the validation words it."""
    package_root = str(Path(__file__).resolve().parent.parent)  # the child imports this very agent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))}
    request: Request = (config, interfaces, collectors)
    child = subprocess.run([sys.executable, "-m", "agent.settings"], input=pickle.dumps(request),
                           capture_output=True, env=env, check=False)
    try:
        rt, error, warnings = pickle.loads(child.stdout)
    except Exception:  # it died before answering: its last words
        last = (child.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"the configuration check failed (exit status {child.returncode}): {last}") from None
    if error is not None:
        raise ConfigError(error)
    return rt, warnings
