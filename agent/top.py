"""`espmeter top`: a live terminal view of a running agent, read from its metrics endpoint.

Two lines per tunnel (one per direction: peer_a's line is a->b), sorted by loss over the last
refresh, then by loss since start; refreshed every second; `q` quits. Rows are 79 columns (an
80-column terminal), plain curses: works over ssh.
"""

from __future__ import annotations

import curses
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import split_listen

TunnelKey = tuple[str, str, str]  # peer_a, peer_b, ports
FIGURES = ("packets", "lost", "expected", "reordered")
HEADER = f"{'TUNNEL':<30} {'DIR':<4} {'PKTS/S':>9} {'LOSS%':>7} {'TOTAL%':>7} {'REORD':>7} {'LAST LOSS':>9}"


@dataclass(slots=True)
class Direction:
    totals: dict[str, float]
    last_event: float | None = None


@dataclass(slots=True)
class Reading:
    """One scrape: per tunnel and direction the counters, per tunnel its name."""

    at: float
    directions: dict[tuple[TunnelKey, str], Direction]
    names: dict[TunnelKey, str]


def endpoint_url(listen: str) -> str:
    """The URL of the endpoint an agent with `metrics.listen: listen` serves (any-address → loopback)."""
    host, port = split_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def parse(text: str, at: float) -> Reading:
    directions: dict[tuple[TunnelKey, str], Direction] = {}
    names: dict[TunnelKey, str] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if "peer_a" not in labels:
                continue
            tunnel = (labels["peer_a"], labels["peer_b"], labels.get("ports", ""))
            if s.name == "espmeter_tunnel_info":
                names[tunnel] = labels.get("tunnel_name", "")
                continue
            d = directions.setdefault((tunnel, labels["direction"]), Direction(dict.fromkeys(FIGURES, 0.0)))
            if s.name == "espmeter_tunnel_last_loss_event_timestamp_seconds":
                d.last_event = s.value
            elif s.name.startswith("espmeter_tunnel_") and s.name.endswith("_total"):
                figure = s.name.removeprefix("espmeter_tunnel_").removesuffix("_total")
                if figure in d.totals:
                    d.totals[figure] = s.value
    return Reading(at, directions, names)


def _ratio(lost: float, expected: float) -> float | None:
    return lost / expected if expected > 0 else None


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:.2f}%"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "~"


def _row(direction: str, pps: float | None = None, interval: float | None = None, total: float | None = None,
         reordered: float | None = None, last: float | None = None) -> str:
    return (f"{'a->b' if direction == 'a_to_b' else 'b->a':<4} {'-' if pps is None else f'{pps:.1f}':>9} "
            f"{_percent(interval):>7} {_percent(total):>7} {'-' if reordered is None else int(reordered):>7} "
            f"{'-' if last is None else time.strftime('%H:%M:%S', time.gmtime(last)):>9}")


def lines(now: Reading, before: Reading | None, seen_loss: dict[tuple[TunnelKey, str], float]) -> list[str]:
    """The table rows for `now` (rates and interval loss against `before`), sorted by loss.

    `seen_loss` remembers when this view saw a direction's loss grow, shown as its last loss when the
    agent serves no loss-event time."""
    elapsed = now.at - before.at if before is not None else 0.0
    rows: dict[TunnelKey, dict[str, str]] = {}
    worst: dict[TunnelKey, tuple[float, float]] = {}
    for (tunnel, direction), d in now.directions.items():
        prev = before.directions.get((tunnel, direction)) if before is not None else None
        interval = pps = None
        if prev is not None:
            delta = {f: d.totals[f] - prev.totals[f] for f in FIGURES}
            if delta["lost"] > 0:
                seen_loss[(tunnel, direction)] = now.at
            pps = delta["packets"] / elapsed if elapsed > 0 else None
            interval = _ratio(delta["lost"], delta["expected"])
        total = _ratio(d.totals["lost"], d.totals["expected"])
        last = d.last_event if d.last_event is not None else seen_loss.get((tunnel, direction))
        rows.setdefault(tunnel, {})[direction] = _row(direction, pps, interval, total, d.totals["reordered"], last)
        w = worst.get(tunnel, (0.0, 0.0))
        worst[tunnel] = (max(w[0], interval or 0.0), max(w[1], total or 0.0))
    out = []
    for tunnel in sorted(rows, key=lambda t: (-worst[t][0], -worst[t][1], t)):
        peer_a, peer_b, ports = tunnel
        name = now.names.get(tunnel)
        first = _fit(f"{name}: {peer_a}" if name else peer_a, 30)
        second = _fit(f"  <=> {peer_b}" + (f" udp {ports}" if ports else ""), 30)
        out.append(f"{first:<30} {rows[tunnel].get('a_to_b', _row('a_to_b'))}")
        out.append(f"{second:<30} {rows[tunnel].get('b_to_a', _row('b_to_a'))}")
    return out


def fetch(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def run(url: str, interval: float = 1.0, clock: Callable[[], float] = time.time) -> None:
    curses.wrapper(lambda screen: _loop(screen, url, interval, clock))


def _loop(screen: curses.window, url: str, interval: float, clock: Callable[[], float]) -> None:
    curses.curs_set(0)
    screen.timeout(100)
    before: Reading | None = None
    seen_loss: dict[tuple[TunnelKey, str], float] = {}
    rows: list[str] = []
    status = "connecting..."
    due = 0.0
    while True:
        if time.monotonic() >= due:
            due = time.monotonic() + interval
            try:
                now = parse(fetch(url), clock())
                rows = lines(now, before, seen_loss)
                before = now
                status = f"{len(rows) // 2} tunnels"
            except (OSError, ValueError) as e:  # agent restarting, not up yet: keep trying
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                status = f"cannot read {url}: {reason} (retrying)"
            _draw(screen, url, status, rows, clock())
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return
        if key == curses.KEY_RESIZE:
            _draw(screen, url, status, rows, clock())


def _draw(screen: curses.window, url: str, status: str, rows: list[str], now: float) -> None:
    height, width = screen.getmaxyx()
    screen.erase()
    title = f"espmeter top  {url}  {time.strftime('%H:%M:%S', time.gmtime(now))} UTC  q: quit"
    lines_ = [title, status, HEADER, *rows]
    if len(lines_) > height:  # whole tunnels only, and a line saying how many are not shown
        shown = max(0, (height - 4) // 2 * 2)
        lines_ = [title, status, HEADER, *rows[:shown], f"... {(len(rows) - shown) // 2} more tunnels"]
    for y, text in enumerate(lines_[:height]):
        attr = curses.A_BOLD if y in (0, 2) else curses.A_NORMAL
        screen.addnstr(y, 0, text, max(width - 1, 1), attr)
    screen.refresh()
