"""espmeter configuration: one YAML file validated into typed pydantic settings.

Every setting lives in :class:`Settings` (defaults, bounds and help text in one place) and is checked
here only: each bound has ONE validator (a ``Field`` bound, a ``Literal`` or one validator function,
e.g. ``exporter.infomodel.check_pen``); the runtime objects built from it by
``agent.settings.runtime`` trust it. How to add a setting or a section: see ``agent/settings.py``.

Errors are reported as ONE line ``FILE:LINE: KEY.PATH: what is wrong`` so an
operator can fix the file without reading a traceback; line numbers come from
the YAML node tree (``yaml.compose``) matched against pydantic's error ``loc``.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TextIO

import pcapy
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.capture import DLT_EN10MB, build_filter
from agent.metrics import split_listen
from agent.runtime import ConfigError
from exporter.infomodel import DOC_PEN, check_pen
from exporter.message import MIN_MTU
from exporter.transport import parse_collector

_SECTIONS = frozenset({"interfaces", "collectors", "tunnel_names", "log", "metrics", "strongswan", "loss_events"})
_IFNAME_RE = re.compile(r"^[^\s/]{1,15}$")
STATE_DIR = "/var/lib/espmeter"  # StateDirectory= of agent/share/espmeter.service: made by systemd at start
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$", re.IGNORECASE)


def check_collector_url(url: str) -> str:
    """The exporter's own parser is the one URL validator; the URL is kept as written."""
    parse_collector(url)
    return url


def check_peer_ip(value: str) -> str:
    """Normalise a tunnel peer address so lookups match the packet path's text form."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a valid IPv4 or IPv6 address") from None


def check_collector_target(url: str) -> str:
    """A file:// collector's directory must exist (the agent does not create directories)."""
    if url.startswith("file://"):
        directory = os.path.dirname(os.path.abspath(url[len("file://"):]))
        if not os.path.isdir(directory) and directory != STATE_DIR:
            raise ValueError(f"{url!r}: directory {directory} does not exist")
    return url


def check_filter(expr: str | None) -> str | None:
    """Compile the BPF filter as a capture does (and-ed with espmeter's, on Ethernet), so `run` never
    starts with a filter libpcap refuses."""
    if expr is not None:
        try:
            pcapy.compile(DLT_EN10MB, 65535, build_filter(expr, DLT_EN10MB), 1, 0)
        except pcapy.PcapError as exc:
            raise ValueError(f"BPF filter {expr!r} does not compile: {exc}") from None
    return expr


def check_user(name: str | None, info: ValidationInfo) -> str | None:
    """A user name; for `run`, one that exists here."""
    if name is None:
        return None
    if not _USER_RE.match(name):
        raise ValueError(f"{name!r} is not a valid user name")
    if info.context and info.context.get("run"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise ValueError(f"user {name!r} does not exist on this system") from None
    return name


def check_vici_url(url: str) -> str:
    """charon's vici socket: `unix://` and an absolute path."""
    if not url.startswith("unix:///") or len(url) == len("unix:///"):
        raise ValueError(f"{url!r} is not a vici socket URL (expected unix:///PATH, e.g. unix:///var/run/charon.vici)")
    return url


CollectorURL = Annotated[str, AfterValidator(check_collector_url), AfterValidator(check_collector_target)]
ViciURL = Annotated[str, AfterValidator(check_vici_url)]
PeerIP = Annotated[str, AfterValidator(check_peer_ip)]


class InterfaceConfig(BaseModel):
    """One capture interface; a bare string in YAML means ``{name: STRING}``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(description="Network interface to capture ESP on (e.g. eth0).")
    direction: Literal["in", "out", "both"] = Field("both", description="Capture direction: in, out or both.")

    @field_validator("name")
    @classmethod
    def _ifname(cls, value: str) -> str:
        if not _IFNAME_RE.match(value):
            raise ValueError(f"{value!r} is not a valid interface name (1-15 chars, no '/' or spaces)")
        return value


class LogConfig(BaseModel):
    """Logging output; the journal adds timestamps, so text lines carry none."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Minimum log level.")
    format: Literal["text", "json"] = Field("text", description="text (journald-friendly) or json lines.")


class MetricsConfig(BaseModel):
    """Prometheus endpoint (`espmeter top` reads it too); off unless `listen` is set."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    listen: str | None = Field(None, description="Serve metrics on ADDR:PORT (IPv6: [ADDR]:PORT); unset: off.")
    per_sa: bool = Field(True, description="Serve per-SA series besides the per-tunnel ones.")
    max_series: int = Field(50_000, ge=100, description="Most series served; the rest are counted, not served.")
    grace_s: int = Field(300, ge=0, description="An ended SA's series stay this long.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)
        return value


class StrongSwanConfig(BaseModel):
    """strongSwan on this box: CHILD_SA names and true SPI pairs from charon."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    vici: ViciURL | None = Field(
        None, description="charon's vici socket (unix:///var/run/charon.vici); unset: heuristic pairing only."
    )


class LossEventsConfig(BaseModel):
    """Loss events (runs of lost sequence numbers): IPFIX records of their own, and a log line for long ones."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    min_length: int = Field(1, ge=1, description="Shortest run of lost numbers sent as a loss-event record.")
    per_interval: int = Field(
        100, ge=0, description="Loss-event records per SA and record interval; the rest are counted as suppressed."
    )
    log_min: int = Field(100, ge=0, description="Log a loss event of at least this many numbers (0: never).")


def _interface_item(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class Settings(BaseModel):
    """All espmeter settings with defaults; an empty file yields exactly these."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # capture
    interfaces: list[InterfaceConfig] = Field(
        default_factory=list, description="Interfaces to capture on: names or {name, direction}."
    )
    filter: Annotated[str | None, AfterValidator(check_filter)] = Field(
        None, description="Extra BPF expression, and-ed with the ESP filter."
    )
    snaplen: int = Field(256, ge=96, le=65535, description="Bytes captured per packet.")
    buffer_size_mb: int = Field(
        8, ge=1, le=4096,
        description="Kernel capture ring per interface and direction, MiB: at least the direction's peak"
        " packets/s x 0.1 s (the longest wake-up interval) x (snaplen + 80) bytes per slot.",
    )
    # export
    collectors: list[CollectorURL] = Field(
        default_factory=list, description="IPFIX destinations: udp://HOST:PORT, tcp://HOST:PORT, file://PATH."
    )
    observation_domain: int = Field(1, ge=1, le=2**32 - 1, description="IPFIX observation domain id.")
    pen: Annotated[int, AfterValidator(check_pen)] = Field(
        DOC_PEN, description="Private enterprise number for espmeter's own IEs."
    )
    mtu: int = Field(1400, ge=MIN_MTU, le=65535, description="Maximum IPFIX message size, bytes.")
    template_refresh_s: int = Field(300, ge=1, description="Resend templates after this many seconds (UDP).")
    template_refresh_messages: int = Field(100, ge=1, description="Resend templates after this many messages (UDP).")
    records: Literal["sa", "biflow"] = Field("sa", description="Export one record per SA or per biflow.")
    active_timeout_s: int = Field(60, ge=1, description="Export a running SA record at least this often.")
    idle_timeout_s: int = Field(30, ge=1, description="Expire an SA with no packets for this long.")
    tcp_buffer_messages: int = Field(10000, ge=1, description="Messages kept while a TCP collector is unreachable.")
    stats_interval_s: int = Field(60, ge=1, description="Agent self-statistics interval, seconds.")
    # metering
    reorder_window: int = Field(1024, ge=32, le=65536, description="Sequence numbers tracked per SA.")
    reorder_time_s: float = Field(2.0, gt=0, description="Wait this long for a late packet before loss.")
    jump_limit: int = Field(1_000_000, ge=1, description="Sequence jump treated as SA restart, not loss.")
    max_sas: int = Field(250_000, ge=1, description="Maximum SAs tracked at once; when full, unconfirmed SAs go first.")
    fragment_timeout_s: int = Field(30, ge=1, description="Drop incomplete IP fragments after this long.")
    max_fragments: int = Field(10000, ge=0, description="Maximum IP fragments held for reassembly.")
    tunnel_names: dict[PeerIP, str] = Field(
        default_factory=dict, description="Peer IP address -> tunnel name, for readable output."
    )
    strongswan: StrongSwanConfig = Field(
        default_factory=StrongSwanConfig, description="strongSwan on this gateway (names and pairs over vici)."
    )
    loss_events: LossEventsConfig = Field(default_factory=LossEventsConfig, description="Loss events.")
    # daemon
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus endpoint.")
    user: Annotated[str | None, AfterValidator(check_user)] = Field(
        None, description="Drop to this user after opening the capture (root only); keeps CAP_NET_RAW."
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """A section whose keys are all commented out parses as null; treat it as absent."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in _SECTIONS)}
        return data

    @field_validator("interfaces", mode="before")
    @classmethod
    def _bare_interface_names(cls, value: Any) -> Any:
        return [_interface_item(item) for item in value] if isinstance(value, list) else value

    def effective_yaml(self) -> str:
        """The configuration as the agent will use it, defaults filled in."""
        body = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
        return "# espmeter effective configuration\n" + body


# --------------------------------------------------------------------------- loading


Warn = Callable[[str], None]


def load_config(path: str | None, *, run: bool = False, interfaces: list[str] | None = None,
                collectors: list[str] | None = None, warn: Warn | None = None) -> Settings:
    """The one validation of a configuration: read PATH (None: built-in defaults), put the command
    line's --interface/--collector lists in place of the file's, validate everything.

    `run`: validate for `espmeter run` (and check-config): an interface is required, `user:` must
    exist. Every problem is reported, one ``FILE:LINE: key: message`` line each, in ConfigError;
    warnings (valid but probably not meant) go to `warn`.
    """
    if path is None:
        return parse_config("", "command line", run=run, interfaces=interfaces, collectors=collectors, warn=warn)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_config(text, path, run=run, interfaces=interfaces, collectors=collectors, warn=warn)


def parse_config(text: str, source: str, *, run: bool = False, interfaces: list[str] | None = None,
                 collectors: list[str] | None = None, warn: Warn | None = None) -> Settings:
    """`load_config` of YAML TEXT; SOURCE names it in messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(exc, source)) from None
    problems: list[tuple[int, str]] = []
    if root is None:
        data, root = {}, None
    elif not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{source}:{root.start_mark.line + 1}: top level must be a mapping of keys")
    else:
        _check_duplicates(root, source, (), problems)
    cli = {key: list(value) for key, value in (("interfaces", interfaces), ("collectors", collectors))
           if value is not None}  # command-line flags replace the file's lists, as operators expect
    data = {**data, **cli}
    where = _Where(root, source, frozenset(cli))
    if run and not data.get("interfaces"):
        problems.append(where.problem(("interfaces",), "none configured (use `interfaces:` or --interface IF)"))
    settings = None
    try:
        settings = Settings.model_validate(data, context={"run": run})
    except ValidationError as exc:
        problems += [where.problem(_clean_loc(err["loc"]), _describe(err, _clean_loc(err["loc"])))
                     for err in exc.errors()]
    if problems or settings is None:
        raise ConfigError("\n".join(line for _, line in sorted(problems)))
    if run and warn is not None and settings.pen == DOC_PEN:
        warn(where.problem(("pen",), f"warning: {DOC_PEN} is the RFC 5612 documentation PEN: set your own "
                           "(IANA assigns one free: https://pen.iana.org)")[1])
    return settings


def check_config(path: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``espmeter check-config FILE``: validate FILE for `run`; print the effective config (0) or
    every problem, one line each (2). Warnings go to `err` in both cases."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        settings = load_config(path, run=True, warn=lambda line: print(line, file=err))
    except ConfigError as exc:
        print(exc, file=err)
        return 2
    out.write(settings.effective_yaml())
    return 0


# --------------------------------------------------------------------------- error mapping


def _yaml_error(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = f"{mark.line + 1}" if mark is not None else "1"
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{source}:{line}: YAML syntax error: {problem}"


def _check_duplicates(node: yaml.Node, source: str, path: tuple[Any, ...], problems: list[tuple[int, str]]) -> None:
    """PyYAML silently keeps the last duplicate key; an operator almost never means that."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                line = key.start_mark.line + 1
                problems.append((line, f"{source}:{line}: {_format_path((*path, key.value))}: duplicate key"))
            seen.add(key.value)
            _check_duplicates(value, source, (*path, key.value), problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(item, source, (*path, index), problems)


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a key path comes from: a line of the file, or the command line for keys it replaced."""

    root: yaml.Node | None
    source: str
    cli_keys: frozenset[str]

    def problem(self, loc: tuple[int | str, ...], message: str) -> tuple[int, str]:
        """(sort line, ``FILE:LINE: key: message``); command-line problems sort first."""
        if (loc and loc[0] in self.cli_keys) or self.root is None:
            line, where = 0, "command line"
        else:
            line = _locate(self.root, loc)
            where = f"{self.source}:{line}"
        return line, f"{where}: {_format_path(loc) or '(top level)'}: {message}"


def _clean_loc(loc: Sequence[int | str]) -> tuple[int | str, ...]:
    """Drop pydantic's internal steps (validator names, union tags) that are not YAML keys."""
    return tuple(p for p in loc if isinstance(p, int) or "[" not in p or p == "[key]")


def _locate(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int:
    """1-based line of the deepest YAML node on LOC's path (the key itself for key errors)."""
    if root is None:
        return 1
    node = root
    steps = list(loc)
    for index, part in enumerate(steps):
        child = _child(node, part)
        if child is None:
            break
        key_node, value_node = child
        wants_key = index + 1 < len(steps) and steps[index + 1] == "[key]"
        node = key_node if wants_key or value_node is None else value_node
        if wants_key:
            break
    return node.start_mark.line + 1


def _child(node: yaml.Node, part: int | str) -> tuple[yaml.Node, yaml.Node | None] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in reversed(node.value):  # of duplicate keys, the last one is the value used
            if key.value == str(part):
                return key, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part], None
    return None


def _format_path(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def _describe(err: Any, loc: tuple[int | str, ...]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc[:-1]))
        return f"unknown key {loc[-1]!r} (allowed: {allowed})"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"{err['input']!r} is not allowed (expected {msg.removeprefix('Input should be ')})"
    return f"{msg} (got {err['input']!r})"


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the model at LOC, so the error shows what would have been accepted."""
    model: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if _is_model(model) else None
        model = _find_model(field.annotation) if field else None
    return list(model.model_fields) if _is_model(model) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _find_model(annotation: Any) -> Any:
    if _is_model(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None
