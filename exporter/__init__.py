"""espmeter exporter: IPFIX messages (compiled per-template encoders), templates, transports, dictionaries.

Public API used by the agent: `ExportSettings`, `Exporter` (an `agent.outputs.Output`: export,
export_stats, export_loss_events, tick, reload, close, counters), `exporter.collect` (a small collector) and
`exporter.dictionaries.render` (collector dictionaries from templates/).

The names are resolved on first use (PEP 562): the meter imports only `exporter.records`, and
`espmeter read` without a collector should not pay for loading the IPFIX stack.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "Exporter": ".exporter",
    "BiflowRecord": ".records",
    "LossEvent": ".records",
    "MeteringStats": ".records",
    "SARecord": ".records",
    "ExportSettings": ".settings",
    "CollectorCounters": ".transport",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'exporter' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name], __name__), name)
