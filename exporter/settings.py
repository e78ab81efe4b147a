"""Export settings: the part of espmeter's configuration the exporter needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from .infomodel import check_pen
from .message import MIN_MTU
from .transport import parse_collector

RECORD_MODES = ("sa", "biflow")


@dataclass(slots=True)
class ExportSettings:
    """Where and how to export. `validate()` raises ValueError with a message fit for a config error."""

    collectors: list[str] = field(default_factory=list)
    observation_domain: int = 1
    pen: int = 32473
    mtu: int = 1400
    template_refresh_s: float = 300.0
    template_refresh_messages: int = 100
    records: str = "sa"  # "sa" | "biflow"
    tcp_buffer_messages: int = 10000
    tcp_reconnect_max_s: float = 60.0
    stats_interval_s: float = 60.0
    tcp_reconnect_min_s: float = 1.0
    file_retry_s: float = 60.0
    exporting_process_id: int | None = None  # default: the process id

    def validate(self) -> ExportSettings:
        check_pen(self.pen)
        if not 0 < self.observation_domain <= 0xFFFFFFFF:
            raise ValueError(f"observation_domain {self.observation_domain} must be 1..4294967295 (0 means none)")
        if not MIN_MTU <= self.mtu <= 65535:
            raise ValueError(f"mtu {self.mtu} must be {MIN_MTU}..65535")
        if self.records not in RECORD_MODES:
            raise ValueError(f"records {self.records!r} must be one of {', '.join(RECORD_MODES)}")
        if self.template_refresh_s <= 0 or self.template_refresh_messages < 1:
            raise ValueError("template_refresh_s must be > 0 and template_refresh_messages >= 1")
        if self.tcp_buffer_messages < 1 or self.tcp_reconnect_max_s <= 0 or self.stats_interval_s <= 0:
            raise ValueError("tcp_buffer_messages, tcp_reconnect_max_s and stats_interval_s must be positive")
        for url in self.collectors:
            if parse_collector(url).port == 0 and not url.startswith("file:"):
                raise ValueError(f"collector {url!r}: port 0")
        return self
