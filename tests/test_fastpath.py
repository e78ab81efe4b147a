"""The fast paths of Meter.feed (numpy runs, inline per-frame) give exactly the general decoder's results."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.meter import MeterSettings
from agent.offline import meter_file
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
