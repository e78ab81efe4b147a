"""The Exporter: what the agent calls. It fans records out to one Session per collector."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

from .encoding import RecordEncoder
from .infomodel import InfoModel
from .records import BiflowRecord, LossEvent, MeteringStats, SARecord
from .session import Session
from .settings import ExportSettings
from .transport import CollectorCounters, FileTransport, TcpTransport, Transport, UdpTransport, parse_collector

log = logging.getLogger("espmeter.exporter")


class Exporter:
    """IPFIX exporter for espmeter records, an `agent.outputs.Output`. Not thread-safe: call it from one
    thread."""

    def __init__(self, settings: ExportSettings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self._clock = clock
        self.encoder = RecordEncoder(InfoModel.load(settings.pen), settings.observation_domain,
                                     biflow=settings.records == "biflow")
        process_id = settings.exporting_process_id
        if process_id is None:
            process_id = os.getpid()
        self._sessions: list[Session] = []
        for url in settings.collectors:
            session = Session(
                self.encoder, lambda s, url=url: self._make_transport(url, s),
                odid=settings.observation_domain, mtu=settings.mtu, refresh_s=settings.template_refresh_s,
                refresh_messages=settings.template_refresh_messages, clock=clock, process_id=process_id,
            )
            self._sessions.append(session)
        for session in self._sessions:
            session.start()
        self._stats: MeteringStats | None = None
        self._stats_due = True
        self._last_stats = 0.0

    def _make_transport(self, url: str, session: Session) -> Transport:
        s = self.settings
        target = parse_collector(url)
        if target.scheme == "udp":
            return UdpTransport(target, on_drop=session.dropped)
        if target.scheme == "tcp":
            return TcpTransport(target, session.greeting, session.dropped, buffer_messages=s.tcp_buffer_messages,
                                reconnect_min_s=s.tcp_reconnect_min_s, reconnect_max_s=s.tcp_reconnect_max_s,
                                clock=self._clock)
        return FileTransport(target, session.greeting, session.dropped, retry_s=s.file_retry_s, clock=self._clock)

    @property
    def counters(self) -> dict[str, CollectorCounters]:
        """Per collector URL: messages, records, octets, send_errors, not_sent_* (live objects)."""
        return {s.transport.url: s.counters for s in self._sessions}

    def undelivered(self) -> str | None:
        """After close(): what could not be delivered, one clause per collector, or None when all was."""
        parts = [f"{url}: {c.not_sent_records} records in {c.not_sent_messages} messages not sent"
                 for url, c in self.counters.items() if c.not_sent_records or c.not_sent_messages]
        return "; ".join(parts) or None

    def export(self, records: Sequence[SARecord | BiflowRecord]) -> None:
        encoded = self.encoder.encode(records)
        for session in self._sessions:
            session.send(encoded)

    def export_loss_events(self, events: Sequence[LossEvent]) -> None:
        """One loss-event record each (template `loss_event` of templates/records.yaml)."""
        encoded = self.encoder.loss_events(events)
        for session in self._sessions:
            session.send(encoded)

    def export_stats(self, stats: MeteringStats) -> None:
        """Remember the latest totals; they go out now if `stats_interval_s` has passed, else on tick()."""
        self._stats = stats
        self._stats_due = True
        self._maybe_send_stats()

    def _maybe_send_stats(self, force: bool = False) -> None:
        if self._stats is None or not self._stats_due:
            return
        if not force and self._last_stats and self._clock() - self._last_stats < self.settings.stats_interval_s:
            return
        for session in self._sessions:
            session.send_stats(self._stats)
        self._last_stats = self._clock()
        self._stats_due = False

    def tick(self) -> None:
        for session in self._sessions:
            session.tick()
        self._maybe_send_stats()

    def reload(self) -> None:
        """Same settings after a configuration reload: re-send the templates."""
        for session in self._sessions:
            session.refresh()

    def close(self, timeout: float = 5.0) -> None:
        """Send the last statistics, flush, and wait up to `timeout` s for TCP delivery (shared)."""
        self._maybe_send_stats(force=True)
        deadline = time.monotonic() + timeout
        for session in self._sessions:
            session.close(max(0.0, deadline - time.monotonic()))
