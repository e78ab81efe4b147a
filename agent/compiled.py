"""The compiled helpers (agent/_fastpath.c, built by setup.py where gcc and the Python headers are).

`fastpath` is the extension module, or None where it is not built or `ESPMETER_PURE_PYTHON` is set
(tests, or to compare): every user of it has a Python path with identical results, slower.
"""

from __future__ import annotations

import os
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("ESPMETER_PURE_PYTHON"):
        return None
    try:
        from agent import _fastpath
    except ImportError:  # nothing compiled here
        return None
    return _fastpath


fastpath = _load()
