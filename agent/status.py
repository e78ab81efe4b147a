"""What the agent says about itself: the capture states (sd_notify STATUS=) and the statistics line
logged every `stats_interval_s`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass


@dataclass(frozen=True, slots=True)
class Totals:
    """Counters since start; the statistics line shows their change over one interval."""

    frames: int = 0
    esp: int = 0  # ESP datagrams (plain and in UDP)
    capture_drops: int = 0
    records_sent: int = 0
    records_not_sent: int = 0


def capture_status(states: Mapping[str, str]) -> str:
    """`wan0 capturing, lan0 down, ppp0 missing`: every configured interface and its capture state."""
    return ", ".join(f"{name} {state or 'opening'}" for name, state in states.items())


def stats_line(before: Totals, now: Totals, seconds: float, sas: int, states: Mapping[str, str]) -> str:
    """One line per interval: what was metered and exported in it, the SAs tracked, the captures."""
    d = Totals(*(b - a for a, b in zip(astuple(before), astuple(now), strict=True)))
    return (f"stats ({seconds:.0f} s): frames {d.frames}, ESP {d.esp}, capture drops {d.capture_drops}, "
            f"SAs {sas}, records sent {d.records_sent}, not sent {d.records_not_sent}; "
            f"interfaces: {capture_status(states)}")

