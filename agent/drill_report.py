"""Output of `espmeter read`'s drill-down: the bins table and CSV, the trace, the sorted table."""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from agent.drill import BIN_FIELDS, REORDERED, Line
from agent.report import utc

SORT_KEYS: dict[str, Callable[[dict[str, Any]], float]] = {
    "loss": lambda sa: sa["lost"] / sa["expected"] if sa["expected"] else 0.0,  # ratio
    "lost": lambda sa: sa["lost"],
    "packets": lambda sa: sa["packets"],
    "reordered": lambda sa: sa["reordered"],
}


class DrillError(ValueError):
    """A drill-down argument the capture or the other arguments make invalid (exit 2)."""


def parse_time(text: str) -> float:
    """Epoch seconds, or ISO 8601 (UTC when no offset is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DrillError(f"not a time (epoch seconds or ISO 8601): {text!r}") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def write_csv(doc: dict[str, Any], out: TextIO) -> None:
    """One row per SA and bin."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["src", "dst", "spi", "tunnel", "start", *BIN_FIELDS])
    for sa in doc["sas"]:
        for b in sa["bins"]:
            w.writerow([sa["src"], sa["dst"], f"0x{sa['spi']:08x}", "" if sa["tunnel"] is None else sa["tunnel"],
                        f"{b['start']:.6f}", *(b[k] for k in BIN_FIELDS)])


def _pct(b: dict[str, Any] | None) -> str:
    if b is None:
        return f"{'':>9} {'':>8}"
    loss = f"{100.0 * b['lost'] / b['expected']:.2f}%" if b["expected"] else "-"
    return f"{b['packets']:>9} {loss:>8}"


def write_bins_table(doc: dict[str, Any], out: TextIO) -> None:
    """Per tunnel (and per unpaired SA) and bin: packets and loss % each way."""
    sas = doc["sas"]
    paired: set[int] = set()
    for t in doc["tunnels"]:
        fwd, rev = (sas[i] for i in t["sas"])
        paired.update(t["sas"])
        out.write(f"tunnel {t['id']}: {t['a']} <=> {t['b']}\n")
        out.write(f"  {'bin start (UTC)':<27} {'a->b pkts':>9} {'loss':>8}  {'b->a pkts':>9} {'loss':>8}\n")
        by_start: dict[float, list[dict[str, Any] | None]] = {}
        for side, sa in enumerate((fwd, rev)):
            for b in sa["bins"]:
                by_start.setdefault(b["start"], [None, None])[side] = b
        for start in sorted(by_start):
            a, b = by_start[start]
            out.write(f"  {utc(start):<27} {_pct(a)}  {_pct(b)}\n")
    for i, sa in enumerate(sas):
        if i in paired:
            continue
        out.write(f"SA {sa['src']} -> {sa['dst']} spi 0x{sa['spi']:08x}\n")
        for b in sa["bins"]:
            out.write(f"  {utc(b['start']):<27} {_pct(b)}\n")


def sort_top(doc: dict[str, Any], key: str | None, top: int | None) -> dict[str, Any]:
    """The table's tunnels and unpaired SAs ordered by `key` (of their worst SA, largest first) and cut
    to the first `top`; `sas` indexes are renumbered."""
    sas = doc["sas"]
    paired = {i for t in doc["tunnels"] for i in t["sas"]}
    units: list[tuple[dict[str, Any] | None, list[int]]] = [(t, list(t["sas"])) for t in doc["tunnels"]]
    units += [(None, [i]) for i in range(len(sas)) if i not in paired]
    if key is not None:
        units.sort(key=lambda u: -max(SORT_KEYS[key](sas[i]) for i in u[1]))
    if top is not None:
        units = units[:top]
    order = [i for _, members in units for i in members]
    remap = {old: new for new, old in enumerate(order)}
    tunnels = [{**t, "sas": [remap[i] for i in t["sas"]]} for t, _ in units if t is not None]
    return {**doc, "sas": [sas[i] for i in order], "tunnels": tunnels}


def trace_lines(lines: list[Line], start: float | None, end: float | None) -> list[Line]:
    return [x for x in lines if (start is None or x.time >= start) and (end is None or x.time <= end)]


def write_trace(blocks: list[tuple[dict[str, Any], list[Line]]], out: TextIO) -> None:
    for sa, lines in blocks:
        out.write(f"{sa['src']} -> {sa['dst']}  spi 0x{sa['spi']:08x}"
                  f"{'  gen ' + str(sa['generation']) if sa['generation'] else ''}\n")
        for x in lines:
            if x.missing is not None:
                m = x.missing
                span = f"{m.first}" if m.first == m.last else f"{m.first}..{m.last}"
                out.write(f"  {utc(x.time)}  missing {span} ({m.count})\n")
                continue
            verdict = x.verdict.replace("_", " ")
            if x.verdict == REORDERED:
                verdict += f" (extent {x.extent})"
            out.write(f"  {utc(x.time)}  seq {x.seq:<12} len {x.length:<6} {verdict}\n")
