"""Export settings: the part of espmeter's configuration the exporter needs.

Built from the validated configuration by `agent.settings.runtime` (the schema in agent/config.py is
the one place that checks bounds); the defaults here are the schema's, for callers without a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ExportSettings:
    """Where and how to export."""

    collectors: list[str] = field(default_factory=list)
    observation_domain: int = 1
    pen: int = 32473
    mtu: int = 1400
    template_refresh_s: float = 300.0
    template_refresh_messages: int = 100
    records: str = "sa"  # "sa" | "biflow"
    tcp_buffer_messages: int = 10000
    stats_interval_s: float = 60.0
    # not configurable: fixed by the transports' design, changed by tests
    tcp_reconnect_max_s: float = 60.0
    tcp_reconnect_min_s: float = 1.0
    file_retry_s: float = 60.0
    exporting_process_id: int | None = None  # default: the process id
