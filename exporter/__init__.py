"""espmeter exporter: IPFIX messages (python-ipfix), templates, transports, collector dictionaries.

Public API used by the agent: `ExportSettings`, `Exporter` (export, export_stats, tick,
resend_templates, close, counters), `exporter.collect` (a small collector) and
`exporter.dictionaries.render` (collector dictionaries from templates/).
"""

from .exporter import Exporter
from .records import BiflowRecord, MeteringStats, SARecord
from .settings import ExportSettings
from .transport import CollectorCounters

__all__ = ["BiflowRecord", "CollectorCounters", "ExportSettings", "Exporter", "MeteringStats", "SARecord"]
