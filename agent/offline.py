"""Meter one capture file from start to end: what `espmeter read` and the demo run."""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from agent.capture import STDIN, OfflineSource
from agent.drill import Observer
from agent.meter import Meter, MeterSettings
from agent.pcapfile import PcapFileSource
from agent.pcapng import PcapngSource, is_pcapng
from agent.records import RecordSink
from agent.report import document, document_view, write_json

Source = OfflineSource | PcapngSource | PcapFileSource


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(slots=True)
class OfflineResult:
    """A metered file; its `read --json` document is made on demand, as a dict or written as it goes."""

    meter: Meter
    error: str | None  # the file was damaged after the frames that were counted
    path: str
    linktype: int
    interfaces: dict[int, str] | None  # a pcapng file's interface numbers -> names
    events: bool
    observer: Observer | None
    _doc: dict[str, Any] | None = None

    @property
    def doc(self) -> dict[str, Any]:
        if self._doc is None:
            self._doc = document(self.meter, self.path, self.linktype, self.error, self.interfaces, self.events,
                                 self.observer)
        return self._doc

    def view(self) -> dict[str, Any]:
        """The document for one pass over its entries (`report.document_view`), or the document if it was built."""
        if self._doc is not None:
            return self._doc
        return document_view(self.meter, self.path, self.linktype, self.error, self.interfaces, self.events,
                             self.observer)

    def write_json(self, out: TextIO) -> None:
        """The document as `json.dumps(self.doc, separators=(",", ":"))` and a newline, without building it
        (unless it was: bins are counted as they are made, so it is made once)."""
        if self._doc is not None:
            out.write(json.dumps(self._doc, separators=(",", ":")) + "\n")
        else:
            write_json(out, self.meter, self.path, self.linktype, self.error, self.interfaces, self.events,
                       self.observer)


def meter_file(path: str, settings: MeterSettings, sink: RecordSink | None = None, bpf: str | None = None,
               progress: bool | None = None, events: bool = False, observer: Observer | None = None,
               source: Source | None = None) -> OfflineResult:
    """Read `path` to its end (or its damage), ticking timers on capture time, then end every SA.

    With an `observer` (drill-down: bins, trace) the settings must select the per-frame path. `source`:
    an open reader of `path` to use instead of the one `path` selects (tests compare the readers)."""
    source = _source(path, bpf) if source is None else source
    meter = Meter(settings, sink, keep_history=True)
    meter.observer = observer
    show = sys.stderr.isatty() if progress is None else progress
    if show:
        from tqdm import tqdm  # only on a terminal: it costs a tenth of start-up

        bar = tqdm(total=source.size, unit="B", unit_scale=True, file=sys.stderr, leave=False)
    else:
        bar = _NoBar()
    try:
        while (batch := source.read()) is not None:
            meter.feed(batch.buf, batch.meta, batch.linktype, batch.ifindex)
            meter.tick(meter.now)
            bar.update(source.progress(batch))
    finally:
        bar.close()
        source.close()
    meter.finish()
    if observer is not None:
        observer.finish()
    return OfflineResult(meter, source.error, path, source.linktype, source.interface_names, events, observer)


def time_span(path: str, bpf: str | None = None) -> float:
    """Seconds from the first to the last frame (a pass over the frame headers only)."""
    source = _source(path, bpf)
    first = last = None
    try:
        while (batch := source.read()) is not None:
            sec_usec = struct.unpack_from("=II", batch.meta, 0)
            first = first if first is not None else sec_usec[0] + sec_usec[1] * 1e-6
            sec, usec = struct.unpack_from("=II", batch.meta, len(batch.meta) - 16)
            last = sec + usec * 1e-6
    finally:
        source.close()
    return (last - first) if first is not None and last is not None else 0.0


def _source(path: str, bpf: str | None) -> Source:
    """pcapng by agent.pcapng, classic pcap mapped by agent.pcapfile; libpcap for standard input,
    `--bpf` on a pcap file and whatever agent.pcapfile does not read as libpcap would."""
    if path == STDIN:
        return OfflineSource(path, bpf)
    if is_pcapng(path):
        return PcapngSource(path, bpf)
    mapped = None if bpf else PcapFileSource.open(path)
    return mapped if mapped is not None else OfflineSource(path, bpf)
