"""`espmeter run`: the router agent's main loop.

One select() loop, ExaBGP style: capture handles, the netlink monitor and the signal wake-up pipe
are its inputs; timers (SA expiry, exports, stats, watchdog) run on every turn, including when no
packet comes. Signal handlers only set flags (agent.signals); the loop acts on them here.
"""

from __future__ import annotations

import gc
import logging
import select
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.capture import Batch
from agent.decode import ESP
from agent.heap import HeapTrim, keep_batches_in_heap
from agent.live import LinkMonitor, LiveCapture
from agent.logsetup import flush_suppressed, limited, setup_logging
from agent.losslog import LossEventLog
from agent.meter import Meter
from agent.metrics import CaptureCounters, Health, MetricsOutput
from agent.outputs import Outputs, OutputSpec
from agent.privileges import drop_privileges
from agent.report import sa_json
from agent.runtime import Check, Runtime, can_check
from agent.sdnotify import SdNotify, watchdog_interval
from agent.signals import Signals
from agent.status import Totals, capture_status, stats_line
from exporter import Exporter
from exporter.records import MeteringStats

if TYPE_CHECKING:
    from agent.strongswan import Vici

log = logging.getLogger("espmeter")

TICK_S = 0.5  # timer resolution of the loop; also the longest select() sleep
RETRY_S = 5.0  # retry opening interfaces that are missing or failed, besides link events
COALESCE_FRAMES = 32768  # after a wake-up with fewer frames than this, wait COALESCE_S before reading again
COALESCE_S = 0.05
RING_SLACK_S = 0.01  # a frame stamped just before a wake-up may reach the ring just after it


@dataclass(slots=True)
class RunOptions:
    config: str | None
    interfaces: list[str] | None
    collectors: list[str] | None


class Agent:
    def __init__(self, options: RunOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        self.rt = self._load()
        setup_logging(self.rt.log.level, self.rt.log.format)
        self.notify = SdNotify()
        self.signals = Signals()
        self.capture = LiveCapture(list(self.rt.interfaces), self.rt.capture)
        self.links = LinkMonitor()
        self.outputs = Outputs()
        self.meter = Meter(self.rt.meter, self.outputs, local_addrs=self.capture.local_addresses())
        self.outputs.configure(self._outputs(self.rt))
        self.last_drops = 0
        self.heap = HeapTrim(COALESCE_FRAMES)
        keep_batches_in_heap()
        self.totals = Totals()  # at the last statistics line
        self.next_stats = self.clock() + self.rt.export.stats_interval_s
        self.status = ""  # the STATUS= last sent
        self.vici: Vici | None = None
        self.check: Check | None = None  # a SIGHUP's configuration check under way

    # -- configuration -------------------------------------------------------------------------
    def _load(self, check: Check | None = None) -> Runtime:
        o = self.options
        rt, warnings = (check or Check(o.config, o.interfaces, o.collectors)).result()
        for line in warnings:
            log.warning("%s", line)
        if not rt.export.collectors:
            log.warning("no collector configured: metering only (SIGUSR1 logs the SA table)")
        return rt

    def _outputs(self, rt: Runtime) -> list[OutputSpec]:
        """The outputs `rt` asks for; each is built only when it starts (or its settings change)."""
        specs = []
        if rt.export.collectors:
            specs.append(OutputSpec("ipfix", rt.export, lambda: Exporter(rt.export)))
        if rt.metrics is not None:
            metrics = rt.metrics
            specs.append(OutputSpec("metrics", metrics, lambda: MetricsOutput(metrics, self.meter, self._health)))
        log_min = rt.loss_log_min
        if log_min:
            specs.append(OutputSpec("loss-log", log_min, lambda: LossEventLog(log_min)))
        return specs

    def _health(self) -> Health:
        interfaces = {name: CaptureCounters(ic.frames, ic.dropped) for name, ic in self.capture.interfaces.items()}
        return Health(interfaces, self.outputs.counters)

    def reload(self) -> None:
        """SIGHUP: the configuration is checked in a child while the loop goes on (`reloaded` applies it)."""
        self.notify.reloading()
        if self.check is not None:  # the file may have changed since that child read it
            self.check.cancel()
            self.check = None
        o = self.options
        try:
            self.check = Check(o.config, o.interfaces, o.collectors)
        except Exception as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            self.notify.ready(self.status)

    def reloaded(self) -> None:
        """The check answered: new settings; SA state is kept, templates are re-sent, changed parts reopened."""
        check, self.check = self.check, None
        try:
            new = self._load(check)
        except Exception as e:  # a bad new config keeps the running one
            log.error("reload failed, keeping the running configuration: %s", e)
            self.notify.ready(self.status)
            return
        old, self.rt = self.rt, new
        self._apply(old, new)
        log.info("configuration reloaded")
        self.notify.ready(self.status)

    def _apply(self, old: Runtime, new: Runtime) -> None:
        """Each part of `Runtime` to the component that owns it: rebuilt or reconfigured if it changed."""
        reopen = (new.interfaces, new.capture) != (old.interfaces, old.capture)
        if reopen:  # what the old rings hold is metered first, under the settings it arrived with
            self._drain()
        setup_logging(new.log.level, new.log.format)
        self.meter.configure(new.meter)
        self.meter.producer.flush()  # pending records go to the outputs they were made for
        self.outputs.configure(self._outputs(new))
        if reopen:
            drops = self.capture.poll_drops()
            self.capture.close()
            before = self.capture.interfaces
            self.capture = LiveCapture(list(new.interfaces), new.capture)
            self.capture.drops = drops  # totals since start: they must not go back to zero
            for name, ic in self.capture.interfaces.items():
                if name in before:
                    ic.frames, ic.dropped = before[name].frames, before[name].dropped
        if new.vici != old.vici:
            self._start_vici()

    def _start_vici(self) -> None:
        """strongSwan on this box (config `strongswan.vici`): its names and pairs win over the heuristic."""
        if self.vici is not None:
            self.vici.close()
            self.vici = None
        uri = self.rt.vici
        if uri is not None:
            from agent.strongswan import Vici  # loaded only on a gateway that asks for it

            self.vici = Vici(uri)
            self.vici.start(self.meter.table)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        self.signals.install()
        self._start_vici()
        if self.rt.user:
            drop_privileges(self.rt.user)
            if not can_check():
                log.warning("user %s cannot execute %s: SIGHUP cannot check a new configuration (restart to apply"
                            " one)", self.rt.user, sys.executable)
        self.status = capture_status(self.capture.states())
        self.notify.ready(self.status)
        log.info("espmeter running: %d interface(s), %d collector(s)",
                 len(self.rt.interfaces), len(self.rt.export.collectors))
        # What start-up made (modules, settings, interfaces) lives as long as the process: frozen, the
        # cyclic collector's full passes walk only what metering makes (live bench, 2000 SAs: the
        # collector was 5 % of the agent's CPU, scanning the imports' objects again and again). The
        # start-up parts a reload replaces (exporter, metrics output, the capture's IPRoute) are closed,
        # but their reference cycles are never collected: about 190 KiB once, at the first such reload
        gc.collect()
        gc.freeze()
        watchdog = watchdog_interval()
        next_watchdog = next_tick = next_retry = self.clock()
        meter = self.meter
        tick_frames = 0  # read since the last tick
        while True:
            fds = [*self.capture.fds(), self.signals.fileno(), self.links.fileno()]
            if self.vici is not None:
                fds.append(self.vici.fileno())
            if self.check is not None:
                fds.append(self.check.fileno())
            pending = self.capture.pending()  # frames read ahead of the meter: no wait, and metered first
            try:
                readable, _, _ = select.select(fds, [], [], 0 if pending else TICK_S)
            except InterruptedError:
                readable = []
            readable = [*pending, *(fd for fd in readable if fd not in pending)]
            woke = self.clock()
            if self.vici is not None:
                self.vici.apply()  # before the packets: SAs new in this batch find charon's latest word
            frames = 0
            backlog = False
            check_fd = self.check.fileno() if self.check is not None else -1
            answered = check_fd in readable
            for fd in readable:
                if fd == self.links.fileno():
                    self._links()
                elif fd not in (self.signals.fileno(), check_fd):
                    frames += self._feed(self.capture.read(fd))
                    backlog |= self.capture.backlog
            tick_frames += frames
            if 0 < frames < COALESCE_FRAMES:
                time.sleep(COALESCE_S)  # let the ring fill: fewer, larger batches cost less per frame
            events = self.signals.take()
            if "stop" in events:
                return self.shutdown()
            if answered:  # after the frames: reloaded() may close the rings they came from
                self.reloaded()
            if "reload" in events:
                self.reload()
            if "dump" in events:
                self.dump()
            now = self.clock()
            if now >= next_tick:
                # The meter's timers run on capture time: up to the wake-up, whose frames are all read
                # (later ones are still in the ring), or only up to the last frame read while a ring
                # holds a backlog; wall-clock time would make a datagram still in the ring late or lost.
                self._tick(now, meter.now if backlog else woke - RING_SLACK_S)
                self.heap.interval(tick_frames)
                tick_frames = 0
                next_tick = now + TICK_S
            if now >= next_retry:
                self.capture.open_missing()
                next_retry = now + RETRY_S
            if watchdog and now >= next_watchdog:
                self.notify.watchdog()
                next_watchdog = now + watchdog

    def _tick(self, now: float, capture_now: float) -> None:
        meter = self.meter
        meter.now = max(meter.now, min(now, capture_now))
        drops = self.capture.poll_drops()
        if drops > self.last_drops:
            log.warning("capture dropped %d packets in the kernel (%d in total): not tunnel loss",
                        drops - self.last_drops, drops, extra=limited("capture drops"))
            self.last_drops = drops
        meter.capture_drops = drops
        meter.tick(meter.now)
        self.outputs.export_stats(self._stats())
        self.outputs.tick()
        status = capture_status(self.capture.states())
        if status != self.status:
            self.notify.status(status)
            self.status = status
        if now >= self.next_stats:
            self._log_stats(now)
        flush_suppressed()

    def _log_stats(self, now: float) -> None:
        """The `stats_interval_s` line: this interval's frames, ESP, drops and records, the SAs, the captures."""
        interval = self.rt.export.stats_interval_s
        counters = self.outputs.counters.values()
        totals = Totals(self.meter.frames, self.meter.classes[ESP], self.meter.capture_drops,
                        sum(c.records for c in counters), sum(c.not_sent_records for c in counters))
        log.info("%s", stats_line(self.totals, totals, interval, len(self.meter.table.sas), self.capture.states()))
        self.totals = totals
        self.next_stats = max(self.next_stats + interval, now)

    def _stats(self) -> MeteringStats:
        return self.meter.stats(self.rt.export.observation_domain)

    def _links(self) -> None:
        up, gone, addr_changed = self.links.events()
        for name in up | gone:
            self._feed(self.capture.link_changed(name))  # what a closing capture's rings held, first
        if addr_changed:
            self.meter.local_addrs = self.capture.local_addresses()

    def dump(self) -> None:
        """SIGUSR1: the SA table in the log, one line per SA."""
        names = self.meter.producer.names
        for sa in list(self.meter.table.sas.values()):
            j = sa_json(sa, names)
            log.info("SA %s -> %s spi 0x%08x packets %d lost %d/%d reordered %d dup %d late %d tunnel %s%s%s",
                     j["src"], j["dst"], j["spi"], j["packets"], j["lost"], j["expected"], j["reordered"],
                     j["duplicates"], j["late"], j["tunnel"], f" {j['tunnel_name']}" if j["tunnel_name"] else "",
                     " (sent here)" if j["local"] else "")

    def _feed(self, batches: Iterable[Batch]) -> int:
        """Meter `batches`; returns their frames. No batch outlives the call (each can be megabytes)."""
        frames = 0
        for batch in batches:
            self.meter.feed(batch.buf, batch.meta, batch.linktype, batch.ifindex, batch.direction)
            frames += len(batch.meta) // 16
        return frames

    def _drain(self) -> None:
        """Meter what the rings still hold before they close (shutdown, a reload that reopens them)."""
        self._feed(self.capture.remaining())

    def shutdown(self) -> int:
        """SIGTERM/SIGINT: every open SA is exported with forced end, then the exporter is flushed."""
        self.notify.stopping()
        if self.check is not None:
            self.check.cancel()
        log.info("stopping: exporting every open record")
        self._drain()
        now = self.clock()
        self.meter.capture_drops = self.capture.poll_drops()
        self.meter.finish(now)
        self.outputs.export_stats(self._stats())
        self.outputs.close()  # IPFIX: sends the final statistics, flushes, waits for TCP delivery
        self.capture.close()
        self.links.close()
        if self.vici is not None:
            self.vici.close()
        flush_suppressed(final=True)
        return 0


def run(options: RunOptions) -> int:
    return Agent(options).run()
