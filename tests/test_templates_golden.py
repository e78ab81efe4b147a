"""Golden test: every template's field list and ID is pinned by tests/golden/templates.json.

Collectors keep templates by ID (nfcapd forever, tshark ignores redefinitions), so a changed field
list must get new template IDs: move the layout's template_base in templates/records.yaml, add the old
range to `retired_template_ids` of the golden file, then update the file
(`python -m tests.test_templates_golden` prints it with the current layouts).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from exporter.infomodel import DOC_PEN, InfoModel
from exporter.layouts import Layout, load_layouts

GOLDEN = Path(__file__).parent / "golden" / "templates.json"


def current_layouts() -> dict[str, dict]:
    model = InfoModel.load(DOC_PEN)
    out = {}
    for name, lay in load_layouts(model).items():
        fields = []
        for f in lay.fields:
            d = model.defs[f.ie]
            fields.append([f.ie, d.pen, d.id, d.length, f.group])
        out[name] = {"template_base": lay.template_base, "scope": lay.scope, "groups": list(lay.groups),
                     "fields": fields}
    return out


def render(doc: dict) -> str:
    """The golden file's format: JSON, one field per line."""
    lines = ["{", ' "layouts": {']
    names = list(doc["layouts"])
    for n, name in enumerate(names):
        g = doc["layouts"][name]
        lines += [f'  "{name}": {{"template_base": {g["template_base"]}, "scope": {g["scope"]}, '
                  f'"groups": {json.dumps(g["groups"])}, "fields": [']
        lines += [f"   {json.dumps(f)}" + ("," if i < len(g["fields"]) - 1 else "") for i, f in enumerate(g["fields"])]
        lines.append("  ]}" + ("," if n < len(names) - 1 else ""))
    lines += [" },", ' "retired_template_ids": [']
    retired = doc["retired_template_ids"]
    lines += [f"  {json.dumps(r, ensure_ascii=False)}" + ("," if i < len(retired) - 1 else "")
              for i, r in enumerate(retired)]
    lines += [" ]", "}"]
    return "\n".join(lines) + "\n"


def _template_record(golden: dict, mask: int) -> bytes:
    """The template record of one variant, derived from the golden field list alone."""
    groups = golden["groups"]
    fields = [f for f in golden["fields"] if f[4] is None or mask >> groups.index(f[4]) & 1]
    tid = golden["template_base"] + mask
    out = struct.pack("!HHH", tid, len(fields), golden["scope"]) if golden["scope"] \
        else struct.pack("!HH", tid, len(fields))
    for _ie, pen, num, length, _group in fields:
        out += struct.pack("!HHI", num | 0x8000, length, pen) if pen else struct.pack("!HH", num, length)
    return out


def test_layouts_match_golden():
    golden = json.loads(GOLDEN.read_text())
    assert current_layouts() == golden["layouts"], __doc__


def test_every_variant_has_the_golden_field_list_and_id():
    golden = json.loads(GOLDEN.read_text())["layouts"]
    layouts: dict[str, Layout] = load_layouts(InfoModel.load(DOC_PEN))
    count = 0
    for name, lay in layouts.items():
        for mask, variant in enumerate(lay.variants()):
            assert variant.codec.tid == golden[name]["template_base"] + mask
            assert variant.codec.template_record == _template_record(golden[name], mask), (name, mask)
            count += 1
    assert count == sum(1 << len(g["groups"]) for g in golden.values())


def test_retired_template_ids_stay_unused():
    doc = json.loads(GOLDEN.read_text())
    for first, last, why in doc["retired_template_ids"]:
        for name, g in doc["layouts"].items():
            start, end = g["template_base"], g["template_base"] + (1 << len(g["groups"])) - 1
            assert end < first or start > last, f"{name} reuses retired template IDs {first}-{last} ({why})"


if __name__ == "__main__":
    retired = json.loads(GOLDEN.read_text())["retired_template_ids"]
    print(render({"layouts": current_layouts(), "retired_template_ids": retired}), end="")
