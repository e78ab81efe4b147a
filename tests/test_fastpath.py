"""The inline fast path of Meter.feed must give exactly the results of the general decoder path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.meter import MeterSettings
from agent.offline import meter_file
from tests.gt.scenarios import registry

SCENARIOS = registry()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fast_path_equals_reference_path(name: str, tmp_path: Path) -> None:
    path = str(tmp_path / f"{name}.pcap")
    SCENARIOS[name]().write(path)
    fast = meter_file(path, MeterSettings(), progress=False).doc
    slow = meter_file(path, dataclasses.replace(MeterSettings(), fast_path=False), progress=False).doc
    assert fast == slow
