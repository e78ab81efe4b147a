"""`read --json` is written entry by entry (agent.report.write_json): its text must be, byte for byte,
`json.dumps(document, separators=(",", ":"))` and a newline, on every ground-truth capture, with loss
events, bins and tunnel names; the table from entries made as it reads them must be the document's;
and metering without a sink (no records built) must not change either."""

from __future__ import annotations

import io
import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.drill import Observer
from agent.meter import MeterSettings
from agent.offline import OfflineResult, meter_file
from agent.report import (
    ANY,
    BOOL,
    FLOAT,
    INT,
    INT_OR_NULL,
    INTS,
    SA_FIELDS,
    STR,
    STR_OR_NULL,
    TUNNEL_FIELDS,
    _json_text,
    write_table,
)
from agent.sa import address_text
from tests.gt.scenarios import registry
from tests.test_record_stream import Sink

SCENARIOS = registry()
# odd names on the scenarios' addresses: quotes, a backslash, a control character, non-ASCII
NAMES = {"10.0.1.1": 'paris "hq" \\ é', "2001:db8:4::1": "berlin\tost", "10.0.0.1": "ü", "192.0.2.1": "b"}


def _read(cap: str, settings: MeterSettings, events: bool, bins: bool) -> OfflineResult:
    return meter_file(cap, settings, progress=False, events=events, observer=Observer(1_000_000) if bins else None)


def _dumps(doc: dict) -> str:
    return json.dumps(doc, separators=(",", ":")) + "\n"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_streamed_document_is_the_dumped_one(name: str, tmp_path: Path) -> None:
    cap = str(tmp_path / "cap")
    SCENARIOS[name]().write(cap)
    for settings, events, bins in ((MeterSettings(), False, False), (MeterSettings(tunnel_names=NAMES), True, False),
                                   (MeterSettings(fast_path=False), True, True)):
        out = io.StringIO()
        _read(cap, settings, events, bins).write_json(out)
        # a second meter: bins are counted as they are made (drill.Observer.sa_bins)
        assert out.getvalue() == _dumps(_read(cap, settings, events, bins).doc)
        assert json.loads(out.getvalue())["sas"]  # every scenario has SAs: the entries were written
        if not bins:  # the table from entries made as it reads them (bins need the document)
            tables = [io.StringIO(), io.StringIO()]
            write_table(_read(cap, settings, events, bins).view(), tables[0])
            write_table(_read(cap, settings, events, bins).doc, tables[1])
            assert tables[0].getvalue() == tables[1].getvalue() != ""
    with_sink = meter_file(cap, MeterSettings(tunnel_names=NAMES), Sink(), progress=False, events=True)
    assert _dumps(with_sink.doc) == _dumps(meter_file(cap, MeterSettings(tunnel_names=NAMES), progress=False,
                                                      events=True).doc)


_VALUES = {INT: st.integers(0, 2**64), INT_OR_NULL: st.none() | st.integers(0, 2**64), STR: st.text(),
           STR_OR_NULL: st.none() | st.text(), BOOL: st.booleans(),
           FLOAT: st.floats(allow_nan=False, allow_infinity=False), INTS: st.lists(st.integers()),
           ANY: st.none() | st.integers() | st.text()}


@pytest.mark.parametrize("fields", [SA_FIELDS, TUNNEL_FIELDS], ids=["sas", "tunnels"])
@given(data=st.data())
def test_compiled_entry_text_is_json_dumps(fields: tuple, data: st.DataObject) -> None:
    """Any value of each kind (names come from configuration and strongSwan: quotes, control characters,
    non-ASCII) is written as json.dumps writes it."""
    values = data.draw(st.tuples(*[_VALUES[kind] for _, kind in fields]))
    doc = dict(zip([k for k, _ in fields], values, strict=True))
    assert _json_text(fields)(values) == json.dumps(doc, separators=(",", ":"))


@given(st.ip_addresses())
def test_address_text_is_ipaddress_text(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert address_text(addr.packed) == str(addr)


@pytest.mark.parametrize("text", ["::", "::1", "::ffff:192.0.2.1", "::192.0.2.1", "64:ff9b::192.0.2.1", "1::",
                                  "1:0:0:1:0:0:0:1", "1:0:0:1:0:0:1:1", "2001:db8::", "0.0.0.0", "255.255.255.255"])
def test_address_text_where_inet_ntop_differs(text: str) -> None:
    addr = ipaddress.ip_address(text)
    assert address_text(addr.packed) == str(addr)
