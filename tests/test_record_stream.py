"""Record streams, not only sums: with 1 s / 2 s timeouts every engine path emits the reference path's
records one by one, and each record is right in time against the generator's capture times.

The generator knows when every frame of every SA was captured: each SA's records, in order, must take
its frames in capture order, exactly `packets` of them each, all inside [flowStart, flowEnd]; records
never overlap, none spans more than the active timeout, and only an SA's last record before a
silence (or the end) has a reason other than active timeout.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from agent.meter import MeterSettings
from agent.offline import meter_file
from agent.sa import address_text
from agent.satable import TableSettings
from exporter.records import END_ACTIVE, END_FORCED, END_IDLE, BiflowRecord, LossEvent, SARecord
from tests.gt.build import BASE_US
from tests.gt.scenarios import registry

SCENARIOS = registry()
ACTIVE, IDLE = 1.0, 2.0
PATHS = {
    "default": {},  # the inline loop in C where agent/_fastpath.c is built
    "inline-python": {"compiled": False},
}


class Sink:
    def __init__(self) -> None:
        self.records: list[SARecord | BiflowRecord] = []

    def export(self, records: list[SARecord | BiflowRecord]) -> None:
        self.records.extend(records)

    def export_loss_events(self, events: list[LossEvent]) -> None:
        self.records.extend(events)  # the loss-event records, where they go out in the stream


def stream(path: str, biflow: bool, **kw: object) -> list[SARecord | BiflowRecord]:
    settings = MeterSettings(table=TableSettings(active_timeout=ACTIVE, idle_timeout=IDLE), biflow=biflow, **kw)
    sink = Sink()
    meter_file(path, settings, sink, progress=False)
    return sink.records


def _key(src: object, dst: object, spi: int, sport: object, dport: object, vlan: object, inner: object,
         interface: object) -> tuple:
    return str(src), str(dst), spi, sport, dport, vlan, inner, interface


@pytest.mark.parametrize("biflow", [False, True], ids=["sa", "biflow"])
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_record_stream_equals_reference(name: str, path: str, biflow: bool, tmp_path: Path) -> None:
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS[name]().write(cap)
    reference = stream(cap, biflow, fast_path=False)
    assert stream(cap, biflow, **PATHS[path]) == reference


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_records_are_right_in_time(name: str, tmp_path: Path) -> None:
    cap = str(tmp_path / "cap.pcap")
    sc = SCENARIOS[name]()
    sc.write(cap)
    arrivals: dict[tuple, list[tuple[int, int]]] = defaultdict(list)  # SA → (capture µs, octets), in order
    for e in sc.build():
        if e.sa is not None:
            spec = sc.specs[e.sa]
            src, dst, spi, sport, dport, vlan, inner, interface, _ = spec.key()
            if sc.fmt == "pcapng" and not isinstance(interface, int):  # records carry the IDB's number
                interface = 0 if interface is None else interface[1]
            arrivals[_key(src, dst, spi, sport, dport, vlan, inner, interface)].append((BASE_US + e.ts_us, e.octets))
    per_sa: dict[tuple, list[SARecord]] = defaultdict(list)
    for r in stream(cap, False):  # the default path
        if isinstance(r, LossEvent):
            continue  # loss-event records carry no traffic
        assert isinstance(r, SARecord)
        interface = r.ingress_if if r.ingress_if is not None else r.egress_if
        src, dst = address_text(r.src), address_text(r.dst)
        per_sa[_key(src, dst, r.spi, r.sport, r.dport, r.vlan, r.inner_vlan, interface)].append(r)
    assert per_sa.keys() == arrivals.keys()
    for key, recs in per_sa.items():
        frames = sorted(arrivals[key])
        at = 0
        for i, r in enumerate(recs):
            assert r.start_ms <= r.end_ms <= r.start_ms + ACTIVE * 1000, (key, i, r)
            if i:
                assert recs[i - 1].end_ms <= r.start_ms, (key, i, "records overlap or leave out of order")
            took = frames[at:at + r.packets]
            at += r.packets
            assert len(took) == r.packets and sum(o for _, o in took) == r.octets, (key, i)
            if took:
                assert r.start_ms == took[0][0] // 1000 and r.end_ms == max(t for t, _ in took) // 1000, (key, i)
            following = recs[i + 1] if i + 1 < len(recs) else None
            if following is not None and r.end_reason == END_FORCED:  # numbers restarted: a new generation
                highest = max(x.last_seq for x in recs[:i + 1] if x.last_seq is not None)
                assert following.first_seq is not None and following.first_seq < highest, (key, i)
            elif following is not None and r.end_reason != END_ACTIVE:  # silent for the idle timeout since
                last_arrival = max(x.end_ms for x in recs[:i + 1] if x.packets)  # its last arrival
                assert r.end_reason == END_IDLE and following.start_ms - last_arrival >= IDLE * 1000 - 1, (key, i)
        assert at == len(frames), key
        assert recs[-1].end_reason != END_ACTIVE, key


def test_biflow_end_sends_one_record_per_tunnel(tmp_path: Path) -> None:
    """At the end of the capture both SAs of a tunnel end at once: one biflow record, not a second empty one."""
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS["no_loss"]().write(cap)
    settings = MeterSettings(biflow=True)  # default timeouts: every tunnel's only record is its end
    sink = Sink()
    meter_file(cap, settings, sink, progress=False)
    biflows = [r for r in sink.records if isinstance(r, BiflowRecord)]
    assert len(biflows) == 3 and all(r.forward.packets and r.reverse.packets for r in biflows)
