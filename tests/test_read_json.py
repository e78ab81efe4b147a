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

from agent import report
from agent.compiled import fastpath
from agent.drill import Observer
from agent.meter import MeterSettings
from agent.offline import OfflineResult, meter_file
from agent.report import (
    _SA_TEXT,
    _TUNNEL_TEXT,
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
    sa_values,
    tunnel_values,
    write_table,
)
from agent.sa import SA, address_text
from agent.sakey import sa_key
from tests.gt.scenarios import registry
from tests.test_record_stream import Sink

SCENARIOS = registry()
# odd names on the scenarios' addresses: quotes, a backslash, a control character, non-ASCII
NAMES = {"10.0.1.1": 'paris "hq" \\ é', "2001:db8:4::1": "berlin\tost", "10.0.0.1": "ü", "192.0.2.1": "b"}


def _read(cap: str, settings: MeterSettings, events: bool, bins: bool) -> OfflineResult:
    return meter_file(cap, settings, progress=False, events=events, observer=Observer(1_000_000) if bins else None)


def _dumps(doc: dict) -> str:
    return json.dumps(doc, separators=(",", ":")) + "\n"


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_streamed_document_is_the_dumped_one(name: str, compiled: bool, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if compiled:
        assert fastpath is not None, "the extension is not built"  # CI builds it: this must not skip
    else:
        monkeypatch.setattr(report, "fastpath", None)
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
            view = _read(cap, settings, events, bins).view()
            made: list[int] = []
            get = report._Entries.__getitem__
            with monkeypatch.context() as m:  # each SA's entry is made once (at 100 000 SAs: 6.4 -> 4.6 s)
                m.setattr(report._Entries, "__getitem__",
                          lambda e, i, made=made, get=get: (made.append(i) if e.section.key == "sas" else None)
                          or get(e, i))
                write_table(view, tables[0])
            assert sorted(made) == list(range(len(view["sas"])))
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


_IDENT_LENGTHS = {(False, 4): 12, (True, 4): 16, (False, 16): 36, (True, 16): 40}
_SMALL = st.integers(0, 2**31) | st.integers(0, 2**62)  # counters and numbers are 64-bit (agent/sastate.h)
_ID = st.integers(0, 2**31) | st.integers(0, 2**63 - 1)


@st.composite
def _sa(draw: st.DrawFn, names: bool) -> SA:
    """An SA with any value each slot of its entry can hold, and odd ones (huge counters and sequence
    numbers, IPv4-embedded IPv6 addresses, a strongSwan name, a peer, times far from now)."""
    udp, n = draw(st.booleans()), draw(st.sampled_from([4, 16]))
    zeros = draw(st.booleans())  # IPv6 addresses starting with ten zero octets (::ffff:a.b.c.d, ::a.b.c.d)
    addr = st.binary(min_size=n, max_size=n).map(lambda a: bytes(10) + a[10:] if n == 16 and zeros else a)
    ident = draw(addr) + draw(addr) + (draw(st.binary(min_size=4, max_size=4)) if udp else b"")
    ident += draw(st.integers(1, 2**32 - 1)).to_bytes(4, "big")
    assert len(ident) == _IDENT_LENGTHS[udp, n]
    obs = draw(st.none() | st.tuples(st.integers(0, 2**40), st.none() | st.integers(0, 4095),
                                     st.none() | st.integers(0, 4095)))
    capture_time = st.builds(lambda sec, usec: sec + usec * 1e-6, st.integers(0, 2**34), st.integers(0, 999_999))
    time = st.floats(allow_nan=False, allow_infinity=False) | st.floats(1e9, 2e9) | capture_time
    sa = SA(sa_key(obs, ident), udp, draw(time), draw(st.none() | st.sampled_from(["in", "out"])),
            draw(_SMALL))
    sa.last_seen = draw(time)
    for slot in ("packets", "octets", "datagrams", "lost", "reordered", "max_extent", "duplicates", "late",
                 "implausible", "incomplete"):
        setattr(sa, slot, draw(_SMALL))
    if draw(st.booleans()):
        sa.first = draw(_SMALL)
        sa.last = sa.first + draw(_SMALL)
    sa.local = draw(st.booleans())
    sa.tunnel_id = draw(st.none() | _ID)
    sa.name = draw(st.none() | st.text()) if names else None
    if draw(st.booleans()):
        sa.peer = SA(sa_key(obs, ident[::-1]), udp, 0.0, None)
    return sa


@given(data=st.data())
def test_compiled_sa_entries_are_the_python_ones(data: st.DataObject) -> None:
    """agent/_fastpath.c's sa_entries writes what the Python writer (the oracle) writes, for any SA;
    the SAs it leaves to the Python writer are written by it in their place."""
    assert fastpath is not None, "the extension is not built"
    names = data.draw(st.sampled_from([{}, NAMES]))
    interfaces = data.draw(st.none() | st.just({}) | st.dictionaries(st.integers(0, 8), st.text() | st.integers()))
    sas = data.draw(st.lists(_sa(bool(names) or data.draw(st.booleans())), max_size=4))

    def slow(sa: SA) -> str:
        return _SA_TEXT(sa_values(sa, names, interfaces))

    assert fastpath.sa_entries(sas, names, interfaces, slow) == ",".join(map(slow, sas))


@given(data=st.data())
def test_compiled_tunnel_entries_are_the_python_ones(data: st.DataObject) -> None:
    """As above, for `tunnels[]` entries."""
    assert fastpath is not None, "the extension is not built"
    names = data.draw(st.sampled_from([{}, NAMES]))
    tunnels = data.draw(st.lists(st.tuples(_SMALL, _sa(data.draw(st.booleans())), _sa(False), _SMALL, _SMALL),
                                 max_size=4))

    def slow(tunnel: tuple) -> str:
        return _TUNNEL_TEXT(tunnel_values(tunnel, names))

    assert fastpath.tunnel_entries(tunnels, names, slow) == ",".join(map(slow, tunnels))


@given(data=st.data())
def test_compiled_order_and_tunnels_are_the_python_ones(data: st.DataObject) -> None:
    """agent/_fastpath.c's sa_order and tunnel_pairs against SATable.all_sas's sort and report.tunnel_pairs's
    Python body: SAs tied on first_seen and generation, huge generations (Python sorts those), partners in
    the list or not, tunnel ids shared by several SAs (generations after a restart) or by none."""
    assert fastpath is not None, "the extension is not built"
    sas = data.draw(st.lists(_sa(False), max_size=12))
    times = data.draw(st.lists(st.sampled_from([1.0, 2.0, 2.0 + 1e-6]), min_size=len(sas), max_size=len(sas)))
    for sa, t in zip(sas, times, strict=True):
        if data.draw(st.booleans()):
            sa.first_seen, sa.generation = t, data.draw(st.integers(0, 2))
        sa.tunnel_id = data.draw(st.none() | st.integers(1, 4))
        if sas and data.draw(st.booleans()):
            sa.peer = data.draw(st.sampled_from(sas))
    if data.draw(st.booleans()):
        sas.append(data.draw(st.sampled_from(sas))) if sas else None  # one SA twice
    ordered = fastpath.sa_order(sas)
    want = sorted(sas, key=lambda sa: (sa.first_seen, sa.generation))
    if ordered is None:  # a key the compiled order leaves to Python
        assert any(not -2**63 <= sa.generation < 2**63 or sa.first_seen != sa.first_seen for sa in sas)
    else:
        assert [id(sa) for sa in ordered] == [id(sa) for sa in want]
    compiled = fastpath.tunnel_pairs(sas)
    try:
        report.fastpath = None
        python = report.tunnel_pairs(sas)
    finally:
        report.fastpath = fastpath
    assert [(t[0], id(t[1]), id(t[2]), t[3], t[4]) for t in compiled] == \
        [(t[0], id(t[1]), id(t[2]), t[3], t[4]) for t in python]


def test_compiled_tunnel_ids_are_ints_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tunnel id is None or an exact int in 0..2^63 (agent/sastate.h): an int subclass (whose __hash__ could
    run Python code under fastpath.tunnel_pairs' borrowed SAs), a bool or a negative id is refused where it
    is set, so tunnel_pairs meets none; ids up to 2^63 - 1 pair as Python pairs them."""
    assert fastpath is not None, "the extension is not built"

    class Odd(int):
        pass

    a, b = (SA(bytes(8) + i.to_bytes(4, "big"), False, float(i), None, 0) for i in range(2))
    for wrong in (Odd(5), True, -1, 2**63, 1.0):
        with pytest.raises(TypeError):
            a.tunnel_id = wrong
    a.peer, b.peer, a.tunnel_id, b.tunnel_id = b, a, 2**63 - 1, 2**63 - 1
    compiled = fastpath.tunnel_pairs([a, b])
    monkeypatch.setattr(report, "fastpath", None)
    assert compiled == report.tunnel_pairs([a, b]) == [(2**63 - 1, a, b, 0, 1)]
    a.tunnel_id = None
    assert a.tunnel_id is None


@pytest.mark.parametrize("slot", ["key", "peer"])
def test_compiled_writer_with_a_slot_not_set(slot: str) -> None:
    """A field never set (an object field: numbers, flags and the cold block's fields always hold a value,
    agent/sastate.h) is left to the Python writer (which raises where sa_values reads it): no crash."""
    assert fastpath is not None, "the extension is not built"
    sa = SA(sa_key((3, None, None), bytes(range(1, 13))), False, 1.5, "in")
    for field in ("packets", "first_seen", "local", "name", "held", "tunnel_id", "direction", "ftime"):
        with pytest.raises(TypeError):
            delattr(sa, field)
    delattr(sa, slot)

    def slow(s: SA) -> str:
        return _SA_TEXT(sa_values(s, {}, None))

    try:
        want: str | type[BaseException] = slow(sa)
    except AttributeError:
        want = AttributeError
    if want is AttributeError:
        with pytest.raises(AttributeError):
            fastpath.sa_entries([sa], {}, None, slow)
    else:
        assert fastpath.sa_entries([sa], {}, None, slow) == want


def test_read_called_in_process_leaves_the_collector_as_it_was(capsys: pytest.CaptureFixture[str]) -> None:
    """Only the `espmeter` command freezes a read's objects (its process ends with it): a caller of
    main() gets the collector back, on, with the read's SAs collectable."""
    import gc

    from agent.cli import main

    frozen = gc.get_freeze_count()
    for _ in range(2):
        assert main(["read", "--json", str(Path(__file__).parent.parent / "agent" / "demo.pcap")]) == 0
        assert json.loads(capsys.readouterr().out)["sas"]
    assert gc.get_freeze_count() == frozen
    assert gc.isenabled()
