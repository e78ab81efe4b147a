"""espmeter's information model: the IEs of templates/espmeter.iespec as python-ipfix elements.

The IEs are built as unregistered `ipfix.ie.InformationElement` objects, so two exporters with
different PENs can live in one process (python-ipfix's own registry is a module global keyed by
name). The IANA IEs are spelled out in full in the spec, so python-ipfix's IANA list (which stops
at IE 433) is not needed for encoding.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace

from ipfix import ie as ipfix_ie
from ipfix import types as ipfix_types

import templates

DOC_PEN = 32473  # RFC 5612 documentation PEN, the placeholder used in espmeter.iespec
REVERSE_PEN = 29305  # RFC 5103
REVERSE_BIT = 0x4000  # RFC 5103 6.2: reverse of an enterprise IE
# PENs whose low 16 bits nfdump 1.7 hard-codes; it keeps only the low 16 bits of a PEN.
NFDUMP_CLASHING_LOW16 = {
    0: "IANA/IETF, no enterprise",
    9: "Cisco",
    637: "Nokia/Alcatel-Lucent",
    6871: "CERT",
    29305: "the RFC 5103 reverse-direction PEN",
}

# RFC 5610 / IANA "IPFIX Information Element Semantics" and "Units" registries
SEMANTICS = {
    "default": 0, "quantity": 1, "totalCounter": 2, "deltaCounter": 3, "identifier": 4,
    "flags": 5, "list": 6, "snmpCounter": 7, "snmpGauge": 8,
}
UNITS = {
    "none": 0, "bits": 1, "octets": 2, "packets": 3, "flows": 4, "seconds": 5, "milliseconds": 6,
    "microseconds": 7, "nanoseconds": 8, "4-octet words": 9, "messages": 10, "hops": 11,
    "entries": 12, "frames": 13,
}


def check_pen(pen: int) -> int:
    """The one PEN validator (configuration, `templates --pen`, `collect --pen`): range and nfdump clashes."""
    if not 0 < pen <= 0xFFFFFFFF:
        raise ValueError(f"PEN {pen} is out of range: it must be 1..4294967295")
    low = pen & 0xFFFF
    if low in NFDUMP_CLASHING_LOW16:
        raise ValueError(
            f"PEN {pen} is not allowed: nfdump 1.7 truncates PENs to 16 bits and would read it as "
            f"{low} ({NFDUMP_CLASHING_LOW16[low]}); choose a PEN whose low 16 bits are not "
            f"{', '.join(map(str, NFDUMP_CLASHING_LOW16))}"
        )
    return pen


@dataclass(frozen=True, slots=True)
class ElementDef:
    """One IE with the RFC 5610 metadata the type records and dictionaries need."""

    name: str
    pen: int
    id: int
    type_name: str
    length: int
    semantics: str = "default"
    units: str = "none"
    range_begin: int = 0
    range_end: int = 0
    description: str = ""
    reverse: bool = False

    @property
    def enterprise(self) -> bool:
        return self.pen != 0

    @property
    def type_num(self) -> int:
        return ipfix_types.for_name(self.type_name).num

    @property
    def varlen(self) -> bool:
        return self.length == ipfix_types.VARLEN

    def spec(self) -> str:
        """python-ipfix IESpec (`ipfix.ie.for_spec`/`use_specfile` syntax)."""
        return f"{self.name}({self.pen}/{self.id})<{self.type_name}>[{self.length}]"

    def element(self) -> ipfix_ie.InformationElement:
        return ipfix_ie.InformationElement(
            self.name, self.pen, self.id, ipfix_types.for_name(self.type_name), self.length
        )

    def reversed(self) -> ElementDef:
        """RFC 5103 reverse: PEN 29305 for IANA IEs, ID | 0x4000 in our PEN for ours."""
        if self.enterprise:
            pen, num = self.pen, self.id | REVERSE_BIT
        else:
            pen, num = REVERSE_PEN, self.id
        return replace(
            self, name="reverse" + self.name[0].upper() + self.name[1:], pen=pen, id=num,
            description=f"Reverse direction (RFC 5103) of {self.name}: {self.description}", reverse=True,
        )


def parse_iespec(text: str, pen: int = DOC_PEN) -> list[ElementDef]:
    """Parse espmeter.iespec; enterprise IEs get `pen` in place of the documentation PEN."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        spec, _, rest = line.partition(" ")
        name, spec_pen, num, type_name, length = ipfix_ie.parse_spec(spec)
        if not (name and num and type_name and length):
            raise ValueError(f"espmeter.iespec line {lineno}: incomplete IESpec {spec!r}")
        attrs = dict(tok.split("=", 1) for tok in shlex.split(rest))
        begin, _, end = attrs.get("range", "0-0").partition("-")
        out.append(ElementDef(
            name=name, pen=pen if spec_pen else 0, id=num, type_name=type_name, length=length,
            semantics=attrs.get("semantics", "default"), units=attrs.get("units", "none"),
            range_begin=int(begin), range_end=int(end), description=attrs.get("description", ""),
        ))
    return out


class InfoModel:
    """Name and (pen, id) lookup over espmeter's IEs and their RFC 5103 reverses."""

    def __init__(self, defs: list[ElementDef]):
        self.defs: dict[str, ElementDef] = {}
        for d in defs:
            self._add(d)
            self._add(d.reversed())
        self._elements = {name: d.element() for name, d in self.defs.items()}

    def _add(self, d: ElementDef) -> None:
        if d.name in self.defs:
            raise ValueError(f"IE {d.name} defined twice")
        self.defs[d.name] = d

    @classmethod
    def load(cls, pen: int = DOC_PEN) -> InfoModel:
        check_pen(pen)
        return cls(parse_iespec(templates.read_text(templates.IESPEC), pen))

    def element(self, name: str) -> ipfix_ie.InformationElement:
        try:
            return self._elements[name]
        except KeyError:
            raise ValueError(f"unknown IE {name!r} (not in templates/espmeter.iespec)") from None

    def by_number(self) -> dict[tuple[int, int], ipfix_ie.InformationElement]:
        return {(e.pen, e.num): e for e in self._elements.values()}

    def enterprise(self, reverse: bool = False) -> list[ElementDef]:
        """Forward enterprise IEs in ID order, or their reverse forms."""
        fwd = sorted((d for d in self.defs.values() if d.enterprise and not d.reverse), key=lambda d: d.id)
        return [d.reversed() for d in fwd] if reverse else fwd
