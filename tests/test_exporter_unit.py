"""Unit tests of the exporter that need no external collector."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from exporter import Exporter, ExportSettings, MeteringStats
from exporter.collect import Decoder, decode_messages, iter_messages
from exporter.dictionaries import FORMATS, render
from exporter.encoding import RecordEncoder
from exporter.infomodel import InfoModel, check_pen
from exporter.layouts import load_layouts
from exporter.message import MessageBuilder
from exporter.records import ENCAP_UDP, BiflowRecord
from exporter.transport import parse_collector
from tests.collectors import make_sa

CLOCK = 1795651040.0


def export_to_file(tmp_path, recs, **settings):
    path = tmp_path / "out.ipfix"
    exp = Exporter(ExportSettings(collectors=[f"file://{path}"], **settings), clock=lambda: CLOCK)
    exp.export(recs)
    return exp, path


@pytest.mark.parametrize("pen", [65536, 9, 637, 6871, 29305, 29305 + 65536, 6871 + 2 * 65536, 0])
def test_pen_refused(pen):
    with pytest.raises(ValueError, match="PEN"):
        check_pen(pen)
    with pytest.raises(ValueError, match="PEN"):
        Exporter(ExportSettings(collectors=[], pen=pen))


def test_pen_accepted_and_used(tmp_path):
    exp, path = export_to_file(tmp_path, [make_sa(0, peer_spi=7, tunnel_id=9)], pen=4242)
    exp.close()
    recs = decode_messages(path.read_bytes(), pen=4242)
    data = [r for r in recs if "IPSecSPI" in r]
    assert data[0]["espPeerSPI"] == 7 and data[0]["espTunnelId"] == 9
    assert {r["privateEnterpriseNumber"] for r in recs if "privateEnterpriseNumber" in r} == {4242}


def test_enterprise_ids_are_the_contract():
    model = InfoModel.load()
    expected = {
        1: ("espLostPacketDeltaCount", "unsigned64"), 2: ("espReorderedPacketDeltaCount", "unsigned64"),
        3: ("espDuplicatePacketDeltaCount", "unsigned64"), 4: ("espLatePacketDeltaCount", "unsigned64"),
        5: ("espExpectedPacketDeltaCount", "unsigned64"), 6: ("espDatagramDeltaCount", "unsigned64"),
        7: ("espIncompleteDatagramDeltaCount", "unsigned64"), 8: ("espFirstSequenceNumber", "unsigned64"),
        9: ("espLastSequenceNumber", "unsigned64"), 10: ("espMaxReorderExtent", "unsigned32"),
        11: ("espPeerSPI", "unsigned32"), 12: ("espEncapsulation", "unsigned8"), 13: ("espTunnelName", "string"),
        14: ("espTunnelId", "unsigned64"), 15: ("espLossEventDeltaCount", "unsigned64"),
        16: ("espLongestLossRun", "unsigned64"), 17: ("espLossEventFirstSequenceNumber", "unsigned64"),
        18: ("espLossEventLastSequenceNumber", "unsigned64"),
        19: ("espLossEventAfterMilliseconds", "dateTimeMilliseconds"),
        20: ("espLossEventBeforeMilliseconds", "dateTimeMilliseconds"),
        21: ("espLossEventPacketCount", "unsigned64"), 22: ("espUnconfirmedSATotalCount", "unsigned64"),
        23: ("espUnconfirmedDatagramTotalCount", "unsigned64"),
        24: ("espLossEventsSuppressedTotalCount", "unsigned64"),
    }
    assert {d.id: (d.name, d.type_name) for d in model.enterprise()} == expected
    assert all(d.id == f.id | 0x4000 and d.pen == f.pen
               for d, f in zip(model.enterprise(reverse=True), model.enterprise(), strict=True))


def test_sequence_wraps_modulo_2_32():
    codec, data = RecordEncoder(InfoModel.load(), 7, biflow=False).exporting_stats(1, 0, 0, 0)
    b = MessageBuilder(odid=7, mtu=1400)
    b.sequence = 2**32 - 2
    for _ in range(5):
        assert b.add_record(codec, data)
    m1 = b.finish(0)
    for _ in range(3):
        assert b.add_record(codec, data)
    m2 = b.finish(0)
    assert struct.unpack_from("!I", m1, 8)[0] == 2**32 - 2
    assert struct.unpack_from("!I", m2, 8)[0] == 3
    assert struct.unpack_from("!I", m2, 12)[0] == 7


def test_sequence_per_observation_domain(tmp_path):
    """Two exporters (domains 1 and 2) into one file: each domain counts its own records."""
    path = tmp_path / "two.ipfix"
    exps = [Exporter(ExportSettings(collectors=[f"file://{path}"], observation_domain=d), clock=lambda: CLOCK)
            for d in (1, 2)]
    for i in range(3):
        exps[0].export([make_sa(i)] * 2)
        exps[1].export([make_sa(i)])
    for e in exps:
        e.close()
    seen: dict[int, int] = {}
    decoder = Decoder()
    for msg in iter_messages(path.read_bytes()):
        odid, seq = struct.unpack_from("!I", msg, 12)[0], struct.unpack_from("!I", msg, 8)[0]
        assert seq == seen.get(odid, 0), (odid, seq, seen)
        seen[odid] = seq + len(decoder.decode(msg))
    assert seen[1] - seen[2] == 3  # domain 1 got 3 more SA records; the options records are the same


def test_every_message_within_mtu_and_templates_first(tmp_path):
    recs = [make_sa(i, tunnel_name="t" * (i % 50), peer_spi=i, tunnel_id=i) for i in range(300)]
    src, dst = ipaddress.ip_address("2001:db8::1").packed, ipaddress.ip_address("2001:db8:1::1").packed
    recs += [make_sa(i, src=src, dst=dst) for i in range(100)]
    exp, path = export_to_file(tmp_path, recs, mtu=512)
    exp.close()
    msgs = list(iter_messages(path.read_bytes()))
    assert len(msgs) > 10
    assert max(len(m) for m in msgs) <= 512
    decoded = decode_messages(path.read_bytes())
    assert len([r for r in decoded if "IPSecSPI" in r]) == 400


def test_records_before_pairing_use_another_template(tmp_path):
    exp, path = export_to_file(tmp_path, [make_sa(1), make_sa(2, peer_spi=5, tunnel_id=6),
                                          make_sa(3, peer_spi=5, tunnel_id=6, tunnel_name="x")])
    exp.close()
    data = [r for r in decode_messages(path.read_bytes()) if "IPSecSPI" in r]
    assert "espPeerSPI" not in data[0] and "espTunnelId" not in data[0]
    assert data[1]["espPeerSPI"] == 5 and "espTunnelName" not in data[1]
    assert data[2]["espTunnelName"] == "x"
    assert len({r["_template_id"] for r in data}) == 3


def test_natt_vlan_interfaces(tmp_path):
    sa = make_sa(1, encap=ENCAP_UDP, sport=4500, dport=4500, vlan=10, inner_vlan=20, ingress_if=3,
                 egress_if=7, direction=0)
    exp, path = export_to_file(tmp_path, [sa])
    exp.close()
    (rec,) = [r for r in decode_messages(path.read_bytes()) if "IPSecSPI" in r]
    assert rec["protocolIdentifier"] == 17 and rec["sourceTransportPort"] == 4500
    assert rec["vlanId"] == 10 and rec["dot1qCustomerVlanId"] == 20
    assert (rec["ingressInterface"], rec["egressInterface"], rec["flowDirection"]) == (3, 7, 0)
    assert rec["espEncapsulation"] == 1 and rec["observationDomainId"] == 1


def test_biflow_record(tmp_path):
    fwd = make_sa(1, peer_spi=0xC0020000, tunnel_id=42)
    rev = make_sa(2, src=fwd.dst, dst=fwd.src, spi=0xC0020000, packets=700, octets=90000, lost=9)
    exp, path = export_to_file(tmp_path, [BiflowRecord(fwd, rev)], records="biflow")
    exp.close()
    recs = decode_messages(path.read_bytes())
    (rec,) = [r for r in recs if "IPSecSPI" in r]
    assert rec["reverseIPSecSPI"] == 0xC0020000 and rec["reversePacketDeltaCount"] == 700
    assert rec["reverseOctetDeltaCount"] == 90000 and rec["reverseEspLostPacketDeltaCount"] == 9
    assert not any(k.startswith(("reverseFlow", "reverseFlowEnd")) for k in rec)
    names = {r["informationElementName"] for r in recs if "informationElementName" in r}
    assert "reverseEspLostPacketDeltaCount" in names and len(names) == 24 + 12


def test_options_records(tmp_path):
    exp, path = export_to_file(tmp_path, [make_sa(1)])
    exp.export_stats(MeteringStats(observation_domain=1, frames=100, ignored_frames=4, ignored_octets=400,
                                   capture_drops=3, first_ignored_ms=1795651000000, last_ignored_ms=1795651001000,
                                   unconfirmed_sas=7, unconfirmed_datagrams=11, loss_events_suppressed=5))
    exp.close()
    recs = decode_messages(path.read_bytes())
    (met,) = [r for r in recs if "ignoredPacketTotalCount" in r]
    counts = (met["ignoredPacketTotalCount"], met["ignoredOctetTotalCount"], met["droppedPacketTotalCount"])
    assert counts == (4, 400, 3) and met["espLossEventsSuppressedTotalCount"] == 5
    assert (met["espUnconfirmedSATotalCount"], met["espUnconfirmedDatagramTotalCount"]) == (7, 11)
    assert met["observationTimeMilliseconds"] < met["observationTimeMilliseconds#2"]
    (rel,) = [r for r in recs if "notSentFlowTotalCount" in r]
    assert rel["notSentFlowTotalCount"] == 0
    types = [r for r in recs if "informationElementName" in r]
    assert len(types) == 24 and all(len(r) == 4 + 9 for r in types)


def test_unwritable_file_does_not_stop_other_collectors(tmp_path, caplog):
    good = tmp_path / "good.ipfix"
    exp = Exporter(ExportSettings(collectors=["file:///proc/nonexistent/x.ipfix", f"file://{good}"]),
                   clock=lambda: CLOCK)
    exp.export([make_sa(1)])
    exp.close()
    assert "cannot be opened" in caplog.text
    counters = exp.counters
    assert counters["file:///proc/nonexistent/x.ipfix"]["not_sent_records"] >= 1
    assert counters["file:///proc/nonexistent/x.ipfix"]["send_errors"] >= 1
    assert any("IPSecSPI" in r for r in decode_messages(good.read_bytes()))


def test_collector_urls():
    assert parse_collector("udp://[::1]:4739").host == "::1"
    assert parse_collector("tcp://127.0.0.1:4739").port == 4739
    assert parse_collector("file:///tmp/x").path == "/tmp/x"
    for bad in ("http://x:1", "udp://host", "udp://:4739"):
        with pytest.raises(ValueError):
            parse_collector(bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dictionaries_render(fmt):
    text = render(fmt, 4242)
    assert "4242" in text
    assert ("espTunnelName" in text) or ("esp_tunnel_name" in text)


def test_template_ids_deterministic_and_distinct():
    a = load_layouts(InfoModel.load())["sa"]
    seen = {}
    for mask in range(1 << len(a.groups)):
        fields = tuple(f.ie for f in a.fields_for(mask))
        assert seen.setdefault(a.variant(mask).codec.tid, fields) == fields
    assert min(seen) >= 256
