"""Record layouts from templates/records.yaml, and the template variants derived from them.

A variant is the layout restricted to the optional groups present in a record. Its template ID is
`template_base + group bit mask`: a deterministic function of the field list, so an ID is never
redefined (tshark ignores redefinitions and nfcapd keeps templates forever).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from ipfix import template as ipfix_template

import templates

from .codec import TemplateCodec
from .infomodel import InfoModel


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
    _variants: dict[int, Variant] = field(default_factory=dict)

    def mask(self, present: Iterable[str]) -> int:
        m = 0
        for g in present:
            if g in self.groups:
                m |= 1 << self.groups.index(g)
        return m

    def fields_for(self, mask: int) -> list[Field]:
        return [f for f in self.fields if f.group is None or mask & (1 << self.groups.index(f.group))]

    def variant(self, mask: int) -> Variant:
        """The template variant of `mask`; built once and cached (templates are immutable on the wire)."""
        var = self._variants.get(mask)
        if var is None:
            fields = tuple(self.fields_for(mask))
            tmpl = ipfix_template.Template(self.template_base + mask)
            for f in fields:
                tmpl.append(self.model.element(f.ie))
            tmpl.scopecount = self.scope  # python-ipfix has no options-template API
            tmpl.finalize()
            var = Variant(fields, TemplateCodec(tmpl))
            self._variants[mask] = var
        return var

    def variants(self) -> list[Variant]:
        """Every variant, in template ID order."""
        return [self.variant(m) for m in range(1 << len(self.groups))]


@dataclass(frozen=True, slots=True)
class Variant:
    """A layout restricted to some optional groups: its fields and their template codec."""

    fields: tuple[Field, ...]
    codec: TemplateCodec

    def pack_mapping(self, values: Mapping[str, Any]) -> bytes:
        """Encode a record given as a mapping of value keys (missing keys are None)."""
        return self.codec.pack([values.get(f.key) for f in self.fields])


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
        out[name].variant((1 << len(groups)) - 1)  # every field: fail early on a type the codec lacks
    _check_disjoint(out.values())
    return out


def _check_disjoint(layouts: Iterable[Layout]) -> None:
    spans = sorted((lay.template_base, lay.template_base + (1 << len(lay.groups)), lay.name) for lay in layouts)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise ValueError(f"records.yaml: template ID ranges of {a} and {b} overlap")
