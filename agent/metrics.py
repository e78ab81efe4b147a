"""Prometheus output: per-SA and per-tunnel counters with the exact semantics of the IPFIX records.

A counter is the sum of the deltas of every record of its series so far plus what the next record
of each live SA would carry (its counters minus its export snapshot, read at scrape time): so a
datagram shows at the next scrape, a number is lost only once it is final, and the values equal
the IPFIX record sums whenever the records are flushed. The packet path is not touched.

Scrapes run in prometheus-client's HTTP thread; the figures are read in the daemon's thread, on its
timer turn after a scrape asked for them (at most one turn, half a second, later), and the scrape
serves them. Before reading, gaps older than the reorder time become final (as they would at the
next record), so loss shows within reorder time + one turn even when no more traffic comes.

Series: per SA (labels fixed at its first sight: src, dst, spi, encap, interface), its info series
(what pairing learns later), and per tunnel keyed by the two peers in canonical order, the UDP
ports and the direction, so rekeys and parallel SAs between the same peers add up. `max_series`
caps what is served: a label set that does not fit is not served for as long as it lives and its
series are counted in `espmeter_series_suppressed_total`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from agent.outputs import OutputError
from agent.records import tunnel_name
from exporter.records import ENCAP_UDP, BiflowRecord, LossEvent, MeteringStats, SARecord

if TYPE_CHECKING:
    from agent.meter import Meter
    from exporter.transport import CollectorCounters

log = logging.getLogger("espmeter")

# counter names (espmeter_sa_<name>_total, espmeter_tunnel_<name>_total) in record order, and help
COUNTERS = {
    "datagrams": "ESP datagrams (with duplicates and late ones)",
    "packets": "IP packets (fragments of an ESP datagram counted each)",
    "octets": "IP octets",
    "lost": "sequence numbers lost (final: behind the window, older than the reorder time, or SA ended)",
    "expected": "sequence numbers expected (lost + accepted datagrams)",
    "reordered": "datagrams accepted after a higher number",
    "duplicates": "datagrams whose number was already seen",
    "late": "datagrams whose number was already final (lost)",
}
LOSS_EVENTS = "loss_events"
SA_LABELS = ("src", "dst", "spi", "encap", "interface")
SA_INFO_LABELS = ("src", "dst", "spi", "tunnel", "peer_spi", "tunnel_name")
TUNNEL_LABELS = ("peer_a", "peer_b", "ports", "direction")
TUNNEL_INFO_LABELS = ("peer_a", "peer_b", "ports", "tunnel_name")
SA_SERIES = len(COUNTERS) + 2  # counters, loss events, info
TUNNEL_SERIES = 2 * (len(COUNTERS) + 2) + 1  # both directions: counters, loss events, last event; info
WAIT_S = 0.9  # a scrape waits this long for fresh figures, then serves the previous ones
SWEEP_S = 10.0  # how often ended SAs' label caches are pruned


def metric_names() -> list[str]:
    """Every metric name the endpoint serves (as written in the exposition and in PromQL)."""
    names = [f"espmeter_{kind}_{c}_total" for kind in ("sa", "tunnel") for c in (*COUNTERS, LOSS_EVENTS)]
    return [*names, "espmeter_sa_info", "espmeter_tunnel_info", "espmeter_tunnel_last_loss_event_timestamp_seconds",
            "espmeter_capture_frames_total", "espmeter_capture_dropped_total", "espmeter_export_records_total",
            "espmeter_export_failures_total", "espmeter_sas", "espmeter_series_suppressed_total",
            "espmeter_build_info"]


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: str  # ADDR:PORT, IPv6 literals in brackets
    per_sa: bool = True
    max_series: int = 50_000
    grace_s: float = 300.0  # an ended SA's series stay this long


@dataclass(slots=True)
class CaptureCounters:
    frames: int = 0
    dropped: int = 0


@dataclass(slots=True)
class Health:
    """The agent's own figures at one moment: capture per interface, delivery per collector."""

    interfaces: Mapping[str, CaptureCounters]
    collectors: Mapping[str, CollectorCounters]


def split_listen(listen: str) -> tuple[str, int]:
    """'ADDR:PORT' or '[IPV6]:PORT' → (address, port); ValueError with the reason otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} is not ADDR:PORT (port 1-65535; IPv6 in brackets: [::1]:9108)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"{listen!r}: brackets are for IPv6 addresses only")
    elif ":" in host:
        raise ValueError(f"{listen!r}: an IPv6 address goes in brackets: [{host}]:{port}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{listen!r}: {host!r} is not an IP address") from None
    return host, int(port)


@dataclass(slots=True)
class _Series:
    """Accumulated record deltas of one label set (per SA or per tunnel direction)."""

    totals: list[int] = field(default_factory=lambda: [0] * len(COUNTERS))
    events: int = 0
    last_event: float | None = None
    seen: float = 0.0  # last time it was live or had a record (per-SA grace period)
    info: tuple[str, str, str] = ("", "", "")  # tunnel id, peer SPI, tunnel name (per SA)


SALabels = tuple[str, str, str, str, str]
TunnelKey = tuple[str, str, str]  # peer_a, peer_b, ports
Labels = tuple[SALabels, TunnelKey, str]  # per SA, its tunnel, the direction in the tunnel


def _labels(src: ipaddress.IPv4Address | ipaddress.IPv6Address, dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
            spi: int, udp: bool, sport: int | None, dport: int | None, interface: str) -> Labels:
    sa = (str(src), str(dst), f"0x{spi:08x}", "udp" if udp else "esp", interface)
    forward = src <= dst
    a, b = (src, dst) if forward else (dst, src)
    pa, pb = (sport, dport) if forward else (dport, sport)
    ports = f"{pa}/{pb}" if udp else ""
    return sa, (str(a), str(b), ports), "a_to_b" if forward else "b_to_a"


class MetricsOutput:
    """The Prometheus output (an `agent.outputs.Output`): serves on `settings.listen` from its first tick."""

    def __init__(self, settings: MetricsSettings, meter: Meter, health: Callable[[], Health],
                 serve: bool = True) -> None:
        self.settings = settings
        self.meter = meter
        self.health = health
        self.sa: dict[SALabels, _Series] = {}
        self.tunnel: dict[tuple[TunnelKey, str], _Series] = {}
        self.tunnel_names: dict[TunnelKey, str] = {}
        self.tunnels: set[TunnelKey] = set()
        self.refused_sa: set[SALabels] = set()
        self.refused_tunnel: set[TunnelKey] = set()
        self.used = 0  # series of admitted label sets
        self.reserve = 0  # series of the agent's own metrics
        self.suppressed = 0
        self.cache: dict[tuple, Labels] = {}  # SA key -> labels, so a scrape decodes no address twice
        self.ifnames: dict[int | None, str] = {None: ""}
        self.next_sweep = 0.0
        self.families: list = []
        self.cond = threading.Condition()
        self.wanted = False
        self.built = 0
        self.server = None
        self.thread: threading.Thread | None = None
        if serve:
            try:
                self.server = _bind(settings.listen, self)
            except OSError as e:
                raise OutputError(f"metrics: cannot listen on {settings.listen}: {e.strerror or e} "
                                  "(no metrics endpoint; metering and IPFIX export go on)") from None

    # -- the Output interface ------------------------------------------------------------------
    @property
    def counters(self) -> dict[str, CollectorCounters]:
        return {}

    def export(self, records: Sequence[SARecord | BiflowRecord]) -> None:
        now = self.meter.now
        self.reserve = self._health_series(self.health())
        for item in records:
            for r in (item.forward, item.reverse) if isinstance(item, BiflowRecord) else (item,):
                ifindex = r.ingress_if if r.ingress_if is not None else r.egress_if
                labels = _labels(r.src, r.dst, r.spi, r.encap == ENCAP_UDP, r.sport, r.dport, self._ifname(ifindex))
                values = (r.datagrams, r.packets, r.octets, r.lost, r.expected, r.reordered, r.duplicates, r.late)
                for _, series in self._series(labels, now):
                    t = series.totals
                    for i, v in enumerate(values):
                        t[i] += v
                sa = self.sa.get(labels[0])
                if sa is not None:
                    sa.seen = max(sa.seen, r.end_ms / 1000)
                    sa.info = (str(r.tunnel_id or ""), f"0x{r.peer_spi:08x}" if r.peer_spi is not None else "",
                               r.tunnel_name or "")
                if r.tunnel_name:
                    self.tunnel_names[labels[1]] = r.tunnel_name

    def export_stats(self, stats: MeteringStats) -> None:
        pass  # the health figures are read at scrape time

    def export_loss_events(self, events: Sequence[LossEvent]) -> None:
        now = self.meter.now
        self.reserve = self._health_series(self.health())
        for e in events:
            ifindex = e.ingress_if if e.ingress_if is not None else e.egress_if
            labels = _labels(e.src, e.dst, e.spi, e.encap == ENCAP_UDP, e.sport, e.dport, self._ifname(ifindex))
            for _, series in self._series(labels, now):
                series.events += 1
                series.last_event = max(series.last_event or e.before, e.before)

    def tick(self) -> None:
        if self.server is not None and self.thread is None:  # after the daemon dropped privileges
            self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
            self.thread.start()
        if self.wanted:
            families = self.build()
            with self.cond:
                self.families = families
                self.built += 1
                self.wanted = False
                self.cond.notify_all()

    def reload(self) -> None:
        pass

    def close(self) -> None:
        if self.server is not None:
            if self.thread is not None:
                self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- the scrape side (HTTP thread) -------------------------------------------------------------
    def collect(self) -> Iterable:
        """prometheus-client Collector: ask the daemon's thread for fresh figures and serve them."""
        with self.cond:
            want = self.built + 1
            self.wanted = True
            self.cond.wait_for(lambda: self.built >= want, WAIT_S)
            return list(self.families)

    # -- building the figures (daemon thread) ------------------------------------------------------
    def build(self) -> list:
        """The metric families of this moment: record sums plus the live SAs' pending deltas."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        meter = self.meter
        now = meter.now
        per_sa = self.settings.per_sa
        health = self.health()
        self.reserve = self._health_series(health)
        pending: dict[object, list[int]] = {}
        sa_info: dict[SALabels, tuple[str, str, str]] = {}
        finalize = meter.producer.finalize
        names = meter.producer.names
        active = 0
        for sa in list(meter.table.sas.values()):
            if not sa.active:
                continue
            active += 1
            if sa.gaps and finalize is not None:
                finalize(sa, now)
            labels = self.cache.get(sa.key)
            if labels is None:
                sport, dport = sa.ports
                labels = self.cache[sa.key] = _labels(sa.src, sa.dst, sa.spi, sa.udp, sport, dport,
                                                      self._ifname(sa.ifindex))
            lost = sa.lost - sa.x_lost
            datagrams = sa.datagrams - sa.x_datagrams
            duplicates = sa.duplicates - sa.x_duplicates
            late = sa.late - sa.x_late
            values = (datagrams, sa.packets - sa.x_packets, sa.octets - sa.x_octets, lost,
                      lost + datagrams - duplicates - late, sa.reordered - sa.x_reordered, duplicates, late)
            name = tunnel_name(sa, names)
            if name:
                self.tunnel_names[labels[1]] = name
            for key, _ in self._series(labels, now):
                p = pending.get(key)
                if p is None:
                    pending[key] = list(values)
                else:
                    for i, v in enumerate(values):
                        p[i] += v
            served = self.sa.get(labels[0])
            if served is not None:
                served.seen = now
                peer = sa.peer
                sa_info[labels[0]] = (str(sa.tunnel_id or ""), f"0x{peer.spi:08x}" if peer is not None else "",
                                      name or "")
        self._expire(now)

        zero = (0,) * len(COUNTERS)
        fams = []
        kinds = [("tunnel", TUNNEL_LABELS, [(k[0] + (k[1],), (k, s)) for k, s in self.tunnel.items()])]
        if per_sa:
            kinds.insert(0, ("sa", SA_LABELS, [(k, (k, s)) for k, s in self.sa.items()]))
        for kind, label_names, items in kinds:
            counters = [CounterMetricFamily(f"espmeter_{kind}_{c}", f"{kind.upper()}: {text}", labels=label_names)
                        for c, text in COUNTERS.items()]
            events = CounterMetricFamily(f"espmeter_{kind}_{LOSS_EVENTS}", f"{kind.upper()}: loss events "
                                         "(maximal runs of consecutive lost numbers)", labels=label_names)
            for labels, (key, series) in items:
                p = pending.get(key, zero)
                for family, total, extra in zip(counters, series.totals, p, strict=True):
                    family.add_metric(labels, total + extra)
                events.add_metric(labels, series.events)
            fams += [*counters, events]
            if kind == "tunnel":
                last = GaugeMetricFamily("espmeter_tunnel_last_loss_event_timestamp_seconds",
                                         "TUNNEL: when the latest loss event ended (epoch s)", labels=label_names)
                for labels, (_, series) in items:
                    if series.last_event is not None:
                        last.add_metric(labels, series.last_event)
                info = GaugeMetricFamily("espmeter_tunnel_info", "TUNNEL: name", labels=TUNNEL_INFO_LABELS)
                for t in sorted(self.tunnels):
                    info.add_metric([*t, self.tunnel_names.get(t, "")], 1)
                fams += [last, info]
        if per_sa:
            info = GaugeMetricFamily("espmeter_sa_info", "SA: tunnel id, partner SPI and name", labels=SA_INFO_LABELS)
            for labels in sorted({(k[0], k[1], k[2], *sa_info.get(k, s.info)) for k, s in self.sa.items()}):
                info.add_metric(labels, 1)
            fams.append(info)
        fams += self._health(health, active)
        return fams

    def _health(self, h: Health, active: int) -> list:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        frames = CounterMetricFamily("espmeter_capture_frames", "frames captured", labels=["interface"])
        dropped = CounterMetricFamily("espmeter_capture_dropped", "frames dropped by the kernel before capture "
                                      "(not tunnel loss)", labels=["interface"])
        for name, c in sorted(h.interfaces.items()):
            frames.add_metric([name], c.frames)
            dropped.add_metric([name], c.dropped)
        records = CounterMetricFamily("espmeter_export_records", "IPFIX records sent", labels=["collector"])
        failures = CounterMetricFamily("espmeter_export_failures", "IPFIX sends that failed", labels=["collector"])
        for url, c in sorted(h.collectors.items()):
            records.add_metric([url], c.records)
            failures.add_metric([url], c.send_errors)
        sas = GaugeMetricFamily("espmeter_sas", "SAs active now", value=active)
        suppressed = CounterMetricFamily("espmeter_series_suppressed", "series not served: over max_series",
                                         value=self.suppressed)
        build = GaugeMetricFamily("espmeter_build_info", "espmeter version", labels=["version"])
        build.add_metric([_version()], 1)
        return [frames, dropped, records, failures, sas, suppressed, build]

    # -- series admission and expiry -----------------------------------------------------------
    def _series(self, labels: Labels, now: float) -> list[tuple[object, _Series]]:
        """(key, series) of the served series of an SA and of its tunnel direction; label sets are
        admitted (or refused, for as long as they live) on first sight."""
        out: list[tuple[object, _Series]] = []
        sa_labels, tunnel, direction = labels
        if self.settings.per_sa:
            series = self.sa.get(sa_labels)
            if series is None and sa_labels not in self.refused_sa:
                if self._admit(SA_SERIES):
                    series = self.sa[sa_labels] = _Series(seen=now)
                else:
                    self.refused_sa.add(sa_labels)
            if series is not None:
                out.append((sa_labels, series))
        if tunnel not in self.tunnels and tunnel not in self.refused_tunnel:
            if self._admit(TUNNEL_SERIES):
                self.tunnels.add(tunnel)
            else:
                self.refused_tunnel.add(tunnel)
        if tunnel in self.tunnels:
            key = (tunnel, direction)
            series = self.tunnel.get(key)
            if series is None:
                series = self.tunnel[key] = _Series()
            out.append((key, series))
        return out

    def _admit(self, cost: int) -> bool:
        if self.used + cost + self.reserve <= self.settings.max_series:
            self.used += cost
            return True
        self.suppressed += cost
        return False

    @staticmethod
    def _health_series(h: Health) -> int:
        """Series of the agent's own metrics (interfaces and collectors come and go)."""
        return 2 * len(h.interfaces) + 2 * len(h.collectors) + 3

    def _expire(self, now: float) -> None:
        """Per-SA series whose SA ended more than the grace period ago leave; caches are pruned."""
        grace = self.settings.grace_s
        for labels in [k for k, s in self.sa.items() if now - s.seen > grace]:
            del self.sa[labels]
            self.used -= SA_SERIES
        if now >= self.next_sweep:
            sas = self.meter.table.sas
            for key in [k for k in self.cache if k not in sas]:
                del self.cache[key]
            live = {labels[0] for labels in self.cache.values()}
            self.refused_sa &= live
            self.next_sweep = now + SWEEP_S

    def _ifname(self, ifindex: int | None) -> str:
        name = self.ifnames.get(ifindex)
        if name is None:
            try:
                name = socket.if_indextoname(ifindex)
            except OSError:
                name = f"if{ifindex}"
            self.ifnames[ifindex] = name
        return name


def _version() -> str:
    try:
        return version("espmeter")
    except PackageNotFoundError:
        return "unknown"


def _bind(listen: str, collector: MetricsOutput):
    """The HTTP server, bound now (before privileges are dropped), served from the first tick."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    host, port = split_listen(listen)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return make_server(host, port, make_wsgi_app(registry), Server, handler_class=QuietHandler)
