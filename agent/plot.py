"""`espmeter read --plot FILE.png|FILE.svg`: loss % and packet rate over time per tunnel, loss events marked.

matplotlib is an optional extra (`pip install 'espmeter[plot]'`); the agent never imports this module.
The figure is built with matplotlib's object API (no pyplot, no global state).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

FORMATS = (".png", ".svg")
NICE_BINS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900,
             1800, 3600)
COLORS = ("tab:blue", "tab:orange")


class PlotError(ValueError):
    """The plot cannot be made (missing matplotlib, bad path): one line, exit 2."""


def check_target(path: str) -> None:
    """Before metering: a .png/.svg path in a writable directory, and matplotlib importable."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise PlotError(f"--plot {path}: the file name must end in .png or .svg")
    where = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(where) or not os.access(where, os.W_OK):
        raise PlotError(f"--plot {path}: cannot write there")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'espmeter[plot]'") from None


def auto_bin(span_s: float, bins: int = 300) -> float:
    """A round bin size giving at most about `bins` bins over `span_s` seconds."""
    return next((b for b in NICE_BINS if span_s / b <= bins), NICE_BINS[-1])


def _units(doc: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(title, SAs) per tunnel, then per unpaired SA."""
    sas = doc["sas"]
    paired = {i for t in doc["tunnels"] for i in t["sas"]}
    out = []
    for t in doc["tunnels"]:
        name = f" \"{t['name']}\"" if t.get("name") else ""
        out.append((f"tunnel {t['id']}{name}: {t['a']} <=> {t['b']}", [sas[i] for i in t["sas"]]))
    for i, sa in enumerate(sas):
        if i not in paired:
            out.append((f"SA {sa['src']} -> {sa['dst']} spi 0x{sa['spi']:08x}", [sa]))
    return out


def render(doc: dict[str, Any], path: str, top: int, bin_s: float) -> int:
    """Write the chart of the `top` tunnels (or SAs) with the most lost numbers; returns how many."""
    from matplotlib import dates as mdates
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    units = sorted(_units(doc), key=lambda u: -sum(sa["lost"] for sa in u[1]))[:max(1, top)]
    fig = Figure(figsize=(11, 3.6 * len(units)), layout="constrained")
    axes = fig.subplots(2 * len(units), 1, squeeze=False, sharex=False)[:, 0]

    def when(t: float) -> datetime:
        return datetime.fromtimestamp(t, UTC)

    for n, (title, sas) in enumerate(units):
        loss_ax, rate_ax = axes[2 * n], axes[2 * n + 1]
        for k, sa in enumerate(sas):
            color = COLORS[k % 2]
            label = f"{sa['src']} -> {sa['dst']} (spi 0x{sa['spi']:08x})"
            bins = sa["bins"]
            x = [when(b["start"]) for b in bins] + ([when(bins[-1]["start"] + bin_s)] if bins else [])
            loss = [100.0 * b["lost"] / b["expected"] if b["expected"] else 0.0 for b in bins]
            rate = [b["packets"] / bin_s for b in bins]
            if bins:
                loss_ax.stairs(loss, x, color=color, label=f"{label}: {sa['lost']} lost", linewidth=1.4)
                rate_ax.stairs(rate, x, color=color, label=label, linewidth=1.4)
            for e in sa.get("loss_events", []):
                lo, hi = sorted((e["after"], e["before"]))
                loss_ax.axvspan(when(lo), when(hi), color=color, alpha=0.25, linewidth=0)
                loss_ax.axvline(when(e["before"]), color=color, alpha=0.6, linewidth=0.6, linestyle=":")
        loss_ax.set_title(f"{title}: loss per {bin_s:g} s bin (shaded: loss events, between the datagrams around them)",
                          fontsize=10, loc="left")
        loss_ax.set_ylabel("loss %")
        loss_ax.set_ylim(bottom=0)
        rate_ax.set_ylabel("packets/s")
        rate_ax.set_ylim(bottom=0)
        for ax in (loss_ax, rate_ax):
            locator = mdates.AutoDateLocator(tz=UTC)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8, loc="upper right")
        rate_ax.set_xlabel(f"time (UTC, {when(sas[0]['first_seen']):%Y-%m-%d})")
        rate_ax.sharex(loss_ax)
    fig.suptitle(f"espmeter: {os.path.basename(doc['capture']['file'])}", fontsize=12)
    try:
        with rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable, selectable
            fig.savefig(path)
    except OSError as e:
        raise PlotError(f"--plot {path}: {e.strerror or e}") from None
    return len(units)
