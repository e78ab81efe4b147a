"""One transport session: a collector's message stream with its own templates and sequence numbers.

RFC 7011 scopes templates and sequence numbers to (transport session, observation domain), so each
collector gets its own Session. Over UDP the session resends all active templates at start, every
`refresh_messages` messages, every `refresh_s` seconds and on demand; over TCP and files the
transport asks for them on each new connection. Template withdrawals are never sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.logsetup import limited

from .codec import TemplateCodec
from .encoding import EncodedRecords, RecordEncoder
from .message import ExportMessage, MessageBuilder, restamp
from .records import MeteringStats
from .transport import Transport

log = logging.getLogger("espmeter.exporter")

TransportFactory = Callable[["Session"], Transport]


class Session:
    """Builds one collector's messages and hands them to its transport."""

    def __init__(self, encoder: RecordEncoder, make_transport: TransportFactory, *, odid: int, mtu: int,
                 refresh_s: float, refresh_messages: int, clock: Callable[[], float], process_id: int):
        self._encoder = encoder
        self._builder = MessageBuilder(odid, mtu)
        self._refresh_s = refresh_s
        self._refresh_messages = max(1, refresh_messages)
        self._clock = clock
        self._process_id = process_id
        # templates with enterprise IEs become active when first used, after the RFC 5610 records
        self._active: dict[int, TemplateCodec] = {c.tid: c for c in encoder.options_codecs() if not c.enterprise}
        self._announced: set[int] = set()
        self._since_refresh = 0
        self._last_refresh = clock()
        self._seen_connects = 0
        self.transport = make_transport(self)
        self.counters = self.transport.counters

    # --- transport hooks ---------------------------------------------------------------------------

    def greeting(self, sequence: int | None) -> list[bytes]:
        """Template messages for a new TCP connection or file (all active templates, no data)."""
        self._announced.clear()
        messages = self._template_messages(enterprise=False) + self._template_messages(enterprise=True)
        if sequence is not None:
            messages = [restamp(m, int(self._clock()), sequence) for m in messages]
        self._announced.update(self._active)
        return messages

    def dropped(self, message: bytes) -> None:
        """A message was not sent: the templates it defined are not known to the collector."""
        self._announced.difference_update(getattr(message, "template_ids", ()))

    # --- building ------------------------------------------------------------------------------------

    def _template_messages(self, enterprise: bool) -> list[ExportMessage]:
        """The active templates that do (not) use enterprise IEs. Collectors such as libfixbuf resolve a
        template's IEs when they read it, so those go out after the RFC 5610 records."""
        out = []
        b = self._builder
        for codec in self._active.values():
            if codec.enterprise != enterprise:
                continue
            if not b.add_template(codec):
                out.append(b.finish(int(self._clock())))
                if not b.add_template(codec):
                    raise ValueError(f"template {codec.tid} does not fit in MTU {b.mtu}")
        if not b.empty:
            out.append(b.finish(int(self._clock())))
        return out

    def _flush(self) -> None:
        if self._builder.empty:
            return
        self._emit(self._builder.finish(int(self._clock())))

    def _emit(self, message: ExportMessage) -> None:
        self.transport.send(message)
        self._since_refresh += 1
        self._after_transport()

    def _after_transport(self) -> None:
        """A reliable transport that (re)connected needs the RFC 5610 records again."""
        while self.counters.connects != self._seen_connects:
            self._seen_connects = self.counters.connects
            self._write(self._encoder.type_records())

    def _put(self, codec: TemplateCodec, data: bytes, packets: int, octets: int) -> bool:
        """Add a record to the current message, preceded by its template if the collector lacks it."""
        b = self._builder
        if codec.tid not in self._announced:
            if not b.add_template(codec):
                return False
            self._active[codec.tid] = codec
            self._announced.add(codec.tid)
        return b.add_record(codec, data, packets, octets)

    def _write(self, records: EncodedRecords) -> None:
        i, n = 0, len(records)
        while (i := self._builder.add_records(records, i, self._announced, self._flush)) < n:
            rec = records[i]  # its template is not announced yet, or it does not fit even alone
            if not self._put(*rec):
                self._flush()
                if not self._put(*rec):
                    self._flush()  # its template fitted, the record only without it: the template went alone
                    if not self._put(*rec):
                        self._drop_oversize(*rec)
            i += 1
        self._flush()

    def _drop_oversize(self, codec: TemplateCodec, _data: bytes, packets: int, octets: int) -> None:
        self.counters.not_sent_records += 1
        self.counters.not_sent_packets += packets
        self.counters.not_sent_octets += octets
        log.error("IPFIX record for template %d does not fit in MTU %d; dropped", codec.tid, self._builder.mtu,
                  extra=limited(f"IPFIX template {codec.tid} over MTU"))

    # --- public --------------------------------------------------------------------------------------

    def start(self) -> None:
        """UDP: templates and type records at once. TCP/file: connect; the greeting follows."""
        if self.transport.reliable:
            self.transport.tick()
            self._after_transport()
        else:
            self.refresh()

    def refresh(self) -> None:
        """Resend all active templates and the RFC 5610 records (UDP refresh, or on reload)."""
        self._since_refresh = 0
        self._last_refresh = self._clock()
        for message in self._template_messages(enterprise=False):
            self._emit(message)
        self._announced.update(c.tid for c in self._active.values() if not c.enterprise)
        self._write(self._encoder.type_records())
        for message in self._template_messages(enterprise=True):
            self._emit(message)
        self._announced.update(self._active)
        self._since_refresh = 0

    def _maybe_refresh(self) -> None:
        if self.transport.reliable:
            return
        if (self._since_refresh >= self._refresh_messages
                or self._clock() - self._last_refresh >= self._refresh_s):
            self.refresh()

    def send(self, records: EncodedRecords) -> None:
        self._maybe_refresh()
        self._write(records)

    def send_stats(self, stats: MeteringStats) -> None:
        c = self.counters
        self.send(EncodedRecords.of([
            self._encoder.metering_stats(stats, c.messages, c.records, c.octets),
            self._encoder.exporting_stats(self._process_id, c.not_sent_records, c.not_sent_packets,
                                          c.not_sent_octets),
        ]))

    def tick(self) -> None:
        self.transport.tick()
        self._after_transport()
        self._maybe_refresh()

    def close(self, timeout: float) -> None:
        self._flush()
        self.transport.close(timeout)
