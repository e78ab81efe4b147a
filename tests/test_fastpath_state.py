"""The fast paths leave every SA in the reference tracker's state, not only with its outputs: after every
batch, the compiled walk, the Python inline loop and the per-frame reference path hold the same slots (open
gaps, final ranges, the fast limits), on streams whose drops the test knows, across reloads of the tracker
settings too; and their record streams are the reference's, each loss in the interval the contract says."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from agent.config import parse_config
from agent.meter import Meter, MeterSettings
from agent.report import document
from agent.settings import runtime
from exporter.records import END_ACTIVE, END_FORCED, SARecord
from tests.gt.build import BASE_US, Scenario
from tests.gt.scenario import Emitted, SASpec
from tests.test_fastpath import _SA_SLOTS, _Sink, sa_states

PATHS = ({}, {"compiled": False}, {"fast_path": False})  # compiled walk, Python inline loop, reference
BATCH = 25


def _settings(window: int, reorder_time: float) -> MeterSettings:
    """The meter's settings as `espmeter run` and its SIGHUP reload make them from a configuration."""
    text = f"active_timeout_s: 1\nidle_timeout_s: 10\nreorder_window: {window}\nreorder_time_s: {reorder_time}\n"
    return runtime(parse_config(text, "espmeter.yaml")).meter


def _run(emitted: list[Emitted], plan: dict[int, MeterSettings], mode: dict) -> tuple[list, list, dict]:
    """Meter `emitted` in batches of BATCH frames, reloading plan[b] before batch b (as Agent._apply does)."""
    sink = _Sink()
    m = Meter(replace(plan[0], **mode), sink, keep_history=True)
    states = []
    for b, k in enumerate(range(0, len(emitted), BATCH)):
        if b and b in plan:
            m.configure(replace(plan[b], **mode))
        buf, meta = bytearray(), bytearray()
        for e in emitted[k:k + BATCH]:
            t = BASE_US + e.ts_us
            meta += struct.pack("=IIII", t // 1_000_000, t % 1_000_000, len(buf), len(e.data))
            buf += e.data
        m.feed(bytes(buf), bytes(meta), 1)
        states.append(sa_states(m))
    m.finish()
    return sink.records, states, document(m, "h", 1)


def _final_at(emitted: list[Emitted], drops: set[int], plan: dict[int, MeterSettings]) -> dict[int, int]:
    """Ground truth, from the contract and the numbers the scenario dropped (one SA, in order otherwise): the
    capture time (µs) at which each dropped number becomes lost, under the settings in force then: the first
    arrival that puts it behind the window, or that comes more than the reorder time after its gap opened
    (at the arrival of the first number above it)."""
    opened: dict[int, int] = {}
    final: dict[int, int] = {}
    tracker = plan[0].table.tracker
    for i, e in enumerate(emitted):
        if i % BATCH == 0 and i // BATCH in plan:
            tracker = plan[i // BATCH].table.tracker
        seq, now = e.item.seq, e.ts_us
        for d in sorted(drops - final.keys()):
            if d in opened and (now - opened[d] > tracker.reorder_time * 1e6 or d <= seq - tracker.window):
                final[d] = now
            elif d < seq and d not in opened:
                opened[d] = now
    return final


RELOADS = {  # (window, reorder time) before and after the reload at 75 ms, between the gap and its loss
    "window shrinks": ((1024, 5.0), (64, 5.0)),  # lost at the arrival of 51 + 64 (before: at the 1 s export)
    "window grows": ((64, 5.0), (1024, 5.0)),
    "reorder time shortens": ((1024, 5.0), (1024, 0.1)),
    "reorder time grows": ((1024, 0.1), (1024, 5.0)),
}


@pytest.mark.parametrize("reload", sorted(RELOADS))
def test_a_reload_mid_stream_moves_every_path_to_the_new_limits_at_once(reload: str) -> None:
    """An open gap when the tracker's window or reorder time is reloaded: every path applies the new ones
    from the next datagram. Before, the fast limits (SA.fast_limits: fseq, ftime) kept the old ones until
    the SA's next slow datagram or export: after a shrunk window the gap went on being skipped by the fast
    paths and became lost in the next record instead of this one (3 lost in the 1-2 s record, the
    reference and the truth: 0-1 s); after the other reloads the paths' states differed."""
    before, after = RELOADS[reload]
    sc = Scenario("reload")
    drops = {51, 52, 53}
    sc.add_sa(SASpec("10.0.0.1", "10.0.0.2", 0x51, link=sc.link(), count=2500, spacing_us=1000, drops=drops))
    emitted = [e for e in sc.build() if e.sa is not None]
    plan = {0: _settings(*before), 3: _settings(*after)}  # batch 3 starts at 78 ms
    final = _final_at(emitted, drops, plan)
    assert final.keys() == drops
    reference, states, doc = _run(emitted, plan, {"fast_path": False})
    records = [r for r in reference if isinstance(r, SARecord)]
    assert sum(r.lost for r in records) == len(drops) == doc["sas"][0]["lost"]
    for r in records:  # each loss in the record whose interval holds the arrival that made it final
        assert r.lost == sum(r.start_ms <= (BASE_US + t) // 1000 <= r.end_ms for t in final.values()), r
    for mode in PATHS[:2]:
        got, got_states, got_doc = _run(emitted, plan, mode)
        assert got == reference, mode
        assert got_states == states, mode
        assert got_doc == doc, mode


def test_final_ranges_are_forgotten_where_the_tracker_forgets_them() -> None:
    """A gap final by time stays a final range (it tells a late arrival from a duplicate) until the window
    passes it, and is then forgotten (SeqTracker._behind_window). The fast paths forgot only on a slow
    datagram: the walk, which opens gaps and makes them final by time itself, kept every final range of an
    SA that loses a datagram now and then (here 59 at the end, growing with the loss, instead of the 2 the
    window can hold), the inline loop those since its last gap. Now the fast limits stop at the number that
    puts the lowest range behind the window, and every path forgets it there (the walk in C)."""
    sc = Scenario("finals")
    drops = set(range(20, 2400, 40))
    sc.add_sa(SASpec("10.0.0.1", "10.0.0.2", 0x52, link=sc.link(), count=2400, spacing_us=20_000, drops=drops))
    emitted = [e for e in sc.build() if e.sa is not None]
    plan = {0: _settings(64, 0.1)}
    final = _final_at(emitted, drops, plan)
    reference, states, doc = _run(emitted, plan, {"fast_path": False})
    assert doc["sas"][0]["lost"] == len(drops) == sum(r.lost for r in reference if isinstance(r, SARecord))
    last, finals = _SA_SLOTS.index("last"), _SA_SLOTS.index("finals")
    for b, state in enumerate(states):  # the truth: the numbers lost so far that are inside the window
        end = emitted[min(len(emitted), (b + 1) * BATCH) - 1]
        (sa,) = state
        assert sa[last] == end.item.seq
        assert list(sa[finals]) == [[d, d] for d in sorted(drops) if final[d] <= end.ts_us and d > sa[last] - 64], b
    for mode in PATHS[:2]:
        got, got_states, got_doc = _run(emitted, plan, mode)
        assert got == reference, mode
        assert got_states == states, mode
        assert got_doc == doc, mode


def test_a_reload_of_the_timeouts_ends_intervals_under_the_new_ones() -> None:
    """Active timeout reloaded from 60 to 1 s (idle 30 -> 2 s) half a second into a 5 s stream: every path's
    records cover at most 1 s from then on, the first ending at the new timeout (1 s after the interval
    started), and add up to the truth. Before, the SA kept its schedule entry of the old timeouts: one
    record of the whole stream."""
    def timeouts(active: int, idle: int) -> MeterSettings:
        text = f"active_timeout_s: {active}\nidle_timeout_s: {idle}\n"
        return runtime(parse_config(text, "espmeter.yaml")).meter

    sc = Scenario("timeouts")
    drops = {700, 2100}
    sc.add_sa(SASpec("10.0.0.1", "10.0.0.2", 0x53, link=sc.link(), count=5000, spacing_us=1000, drops=drops))
    emitted = [e for e in sc.build() if e.sa is not None]
    plan = {0: timeouts(60, 30), 20: timeouts(1, 2)}  # batch 20 starts at 500 ms
    reference, _, doc = _run(emitted, plan, {"fast_path": False})
    records = [r for r in reference if isinstance(r, SARecord)]
    arrivals = [(BASE_US + e.ts_us) // 1000 for e in emitted]  # ms; the truth: 1 s intervals from the first
    intervals = [[t for t in arrivals if arrivals[0] + k * 1000 <= t < arrivals[0] + (k + 1) * 1000]
                 for k in range(5)]
    assert [(r.start_ms, r.end_ms, r.packets) for r in records] == [(iv[0], iv[-1], len(iv)) for iv in intervals]
    assert [r.end_reason for r in records] == [END_ACTIVE] * 4 + [END_FORCED]
    assert sum(r.lost for r in records) == len(drops) == doc["sas"][0]["lost"]
    for mode in PATHS[:2]:
        got, _, got_doc = _run(emitted, plan, mode)
        assert got == reference, mode
        assert got_doc == doc, mode
