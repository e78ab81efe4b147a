"""The compiled helpers (agent/_fastpath.c, agent/_sastate.c, built by setup.py where gcc and the Python
headers are).

`fastpath` and `sastate` are the extension modules, or None where they are not built or
`ESPMETER_PURE_PYTHON` is set (tests, or to compare): every user of them has a Python path with
identical results, slower.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def _load(name: str) -> ModuleType | None:
    if os.environ.get("ESPMETER_PURE_PYTHON"):
        return None
    try:
        return importlib.import_module(f"agent.{name}")
    except ImportError:  # nothing compiled here
        return None


sastate = _load("_sastate")


def __getattr__(name: str) -> ModuleType | None:
    """`fastpath` on first use: agent/_fastpath.c binds agent.sa.SA at import, and agent.tracker, which
    agent.sa imports, takes `sastate` from here first."""
    if name != "fastpath":
        raise AttributeError(name)
    global fastpath
    fastpath = _load("_fastpath") if sastate is not None else None
    return fastpath
