"""The fast paths of Meter.feed (numpy runs, inline per-frame) give exactly the general decoder's results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.meter import MeterSettings
from agent.offline import meter_file
from agent.vector import _group_order
from tests.gt.scenarios import registry

SCENARIOS = registry()


FAST = {
    "default": MeterSettings(),
    "vector-everywhere": MeterSettings(vector_min=1),
    "inline-only": MeterSettings(vector=False),
}


@pytest.mark.parametrize("mode", sorted(FAST))
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fast_paths_equal_reference_path(name: str, mode: str, tmp_path: Path) -> None:
    path = str(tmp_path / f"{name}.pcap")
    SCENARIOS[name]().write(path)
    fast = meter_file(path, FAST[mode], progress=False).doc
    slow = meter_file(path, MeterSettings(fast_path=False, vector=False), progress=False).doc
    assert fast == slow


def test_group_order_separates_hashes_sharing_a_bucket() -> None:
    """Two SAs whose hashes share the top 16 bits (the radix bucket) still form two groups, in frame order."""
    a, b, c = (np.uint64(x) for x in (0xABCD_0000_0000_0001, 0xABCD_0000_0000_0002, 0x1234_0000_0000_0000))
    h = np.array([a, b, a, c, b, a], dtype=np.uint64)
    order = _group_order(h)
    groups = [[int(i) for i in order if h[i] == v] for v in (a, b, c)]
    assert groups == [[0, 2, 5], [1, 4], [3]]
    assert all(list(order).index(g[0]) + len(g) - 1 == list(order).index(g[-1]) for g in groups)
