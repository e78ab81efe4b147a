"""Record layouts from templates/records.yaml, and the template variants derived from them.

A variant is the layout restricted to the optional groups present in a record. Its template ID is
`template_base + group bit mask`: a deterministic function of the field list, so an ID is never
redefined (tshark ignores redefinitions and nfcapd keeps templates forever).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import yaml
from ipfix import template as ipfix_template

import templates

from .infomodel import InfoModel

_EPOCH = datetime(1970, 1, 1)
_UINT_MAX = {"unsigned8": 0xFF, "unsigned16": 0xFFFF, "unsigned32": 0xFFFFFFFF, "unsigned64": 2**64 - 1}


def naive_utc(ms: int) -> datetime:
    """python-ipfix wants naive UTC datetimes; timedelta keeps the milliseconds exact."""
    return _EPOCH + timedelta(milliseconds=int(ms))


@dataclass(frozen=True, slots=True)
class Field:
    ie: str
    key: str
    group: str | None


@dataclass(slots=True)
class Layout:
    """One record kind: ordered fields, optional groups and the template ID space."""

    name: str
    template_base: int
    groups: tuple[str, ...]
    fields: tuple[Field, ...]
    scope: int
    model: InfoModel
    _variants: dict[int, ipfix_template.Template] = field(default_factory=dict)

    def mask(self, present: Iterable[str]) -> int:
        m = 0
        for g in present:
            if g in self.groups:
                m |= 1 << self.groups.index(g)
        return m

    def fields_for(self, mask: int) -> list[Field]:
        return [f for f in self.fields if f.group is None or mask & (1 << self.groups.index(f.group))]

    def template(self, mask: int) -> ipfix_template.Template:
        """The template of one variant; built once and cached (templates are immutable on the wire)."""
        tmpl = self._variants.get(mask)
        if tmpl is None:
            fields = self.fields_for(mask)
            tmpl = ipfix_template.Template(self.template_base + mask)
            for f in fields:
                tmpl.append(self.model.element(f.ie))
            tmpl.scopecount = self.scope  # python-ipfix has no options-template API
            tmpl.finalize()
            self._variants[mask] = tmpl
        return tmpl

    def encode(self, values: Mapping[str, Any], present: Iterable[str]) -> tuple[ipfix_template.Template, tuple]:
        """Pick the variant for the present groups and order the values as its template."""
        mask = self.mask(present)
        tmpl = self.template(mask)
        return tmpl, tuple(_convert(e.type.name, values.get(f.key)) for f, e in
                           zip(self.fields_for(mask), tmpl.ies, strict=True))


def _convert(type_name: str, value: Any) -> Any:
    """Adapt a record value to what python-ipfix encodes; saturate integers instead of failing."""
    if type_name.startswith("dateTime"):
        return naive_utc(value or 0)
    if type_name in _UINT_MAX:
        return min(max(int(value or 0), 0), _UINT_MAX[type_name])
    if type_name == "string":
        return value or ""
    return value


def load_layouts(model: InfoModel, text: str | None = None) -> dict[str, Layout]:
    """Load records.yaml; every IE name must exist in the information model."""
    data = yaml.safe_load(text if text is not None else templates.read_text(templates.RECORDS))
    out = {}
    for name, spec in data.items():
        groups = tuple(spec.get("groups") or ())
        fields = []
        for row in spec["fields"]:
            ie, key, group = (list(row) + [None])[:3]
            if group is not None and group not in groups:
                raise ValueError(f"records.yaml {name}: group {group!r} of {ie} not in groups")
            model.element(ie)  # fail early on a typo
            fields.append(Field(ie, key, group))
        base = int(spec["template_base"])
        if base < 256 or base + (1 << len(groups)) - 1 > 65535:
            raise ValueError(f"records.yaml {name}: template IDs out of 256..65535")
        out[name] = Layout(name, base, groups, tuple(fields), int(spec.get("scope", 0)), model)
    _check_disjoint(out.values())
    return out


def _check_disjoint(layouts: Iterable[Layout]) -> None:
    spans = sorted((lay.template_base, lay.template_base + (1 << len(lay.groups)), lay.name) for lay in layouts)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise ValueError(f"records.yaml: template ID ranges of {a} and {b} overlap")
