"""The loss-event log: an output (agent.outputs) that writes one line per long loss event.

A tunnel that keeps losing long runs must not flood the journal: lines go through the agent's one
rate limiter (agent.logsetup, keyed per SA), which summarises what it held back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agent.logsetup import limited
from agent.sa import address_text
from exporter.records import LossEvent

log = logging.getLogger("espmeter.loss")


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_line(e: LossEvent) -> str:
    """tunnel, SPI, numbers, count and time window of one loss event."""
    tunnel = f"tunnel {e.tunnel_name!r}" if e.tunnel_name else f"tunnel {e.tunnel_id}" if e.tunnel_id is not None \
        else "unpaired SA"
    numbers = f"{e.first}" if e.first == e.last else f"{e.first}..{e.last}"
    src, dst = address_text(e.src), address_text(e.dst)
    return (f"loss event: {tunnel} {src} -> {dst} spi 0x{e.spi:08x}: {e.count} lost, numbers {numbers},"
            f" between {_utc(e.after)} and {_utc(e.before)} ({e.before - e.after:.3f} s)")


class LossEventLog:
    """Logs loss events of at least `min_count` numbers; delivers nothing else."""

    def __init__(self, min_count: int) -> None:
        self.min_count = min_count

    @property
    def counters(self) -> dict[str, Any]:
        return {}

    def export(self, records: Sequence[Any]) -> None:
        pass

    def export_stats(self, stats: Any) -> None:
        pass

    def export_loss_events(self, events: Sequence[LossEvent]) -> None:
        for e in events:
            if e.count >= self.min_count:
                sa = f"{address_text(e.src)} -> {address_text(e.dst)} spi 0x{e.spi:08x}"
                log.warning("%s", event_line(e), extra=limited(f"loss events {sa}"))

    def tick(self) -> None:
        pass

    def reload(self) -> None:
        pass

    def close(self) -> None:
        pass
