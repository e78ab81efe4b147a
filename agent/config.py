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
import re
import sys
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TextIO

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.infomodel import DOC_PEN, check_pen
from exporter.message import MIN_MTU
from exporter.transport import parse_collector

_SECTIONS = frozenset({"interfaces", "collectors", "tunnel_names", "log"})
_IFNAME_RE = re.compile(r"^[^\s/]{1,15}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$", re.IGNORECASE)


class ConfigError(Exception):
    """A configuration problem, already formatted as one ``FILE:LINE: KEY: message`` line."""


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


CollectorURL = Annotated[str, AfterValidator(check_collector_url)]
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


def _interface_item(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class Settings(BaseModel):
    """All espmeter settings with defaults; an empty file yields exactly these."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # capture
    interfaces: list[InterfaceConfig] = Field(
        default_factory=list, description="Interfaces to capture on: names or {name, direction}."
    )
    filter: str | None = Field(None, description="Extra BPF expression, and-ed with the ESP filter.")
    snaplen: int = Field(256, ge=96, le=65535, description="Bytes captured per packet.")
    buffer_size_mb: int = Field(
        8, ge=1, le=4096,
        description="Kernel capture ring per interface and direction, MiB: at least peak packets/s x 0.1 s"
        " (the longest wake-up interval) x (snaplen + 80) bytes per slot.",
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
    vectorized: bool = Field(
        True, description="Meter in-order runs with numpy per batch (faster; off saves ~20 MB of RSS)."
    )
    tunnel_names: dict[PeerIP, str] = Field(
        default_factory=dict, description="Peer IP address -> tunnel name, for readable output."
    )
    # daemon
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")
    user: str | None = Field(
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

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not _USER_RE.match(value):
            raise ValueError(f"{value!r} is not a valid user name")
        return value

    def effective_yaml(self) -> str:
        """The configuration as the agent will use it, defaults filled in."""
        body = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
        return "# espmeter effective configuration\n" + body


# --------------------------------------------------------------------------- loading


def load_config(path: str | None) -> Settings:
    """Read and validate PATH; None means built-in defaults with no file."""
    if path is None:
        return Settings()
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_config(text, path)


def parse_config(text: str, source: str) -> Settings:
    """Validate YAML TEXT; SOURCE names it in error messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(exc, source)) from None
    if root is None:
        data, root = {}, None
    elif not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{source}:{root.start_mark.line + 1}: top level must be a mapping of keys")
    else:
        _check_duplicates(root, source, ())
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, root, source)) from None


def merge_cli(settings: Settings, interfaces: list[str] | None, collectors: list[str] | None) -> Settings:
    """Command-line flags replace the file's lists (not append), as operators expect."""
    data = settings.model_dump(mode="json")
    if interfaces is not None:
        data["interfaces"] = list(interfaces)
    if collectors is not None:
        data["collectors"] = list(collectors)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, None, "command line")) from None


def check_config(path: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``espmeter check-config FILE``: print the effective config (0) or the one error line (2)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        settings = load_config(path)
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


def _check_duplicates(node: yaml.Node, source: str, path: tuple[Any, ...]) -> None:
    """PyYAML silently keeps the last duplicate key; an operator almost never means that."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                where = _format_path((*path, key.value))
                raise ConfigError(f"{source}:{key.start_mark.line + 1}: {where}: duplicate key")
            seen.add(key.value)
            _check_duplicates(value, source, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(item, source, (*path, index))


def _first_error(exc: ValidationError, root: yaml.Node | None, source: str) -> str:
    """One line for the earliest problem in the file; further problems are only counted."""
    located = [(_locate(root, _clean_loc(err["loc"])), err) for err in exc.errors()]
    located.sort(key=lambda item: item[0])
    line, err = located[0]
    loc = _clean_loc(err["loc"])
    where = f"{source}:{line}" if root is not None else source
    message = f"{where}: {_format_path(loc) or '(top level)'}: {_describe(err, loc)}"
    if len(located) > 1:
        message += f" (and {len(located) - 1} more problem{'s' if len(located) > 2 else ''})"
    return message


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
        for key, value in node.value:
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
