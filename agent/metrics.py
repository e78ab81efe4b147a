"""Prometheus output: per-SA and per-tunnel counters with the exact semantics of the IPFIX records.

A counter is the sum of the deltas of every record of its series so far plus what the next record
of each live SA would carry (its counters minus its export snapshot, read at scrape time): so a
datagram shows at the next scrape, a number is lost only once it is final, and the values equal
the IPFIX record sums whenever the records are flushed. The packet path is not touched.

Scrapes run in the endpoint's HTTP threads; the figures are read and written out in the daemon's
thread, on its timer turn after a scrape asked for them (at most one turn, half a second, later),
and the scrape serves them. Before reading, gaps older than the reorder time become final (as they would at the
next record), so loss shows within reorder time + one turn even when no more traffic comes.

Series: per SA (labels fixed at its first sight: src, dst, spi, encap, interface), its info series
(what pairing learns later), and per tunnel keyed by the two peers in canonical order, the UDP
ports and the direction, so rekeys and parallel SAs between the same peers add up. `max_series`
caps what is served: a label set that does not fit is not served for as long as it lives and its
series are counted in `espmeter_series_suppressed_total`.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.outputs import OutputError
from agent.records import tunnel_name
from agent.sa import address_text
from exporter.records import ENCAP_UDP, BiflowRecord, LossEvent, MeteringStats, SARecord

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from agent.meter import Meter
    from exporter.transport import CollectorCounters


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
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
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
    text: str = ""  # its labels as written in the exposition, rendered once
    seen: float = 0.0  # last time it was live or had a record (per-SA grace period)
    info: tuple[str, str, str] = ("", "", "")  # tunnel id, peer SPI, tunnel name (per SA)


SALabels = tuple[str, str, str, str, str]
TunnelKey = tuple[str, str, str]  # peer_a, peer_b, ports
Labels = tuple[SALabels, TunnelKey, str]  # per SA, its tunnel, the direction in the tunnel


def _labels(src: bytes, dst: bytes, spi: int, udp: bool, sport: int | None, dport: int | None,
            interface: str) -> Labels:
    """An SA's labels from its packed addresses (of one family: bytes order as the addresses do)."""
    s, d = address_text(src), address_text(dst)
    sa = (s, d, f"0x{spi:08x}", "udp" if udp else "esp", interface)
    forward = src <= dst
    a, b = (s, d) if forward else (d, s)
    pa, pb = (sport, dport) if forward else (dport, sport)
    ports = f"{pa}/{pb}" if udp else ""
    return sa, (a, b, ports), "a_to_b" if forward else "b_to_a"


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
        self.text = ""
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
            text = self.build()
            with self.cond:
                self.text = text
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
    def scrape(self) -> str:
        """Ask the daemon's thread for fresh figures and return them (the previous ones after WAIT_S)."""
        with self.cond:
            want = self.built + 1
            self.wanted = True
            self.cond.wait_for(lambda: self.built >= want, WAIT_S)
            return self.text

    # -- building the figures (daemon thread) ------------------------------------------------------
    def build(self) -> str:
        """The exposition of this moment: record sums plus the live SAs' pending deltas."""
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
                labels = self.cache[sa.key] = _labels(*sa.addresses, sa.spi, sa.udp, sport, dport,
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

        out: list[str] = []
        zero = (0,) * len(COUNTERS)
        kinds = [("tunnel", [(k, s) for k, s in self.tunnel.items()])]
        if per_sa:
            kinds.insert(0, ("sa", list(self.sa.items())))
        for kind, items in kinds:
            rows = [(s.text, s.totals, pending.get(k, zero)) for k, s in items]
            for i, (c, text) in enumerate(COUNTERS.items()):
                _family(out, f"espmeter_{kind}_{c}_total", "counter", f"{kind.upper()}: {text}",
                        ((lbl, t[i] + p[i]) for lbl, t, p in rows))
            _family(out, f"espmeter_{kind}_{LOSS_EVENTS}_total", "counter",
                    f"{kind.upper()}: loss events (maximal runs of consecutive lost numbers)",
                    ((s.text, s.events) for _, s in items))
        _family(out, "espmeter_tunnel_last_loss_event_timestamp_seconds", "gauge",
                "TUNNEL: when the latest loss event ended (epoch s)",
                ((s.text, s.last_event) for s in self.tunnel.values() if s.last_event is not None))
        _family(out, "espmeter_tunnel_info", "gauge", "TUNNEL: name",
                ((_render(TUNNEL_INFO_LABELS, (*t, self.tunnel_names.get(t, ""))), 1) for t in sorted(self.tunnels)))
        if per_sa:
            infos = sorted({(k[0], k[1], k[2], *sa_info.get(k, s.info)) for k, s in self.sa.items()})
            _family(out, "espmeter_sa_info", "gauge", "SA: tunnel id, partner SPI and name",
                    ((_render(SA_INFO_LABELS, v), 1) for v in infos))
        self._health(out, health, active)
        return "".join(out)

    def _health(self, out: list[str], h: Health, active: int) -> None:
        interfaces = sorted(h.interfaces.items())
        collectors = sorted(h.collectors.items())
        _family(out, "espmeter_capture_frames_total", "counter", "frames captured",
                ((_render(("interface",), (n,)), c.frames) for n, c in interfaces))
        _family(out, "espmeter_capture_dropped_total", "counter",
                "frames dropped by the kernel before capture (not tunnel loss)",
                ((_render(("interface",), (n,)), c.dropped) for n, c in interfaces))
        _family(out, "espmeter_export_records_total", "counter", "IPFIX records sent",
                ((_render(("collector",), (u,)), c.records) for u, c in collectors))
        _family(out, "espmeter_export_failures_total", "counter", "IPFIX sends that failed",
                ((_render(("collector",), (u,)), c.send_errors) for u, c in collectors))
        _family(out, "espmeter_sas", "gauge", "SAs active now", [("", active)])
        _family(out, "espmeter_series_suppressed_total", "counter", "series not served: over max_series",
                [("", self.suppressed)])
        _family(out, "espmeter_build_info", "gauge", "espmeter version", [(_render(("version",), (_version(),)), 1)])

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
                    series = self.sa[sa_labels] = _Series(text=_render(SA_LABELS, sa_labels), seen=now)
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
                series = self.tunnel[key] = _Series(text=_render(TUNNEL_LABELS, (*tunnel, direction)))
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
    from importlib.metadata import PackageNotFoundError, version  # as the HTTP server: only when it runs

    try:
        return version("espmeter")
    except PackageNotFoundError:
        return "unknown"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _render(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return "{" + ",".join(f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=True)) + "}"


def _family(out: list[str], name: str, kind: str, help_: str, rows: Iterable[tuple[str, float]]) -> None:
    """One metric in the text exposition format (version 0.0.4)."""
    out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n")
    out.extend(f"{name}{labels} {value}\n" for labels, value in rows)


def _bind(listen: str, output: MetricsOutput) -> WSGIServer:
    """The HTTP server, bound now (before privileges are dropped), served from the first tick.

    The exposition is written here rather than through prometheus-client's metric objects: at
    50 000 series those cost seconds of the daemon's thread per scrape, the text a tenth of that."""
    from socketserver import ThreadingMixIn  # http.server, email, ssl: ~9 MB RSS, only where metrics are on
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    host, port = split_listen(listen)

    class Server(ThreadingMixIn, WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"espmeter serves /metrics\n"]
        body = output.scrape().encode()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body]

    return make_server(host, port, app, Server, handler_class=QuietHandler)
