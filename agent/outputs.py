"""Outputs: where the meter's results go (IPFIX, Prometheus, ...), behind one small interface.

The daemon builds one `OutputSpec` per configured output and hands the list to `Outputs`, which fans
records, statistics, loss events and ticks out to every output without knowing their types. On a
reload an output whose settings did not change is told to `reload()` (IPFIX re-sends its templates);
one whose settings changed is closed and made anew.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from exporter.records import BiflowRecord, LossEvent, MeteringStats, SARecord
    from exporter.transport import CollectorCounters

log = logging.getLogger("espmeter")


class OutputError(Exception):
    """An output cannot start; the message says why in one line. The other outputs run."""


class Output(Protocol):
    """One destination of the meter's results. Called from the daemon's thread only."""

    @property
    def counters(self) -> Mapping[str, CollectorCounters]:
        """Delivery counters per destination (collector URL); empty for outputs that deliver nothing."""
        ...

    def export(self, records: Sequence[SARecord | BiflowRecord]) -> None: ...

    def export_stats(self, stats: MeteringStats) -> None: ...

    def export_loss_events(self, events: Sequence[LossEvent]) -> None: ...

    def tick(self) -> None:
        """Timer turn of the daemon's loop (about twice a second), also when no packet comes."""
        ...

    def reload(self) -> None:
        """The configuration was re-read and this output's settings did not change."""
        ...

    def close(self) -> None:
        """Deliver what is pending and release the output's resources."""
        ...


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """A configured output: `settings` is compared on reload; `make` builds the output."""

    name: str
    settings: object
    make: Callable[[], Output]


class Outputs:
    """All running outputs; itself an `Output` (the meter's record sink)."""

    def __init__(self, specs: Sequence[OutputSpec] = ()) -> None:
        self.running: dict[str, tuple[object, Output]] = {}
        self.configure(specs)

    def configure(self, specs: Sequence[OutputSpec]) -> None:
        """Start, keep (and reload) or restart outputs so that exactly `specs` run."""
        wanted = {spec.name: spec for spec in specs}
        for name in [n for n in self.running if n not in wanted]:
            self.running.pop(name)[1].close()
        for name, spec in wanted.items():
            current = self.running.get(name)
            if current is not None and current[0] == spec.settings:
                current[1].reload()
                continue
            if current is not None:
                self.running.pop(name)[1].close()
            try:
                self.running[name] = (spec.settings, spec.make())
            except OutputError as e:  # tried again at the next reload
                log.error("%s", e)

    @property
    def outputs(self) -> list[Output]:
        return [output for _, output in self.running.values()]

    @property
    def counters(self) -> dict[str, CollectorCounters]:
        return {url: c for output in self.outputs for url, c in output.counters.items()}

    def export(self, records: Sequence[SARecord | BiflowRecord]) -> None:
        for output in self.outputs:
            output.export(records)

    def export_stats(self, stats: MeteringStats) -> None:
        for output in self.outputs:
            output.export_stats(stats)

    def export_loss_events(self, events: Sequence[LossEvent]) -> None:
        for output in self.outputs:
            output.export_loss_events(events)

    def tick(self) -> None:
        for output in self.outputs:
            output.tick()

    def reload(self) -> None:
        for output in self.outputs:
            output.reload()

    def close(self) -> None:
        for output in self.outputs:
            output.close()
        self.running.clear()
