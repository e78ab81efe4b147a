"""The one settings path: the validated schema (`agent.config.Settings`) → every runtime settings object
(`agent.runtime.Runtime`; `espmeter run` gets it from `main()` below in a child, agent.runtime.load).

`runtime(cfg)` is the only place that maps configuration keys to the objects the agent runs with
(the meter's frozen dataclasses, kept for speed on the packet path; the exporter's; the capture's).
`espmeter run`, its SIGHUP reload and `espmeter read --config` all go through it; `read` without a
file uses the dataclasses' defaults, which `tests/test_config.py` checks equal `runtime(Settings())`.

Adding a setting or a section (e.g. ``metrics:``):

1. agent/config.py: a field of `Settings`, or a section model (``BaseModel`` with
   ``ConfigDict(extra="forbid", strict=True, frozen=True)``, a default and a description per field,
   bounds as ``Field(ge=..., le=...)``/``Literal``/one validator) used as
   ``metrics: MetricsConfig = Field(default_factory=MetricsConfig, description=...)``; add the
   section name to ``_SECTIONS`` so an all-commented-out section means its defaults.
2. agent/runtime.py: a field of `Runtime`, and here its value in `runtime()`: a dataclass or plain values,
   never a pydantic model (the daemon does not import pydantic: agent.runtime).
3. agent/daemon.py: an output (Prometheus, ...) is one `OutputSpec(name, settings, make)` in
   `Agent._outputs(rt)` (agent.outputs restarts it on reload when its settings changed, else calls
   its `reload()`); any other part is applied in `Agent._apply(old, new)`.
4. examples/espmeter.yaml: the key with its default and a comment (a test checks every key is there).
"""

from __future__ import annotations

import pickle
import sys

from agent.capture import CaptureSettings
from agent.config import ConfigError, Settings, load_config
from agent.meter import MeterSettings
from agent.metrics import MetricsSettings
from agent.records import LossEventSettings
from agent.runtime import Answer, LogSettings, Request, Runtime
from agent.satable import TableSettings
from agent.tracker import TrackerSettings
from exporter.settings import ExportSettings


def runtime(cfg: Settings) -> Runtime:
    tracker = TrackerSettings(
        window=cfg.reorder_window,
        reorder_time=cfg.reorder_time_s,
        jump_limit=cfg.jump_limit,
        restart_limit=cfg.reorder_window,
    )
    table = TableSettings(
        tracker=tracker,
        active_timeout=float(cfg.active_timeout_s),
        idle_timeout=float(cfg.idle_timeout_s),
        max_sas=cfg.max_sas,
    )
    meter = MeterSettings(
        table=table,
        fragment_timeout=float(cfg.fragment_timeout_s),
        max_fragments=cfg.max_fragments,
        biflow=cfg.records == "biflow",
        tunnel_names=dict(cfg.tunnel_names),
        loss_events=LossEventSettings(cfg.loss_events.min_length, cfg.loss_events.per_interval),
    )
    export = ExportSettings(
        collectors=list(cfg.collectors),
        observation_domain=cfg.observation_domain,
        pen=cfg.pen,
        mtu=cfg.mtu,
        template_refresh_s=float(cfg.template_refresh_s),
        template_refresh_messages=cfg.template_refresh_messages,
        records=cfg.records,
        tcp_buffer_messages=cfg.tcp_buffer_messages,
        stats_interval_s=float(cfg.stats_interval_s),
    )
    return Runtime(
        meter=meter,
        export=export,
        capture=CaptureSettings(cfg.snaplen, cfg.buffer_size_mb, cfg.filter),
        interfaces=tuple((i.name, i.direction) for i in cfg.interfaces),
        log=LogSettings(cfg.log.level, cfg.log.format),
        user=cfg.user,
        metrics=MetricsSettings(**cfg.metrics.model_dump()) if cfg.metrics.listen else None,
        vici=cfg.strongswan.vici,
        loss_log_min=cfg.loss_events.log_min,
    )


def load_runtime(path: str | None) -> Runtime:
    """`runtime()` of a configuration file (built-in defaults when `path` is None)."""
    return runtime(load_config(path))


def main() -> None:
    """The child of agent.runtime.load: a pickled Request on stdin, the pickled Answer on stdout."""
    request: Request = pickle.load(sys.stdin.buffer)
    config, interfaces, collectors = request
    warnings: list[str] = []
    try:
        cfg = load_config(config, run=True, interfaces=interfaces, collectors=collectors, warn=warnings.append)
        answer: Answer = (runtime(cfg), None, warnings)
    except ConfigError as e:
        answer = (None, str(e), warnings)
    pickle.dump(answer, sys.stdout.buffer)
