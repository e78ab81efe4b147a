"""Ground-truth capture generator.

Builds pcap/pcapng files together with the exact expected `espmeter read --json` result, derived
from what was written (dropped, duplicated, delayed...), not from a tracker.
"""

from .build import Scenario
from .frames import Link
from .scenario import AmbiguousScenario, FragPlan, SASpec
from .scenarios import registry

__all__ = ["AmbiguousScenario", "FragPlan", "Link", "SASpec", "Scenario", "registry"]
