"""Sequence tracker against a brute-force reference that models the same window and reorder time."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.tracker import SeqTracker, TrackerSettings, Verdict, infer_esn


@dataclass
class Reference:
    """Sets instead of ranges: every number's fate is computed from the definitions directly."""

    window: int
    reorder_time: float
    first: int = -1
    last: int = -1
    start: float = 0.0
    received: set[int] = field(default_factory=set)
    final: set[int] = field(default_factory=set)  # missing numbers declared lost
    opened: dict[int, float] = field(default_factory=dict)  # missing number -> time a higher one came
    arrived: dict[int, float] = field(default_factory=dict)  # accepted number -> arrival of its first copy
    datagrams: int = 0
    reordered: int = 0
    duplicates: int = 0
    late: int = 0
    max_extent: int = 0

    def _settle(self, now: float) -> None:
        for m in range(self.first, self.last + 1):
            if m in self.received or m in self.final:
                continue
            if m <= self.last - self.window or now - self.opened[m] > self.reorder_time:
                self.final.add(m)

    def observe(self, n: int, now: float) -> None:
        self.datagrams += 1
        if self.last < 0:
            self.first = self.last = n
            self.start = now
            self.received.add(n)
            self.arrived[n] = now
            return
        self._settle(now)
        if n > self.last:
            for m in range(self.last + 1, n):
                self.opened[m] = now
            self.last = n
            self.received.add(n)
            self.arrived[n] = now
            self._settle(now)
            return
        if n == self.last or n in self.received and n > self.last - self.window:
            self.duplicates += 1
            return
        if n <= self.last - self.window or n in self.final:
            self.late += 1
            return
        if n < self.first:
            if now - self.start > self.reorder_time:
                self.late += 1
                return
            for m in range(n + 1, self.first):
                self.opened[m] = self.start
            self.first = n
        self.max_extent = max(self.max_extent, sum(1 for x in self.received if x > n))
        self.reordered += 1
        self.received.add(n)
        self.arrived[n] = now

    def lost(self) -> int:
        if self.last < 0:
            return 0
        return sum(1 for m in range(self.first, self.last + 1) if m not in self.received)

    def events(self) -> list[tuple[int, int, float, float]]:
        """After the end: maximal runs of numbers never received, with the arrivals around them."""
        out: list[tuple[int, int, float, float]] = []
        for m in range(self.first, self.last + 1):
            if m in self.received:
                continue
            if out and out[-1][1] == m - 1:
                out[-1] = (out[-1][0], m, out[-1][2], 0.0)
            else:
                out.append((m, m, self.arrived[m - 1], 0.0))
        return [(lo, hi, after, self.arrived[hi + 1]) for lo, hi, after, _ in out]


arrivals = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=120),
        # exact binary fractions too, so that "missing longer than the reorder time" hits its boundary
        st.one_of(st.floats(min_value=0.0, max_value=0.6), st.sampled_from([0.0, 0.25, 0.5, 1.0])),
    ),
    min_size=1,
    max_size=150,
)


@settings(max_examples=400, deadline=None)
@given(arrivals, st.sampled_from([8, 16, 64]), st.sampled_from([0.5, 1.0, 100.0]))
def test_tracker_matches_reference(arrivals: list[tuple[int, float]], window: int, reorder_time: float) -> None:
    s = TrackerSettings(window=window, reorder_time=reorder_time, jump_limit=10**9, restart_limit=0)
    t = SeqTracker()
    ref = Reference(window, reorder_time)
    now = 1000.0
    for n, dt in arrivals:
        now += dt
        t.observe(n, now, s)
        t.last_seen = now
        ref.observe(n, now)
    t.finish()
    assert (t.first, t.last) == (ref.first, ref.last)
    assert t.lost == ref.lost()
    assert [tuple(e) for e in t.take_events()] == ref.events()
    assert (t.reordered, t.duplicates, t.late, t.max_extent) == (
        ref.reordered, ref.duplicates, ref.late, ref.max_extent)
    assert t.lost + (t.datagrams - t.duplicates - t.late) == t.expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=200))
def test_invariant_holds_for_any_numbers(numbers: list[int]) -> None:
    """Arbitrary wire values (implausible jumps, restarts, wraps): the invariant never breaks."""
    s = TrackerSettings()
    t = SeqTracker()
    for i, n in enumerate(numbers):
        if t.observe(n, 1000.0 + i * 0.001, s) is Verdict.RESTART:
            t = SeqTracker()  # the SA table starts a new generation; the old one ends here
    t.finish()
    assert t.lost + (t.datagrams - t.duplicates - t.late) == t.expected
    assert min(t.lost, t.reordered, t.duplicates, t.late) >= 0


def test_esn_inference_wraps_and_unwraps() -> None:
    assert infer_esn(5, (1 << 32) - 10) == (1 << 32) + 5
    assert infer_esn(0xFFFFFFF0, (1 << 32) + 5) == 0xFFFFFFF0
    assert infer_esn(100, 90) == 100


def test_gap_final_by_time_makes_arrival_late() -> None:
    s = TrackerSettings(window=1024, reorder_time=2.0)
    t = SeqTracker()
    t.observe(1, 0.0, s)
    t.observe(3, 0.1, s)  # 2 missing since 0.1
    t.observe(4, 2.2, s)  # 2.1 s later: 2 is final
    assert t.lost == 1
    assert t.observe(2, 2.3, s) is Verdict.LATE
    t.finish()
    assert (t.lost, t.late, t.reordered) == (1, 1, 0)


def test_implausible_jump_is_held_and_refuted() -> None:
    s = TrackerSettings(jump_limit=1000)
    t = SeqTracker()
    for i in range(1, 11):
        t.observe(i, i * 0.01, s)
    assert t.observe(10**7, 0.2, s) is Verdict.HELD
    assert t.observe(11, 0.21, s) is Verdict.ACCEPTED
    t.finish()
    assert (t.lost, t.late, t.implausible, t.last) == (0, 1, 1, 11)


def test_confirmed_jump_counts_the_outage() -> None:
    s = TrackerSettings(jump_limit=1000)
    t = SeqTracker()
    t.observe(1, 0.0, s)
    assert t.observe(5001, 1.0, s) is Verdict.HELD
    assert t.observe(5002, 1.01, s) is Verdict.ACCEPTED
    t.finish()
    assert (t.lost, t.last, t.implausible) == (4999, 5002, 1)


def test_no_gap_needs_no_ranges() -> None:
    s = TrackerSettings()
    t = SeqTracker()
    for i in range(1, 10_000):
        t.observe(i, i * 1e-4, s)
    assert not t.gaps and not t.finals and type(t.gaps) is tuple  # no list allocated
