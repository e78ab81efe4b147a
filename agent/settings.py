"""Glue from the validated configuration (agent.config.Settings) to the meter's typed settings."""

from __future__ import annotations

from typing import Any

from agent.config import Settings, exporter_settings, load_config
from agent.meter import MeterSettings
from agent.satable import TableSettings
from agent.tracker import TrackerSettings


def from_config(cfg: Settings) -> MeterSettings:
    tracker = TrackerSettings(
        window=cfg.reorder_window,
        reorder_time=cfg.reorder_time_s,
        jump_limit=cfg.jump_limit,
        restart_limit=cfg.reorder_window,
    )
    table = TableSettings(
        tracker=tracker,
        active_timeout=float(cfg.active_timeout_s),
        idle_timeout=float(cfg.idle_timeout_s),
        max_sas=cfg.max_sas,
    )
    return MeterSettings(
        table=table,
        fragment_timeout=float(cfg.fragment_timeout_s),
        max_fragments=cfg.max_fragments,
        biflow=cfg.records == "biflow",
        tunnel_names={str(k): v for k, v in cfg.tunnel_names.items()},
        vector=cfg.vectorized,
    )


def meter_settings(path: str | None) -> tuple[MeterSettings, dict[str, Any]]:
    """Meter settings and exporter keys from a config file (defaults when `path` is None)."""
    cfg = load_config(path)
    return from_config(cfg), exporter_settings(cfg)
