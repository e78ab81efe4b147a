"""Precompiled record encoding: one struct.Struct per template variant.

python-ipfix encodes a record one field at a time through converter functions (about 40 µs per SA
record); a flush at concentrator scale is 100 000 records. A `TemplateCodec` is built once per
template from its field list and packs a record's fixed-length fields with a single struct call,
then its variable-length fields (RFC 7011 7: 1-octet length, or 255 and a 2-octet length).

Values come in template order as wire values: integers for unsigned and dateTimeMilliseconds
fields, `bytes` (packed) for addresses, `str` (or None) for strings. The bytes are those python-ipfix
writes for the same record (tests/test_export_codec.py compares them), with one difference:
milliseconds are written exactly, where python-ipfix goes through float seconds and writes 1 ms too
few for some values (e.g. 263117785, and many after 2038). Values a field cannot hold are adapted as
before: None is 0 (or the empty string), integers saturate to the field's range.
"""

from __future__ import annotations

import keyword
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ipfix import template as ipfix_template
from ipfix import types as ipfix_types

_UINT_MAX = {"unsigned8": 0xFF, "unsigned16": 0xFFFF, "unsigned32": 0xFFFFFFFF, "unsigned64": 2**64 - 1,
             "dateTimeMilliseconds": 2**64 - 1}
ADDRESS_TYPES = ("ipv4Address", "ipv6Address")  # given packed (bytes)
_STRING = "string"
_LEN1 = struct.Struct("!B")
_LEN3 = struct.Struct("!BH")
# a string too long for a 2-octet length: a record this long never fits a message (MTU <= 65535),
# so it is dropped and counted as oversize like any record above the MTU
_UNENCODABLE = b"\xff\xff\xff"
_COMPILED_FORMATS = frozenset(("B", "H", "L", "Q", "4s", "16s", ""))  # what exporter/_encode.c writes


def _load_compiled() -> ModuleType | None:
    """exporter/_encode.c where setup.py built it, unless ESPMETER_PURE_PYTHON is set (as for agent.compiled)."""
    if os.environ.get("ESPMETER_PURE_PYTHON"):
        return None
    try:
        from exporter import _encode
    except ImportError:  # nothing compiled here
        return None
    return _encode


# the compiled packers and selectors, or None: the Python ones (the oracle) then run, with identical bytes
compiled = _load_compiled()


def _saturate(limit: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        return min(max(int(value or 0), 0), limit)
    return convert


def _as_is(value: Any) -> Any:
    return value


def _varlen(value: Any) -> bytes:
    data = (value or "").encode()
    n = len(data)
    if n < 255:
        return _LEN1.pack(n) + data
    if n <= 0xFFFF:
        return _LEN3.pack(255, n) + data
    return _UNENCODABLE + data


class TemplateCodec:
    """Encoder of one (options) template: its template record and its data records."""

    __slots__ = ("template", "tid", "setid", "minlength", "enterprise", "template_record", "formats", "nhead",
                 "tail", "head", "_adapt")

    def __init__(self, template: ipfix_template.Template):
        self.template = template
        self.tid: int = template.tid
        self.setid: int = template.native_setid()
        self.minlength: int = template.minlength  # a record's length with empty strings
        self.enterprise: bool = any(e.pen for e in template.ies)
        buf = bytearray(6 + 8 * len(template.ies))  # header, then (id, length, PEN) per IE
        end = template.encode_template_to(buf, 0, self.setid)
        self.template_record = bytes(buf[:end])
        ies = template.ies
        # python-ipfix packs the fields before the first variable-length one together, the rest one by one
        varlen_at = next((i for i, e in enumerate(ies) if e.length == ipfix_types.VARLEN), len(ies))
        # struct format of each field ("" for variable-length ones)
        self.formats: tuple[str, ...] = tuple("" if e.length == ipfix_types.VARLEN else e.type.stel for e in ies)
        self.nhead = varlen_at
        self.tail: tuple[Callable[[Any], bytes], ...] = tuple(_tail_encoder(e) for e in ies[varlen_at:])
        self.head = struct.Struct("!" + "".join(self.formats[:varlen_at]))  # the fixed-length fields before it
        self._adapt: tuple[Callable[[Any], Any], ...] = tuple(_adapter(e) for e in ies)

    def pack(self, values: Sequence[Any]) -> bytes:
        """The data record of `values` (template order, wire values)."""
        n = self.nhead
        try:
            head = self.head.pack(*values[:n]) if self.tail else self.head.pack(*values)
        except (struct.error, TypeError):  # None, out of range, not an int: adapt, then pack
            values = [adapt(v) for adapt, v in zip(self._adapt, values, strict=True)]
            head = self.head.pack(*values[:n])
        if not self.tail:
            return head
        return head + b"".join([enc(v) for enc, v in zip(self.tail, values[n:], strict=True)])


@dataclass(frozen=True, slots=True)
class Constant:
    """A field whose value is the same in every record of an `ObjectPacker` (e.g. observationDomainId)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Derived:
    """A field whose value is `table.get(value at path, default)`: protocolIdentifier from espEncapsulation,
    without a property call per record (a third of a compiled record's time)."""

    path: str
    table: dict[Any, Any]
    default: Any


class ObjectPacker:
    """Packs records of one template straight from a record object's attributes.

    Each field is an attribute path (`src.packed`) or a `Constant`. The packer is compiled, as
    dataclasses and namedtuple compile their methods: one function that reads the attributes and
    makes one struct call for the fixed-length fields (twice as fast as operator.attrgetter and
    tuple splicing, bench/export.py). A record the struct refuses (None, out of range) goes through
    `TemplateCodec.pack`, which adapts the values. Given `compiled` (exporter/_encode.c), its Packer
    writes the record and hands those it would not write as struct does to this Python packer.
    """

    __slots__ = ("codec", "pack")

    def __init__(self, codec: TemplateCodec, fields: Sequence[str | Constant | Derived],
                 compiled: ModuleType | None = None):
        if len(fields) != len(codec.formats):
            raise ValueError(f"template {codec.tid}: {len(fields)} sources for {len(codec.formats)} fields")
        self.codec = codec
        env: dict[str, Any] = {"_head": codec.head.pack, "_slow": codec.pack, "_error": struct.error}
        args = []
        for i, f in enumerate(fields):
            if isinstance(f, Constant):
                env[f"_c{i}"] = f.value
                args.append(f"_c{i}")
            elif isinstance(f, Derived):
                env[f"_m{i}"], env[f"_d{i}"] = f.table.get, f.default
                args.append(f"_m{i}({_attribute(codec, f.path)}, _d{i})")
            else:
                args.append(_attribute(codec, f))
        fixed = args[:codec.nhead]
        parts = [f"_head({', '.join(fixed)})"]
        for i, (enc, arg) in enumerate(zip(codec.tail, args[codec.nhead:], strict=True)):
            env[f"_t{i}"] = enc
            parts.append(f"_t{i}({arg})")
        source = (f"def pack(r):\n    try:\n        return {' + '.join(parts)}\n"
                  f"    except (_error, TypeError):\n        return _slow(({', '.join(args)},))\n")
        exec(compile(source, f"<ObjectPacker {codec.tid}>", "exec"), env)  # noqa: S102 - names checked above
        self.pack: Callable[[object], bytes] = env["pack"]
        if compiled is not None and _COMPILED_FORMATS.issuperset(codec.formats):
            self.pack = compiled.Packer([_compiled_spec(f, fmt) for f, fmt in zip(fields, codec.formats, strict=True)],
                                        env["pack"]).pack


def _attribute(codec: TemplateCodec, path: str) -> str:
    if not all(part.isidentifier() and not keyword.iskeyword(part) for part in path.split(".")):
        raise ValueError(f"template {codec.tid}: {path!r} is not an attribute path")
    return f"r.{path}"


def _compiled_spec(f: str | Constant | Derived, fmt: str) -> tuple[Any, ...]:
    """A field for exporter/_encode.c's Packer: (path, constant, format, table, default)."""
    if isinstance(f, Constant):
        return None, f.value, fmt, None, None
    if isinstance(f, Derived):
        return tuple(f.path.split(".")), None, fmt, f.table, f.default
    return tuple(f.split(".")), None, fmt, None, None


def _adapter(e: Any) -> Callable[[Any], Any]:
    name = e.type.name
    if name in _UINT_MAX:
        if e.length != ipfix_types.for_name(name).length:
            raise ValueError(f"IE {e.name}: reduced-size encoding is not supported by the encoder")
        return _saturate(_UINT_MAX[name])
    if name in ADDRESS_TYPES or name == _STRING:
        return _as_is
    raise ValueError(f"IE {e.name}: type {name} is not supported by the encoder")


def _tail_encoder(e: Any) -> Callable[[Any], bytes]:
    if e.length == ipfix_types.VARLEN:
        if e.type.name != _STRING:
            raise ValueError(f"IE {e.name}: only strings may be variable-length")
        return _varlen
    st = struct.Struct("!" + e.type.stel)
    adapt = _adapter(e)

    def fixed(value: Any) -> bytes:
        try:
            return st.pack(value)
        except (struct.error, TypeError):
            return st.pack(adapt(value))
    return fixed
