"""What `espmeter run` runs with (`Runtime`), validated in a child process.

The configuration is validated with pydantic (agent.config). Once imported, pydantic and the schemas
pydantic-core builds for the settings models stay resident: about a third of an idle agent (README).
So the daemon never imports them: `load` runs the validation (agent.settings.main) in a child,
at start and at each SIGHUP, and takes back `Runtime`, plain dataclasses, and the warnings to log.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass

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


# the child resolves imports as this process does (its sys.path; isolated from the working directory and
# PYTHON* variables otherwise): the same agent and the same libraries
_CHILD = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); from agent.settings import main; main()"

Request = tuple[str | None, list[str] | None, list[str] | None]  # config file, --interface, --collector
Answer = tuple[Runtime | None, str | None, list[str]]  # the runtime or the error, and the warnings


class Check:
    """`agent.settings.load_runtime` for `espmeter run`, under way in a child: readable at `fileno()` once
    it answers (or dies), then `result()`. The daemon's loop selects on it during a SIGHUP reload, so
    capture goes on while the child starts (~0.3 s: longer than a ring is sized to wait, config.py)."""

    def __init__(self, config: str | None, interfaces: list[str] | None = None,
                 collectors: list[str] | None = None) -> None:
        request: Request = (config, interfaces, collectors)
        # not a pipe: a child with much to say never blocks on it; closed by result() or cancel()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._child = subprocess.Popen([sys.executable, "-I", "-c", _CHILD, json.dumps(sys.path)],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        except OSError as e:  # e.g. an interpreter the user the agent dropped to (`user:`) may not execute
            self._stderr.close()
            raise ConfigError(f"cannot run the configuration check: {sys.executable}: {e.strerror}") from None
        assert self._child.stdin is not None and self._child.stdout is not None
        self._stdout = self._child.stdout
        with contextlib.suppress(BrokenPipeError), self._child.stdin as stdin:  # it died first: result() says so
            stdin.write(pickle.dumps(request))

    def fileno(self) -> int:
        return self._stdout.fileno()

    def result(self) -> tuple[Runtime, list[str]]:
        """The Runtime and the warnings; ConfigError with every problem, as the validation words it."""
        with self._stdout, self._stderr:
            answer = self._stdout.read()
            status = self._child.wait()
            self._stderr.seek(0)
            stderr = self._stderr.read()
        try:
            rt, error, warnings = pickle.loads(answer)
        except Exception:  # it died before answering: its last words
            last = (stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"the configuration check failed (exit status {status}): {last}") from None
        if error is not None:
            raise ConfigError(error)
        return rt, warnings

    def cancel(self) -> None:
        """A newer SIGHUP or a stop: the child's answer is not wanted."""
        self._child.kill()
        self._child.wait()
        self._stdout.close()
        self._stderr.close()


def can_check() -> bool:
    """Whether this process may start a Check: after `user:` dropped privileges, an interpreter only root
    can reach (a venv under /root) cannot be executed, so no SIGHUP can apply a new configuration."""
    return os.access(sys.executable, os.X_OK)


def load(config: str | None, interfaces: list[str] | None = None,
         collectors: list[str] | None = None) -> tuple[Runtime, list[str]]:
    """`Check(...).result()`: the child's Runtime and warnings, waited for (the start)."""
    return Check(config, interfaces, collectors).result()
