"""The precompiled encoder writes the bytes python-ipfix writes, and messages frame them correctly.

The reference is python-ipfix itself: each record's values are prepared as espmeter prepared them
for python-ipfix before the codec existed (a dict per record, datetimes, saturated integers) and
encoded with `Template.encode_to`. The messages are decoded with python-ipfix (`exporter.collect`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import struct
from datetime import datetime, timedelta
from typing import Any

import pytest

from exporter import Exporter, ExportSettings, MeteringStats
from exporter.collect import Decoder, iter_messages
from exporter.encoding import RecordEncoder
from exporter.infomodel import SEMANTICS, UNITS, InfoModel
from exporter.message import MessageBuilder
from exporter.records import ENCAP_UDP, BiflowRecord, LossEvent, SARecord
from tests.collectors import START_MS, make_sa

CLOCK = 1795651040.0
_UINT_MAX = {"unsigned8": 0xFF, "unsigned16": 0xFFFF, "unsigned32": 0xFFFFFFFF, "unsigned64": 2**64 - 1}


def varied(n: int, seed: int = 1) -> list[SARecord]:
    """SA records covering every optional group, None fields, strings around the 255-octet length
    switch, IPv6, NAT-T with and without ports, and counters beyond their field (saturated)."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        kw: dict[str, Any] = {}
        if r.random() < 0.3:
            kw.update(src=ipaddress.ip_address(f"2001:db8::{i:x}").packed,
                      dst=ipaddress.ip_address("2001:db8:1::1").packed)
        if r.random() < 0.3:
            kw.update(encap=ENCAP_UDP, sport=r.choice([4500, None]), dport=4500)
        for k in ("vlan", "inner_vlan", "ingress_if", "egress_if", "direction", "peer_spi", "tunnel_id"):
            if r.random() < 0.5:
                kw[k] = r.randrange(0, 4)
        for k in ("first_seq", "last_seq"):
            if r.random() < 0.2:
                kw[k] = None
        if r.random() < 0.5:
            kw["tunnel_name"] = r.choice([None, "", "t", f"tunnel-ü-{i}", "x" * 254, "y" * 255, "z" * 300, "w" * 600])
        if r.random() < 0.1:
            kw["lost"] = 2**70
        if r.random() < 0.1:
            kw["max_reorder_extent"] = -3
        if r.random() < 0.05:
            kw["spi"] = 2**33
        out.append(make_sa(i, start_ms=START_MS + r.randrange(10**6), **kw))
    return out


# --- the reference: espmeter's values for python-ipfix before the codec ---------------------------

def _convert(type_name: str, value: Any) -> Any:
    if type_name.startswith("dateTime"):
        return datetime(1970, 1, 1) + timedelta(milliseconds=int(value or 0))
    if type_name in _UINT_MAX:
        return min(max(int(value or 0), 0), _UINT_MAX[type_name])
    if type_name == "string":
        return value or ""
    if type_name in ("ipv4Address", "ipv6Address"):  # records carry them packed, python-ipfix takes objects
        return ipaddress.ip_address(value)
    return value


def _sa_values(sa: SARecord) -> dict[str, Any]:
    values = {f.name: getattr(sa, f.name) for f in dataclasses.fields(sa)}
    values["protocol"] = 17 if sa.encap == ENCAP_UDP else 50
    return values


def _biflow_values(bf: BiflowRecord) -> dict[str, Any]:
    fwd, rev = bf.forward, bf.reverse
    values = {f"forward.{k}": v for k, v in _sa_values(fwd).items()}
    values.update({f"reverse.{k}": v for k, v in _sa_values(rev).items()})
    values.update(start_ms=min(fwd.start_ms, rev.start_ms), end_ms=max(fwd.end_ms, rev.end_ms),
                  protocol=values["forward.protocol"], end_reason=fwd.end_reason,
                  tunnel_id=fwd.tunnel_id if fwd.tunnel_id is not None else rev.tunnel_id,
                  tunnel_name=fwd.tunnel_name or rev.tunnel_name)
    return values


def python_ipfix_bytes(encoder: RecordEncoder, layout: str, tid: int, values: dict[str, Any]) -> bytes:
    lay = encoder.layouts[layout]
    var = lay.variant(tid - lay.template_base)
    tmpl = var.codec.template
    vals = [_convert(e.type.name, values.get(f.key)) for f, e in zip(var.fields, tmpl.ies, strict=True)]
    buf = memoryview(bytearray(70000))
    return bytes(buf[:tmpl.encode_to(buf, 0, vals)])


# --- tests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("biflow", [False, True])
def test_records_byte_identical_to_python_ipfix(biflow):
    encoder = RecordEncoder(InfoModel.load(), 7, biflow=biflow)
    recs = varied(2000)
    if biflow:
        bfs = [BiflowRecord(a, b) for a, b in zip(recs[::2], recs[1::2], strict=True)]
        encoded = encoder.encode(bfs)
        refs = [python_ipfix_bytes(encoder, "biflow", c.tid, dict(_biflow_values(bf), odid=7))
                for c, bf in zip(encoded.codecs, bfs, strict=True)]
    else:
        encoded = encoder.encode(recs)
        refs = [python_ipfix_bytes(encoder, "sa", c.tid, dict(_sa_values(sa), odid=7))
                for c, sa in zip(encoded.codecs, recs, strict=True)]
    assert len({c.tid for c in encoded.codecs}) > 100  # many variants were exercised
    assert encoded.data == refs


def test_loss_event_records_byte_identical_to_python_ipfix():
    """Every loss_event variant, packed from the events' attributes, as python-ipfix encodes the mapping."""
    encoder = RecordEncoder(InfoModel.load(), 7, biflow=False)
    r = random.Random(3)
    events = []
    for i in range(400):
        v6 = r.random() < 0.3
        src, dst = (f"2001:db8::{i:x}", "2001:db8:1::1") if v6 else (f"192.0.2.{i % 250}", "198.51.100.1")
        udp = r.random() < 0.5
        first = r.choice([1, 2**32 + i, 2**64 - 2])
        events.append(LossEvent(ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed, 0xC0000000 + i,
                                ENCAP_UDP if udp else 0, r.choice([4500, None]) if udp else None, 4500 if udp else None,
                                r.choice([None, 3]), r.choice([None, 5]), first, first + r.randrange(2),
                                CLOCK + r.random(), CLOCK + 1 + r.random(), r.choice([None, 9]), r.choice([None, "t"])))
    encoded = encoder.loss_events(events)
    lay = encoder.layouts["loss_event"]
    refs = []
    for codec, ev in zip(encoded.codecs, events, strict=True):
        present = ["ipv4" if len(ev.src) == 4 else "ipv6"] + [g for g, on in (
            ("ports", ev.encap == ENCAP_UDP and ev.sport is not None), ("ingress", ev.ingress_if is not None),
            ("egress", ev.egress_if is not None)) if on]
        assert codec is lay.variant(lay.mask(present)).codec
        values = {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)}
        values.update(protocol=17 if ev.encap == ENCAP_UDP else 50, odid=7, count=ev.last - ev.first + 1,
                      after_ms=round(ev.after * 1e6) // 1000, before_ms=round(ev.before * 1e6) // 1000)
        refs.append(python_ipfix_bytes(encoder, "loss_event", codec.tid, values))
    assert len({c.tid for c in encoded.codecs}) == 16  # v4/v6 x ports x ingress x egress
    assert encoded.data == refs


def test_options_records_byte_identical_to_python_ipfix():
    encoder = RecordEncoder(InfoModel.load(), 7, biflow=True)
    stats = [MeteringStats(observation_domain=7),
             MeteringStats(observation_domain=7, frames=10**20, ignored_frames=4, capture_drops=3, unconfirmed_sas=5,
                           unconfirmed_datagrams=9, first_ignored_ms=START_MS, last_ignored_ms=START_MS + 1)]
    for st in stats:
        codec, data = encoder.metering_stats(st, 1, 2, 3)
        values = dict(dataclasses.asdict(st), odid=7, messages=1, records=2, message_octets=3)
        assert data == python_ipfix_bytes(encoder, "metering_stats", codec.tid, values)
    codec, data = encoder.exporting_stats(4242, 1, 2, 3)
    values = dict(exporting_process_id=4242, not_sent_records=1, not_sent_packets=2, not_sent_octets=3)
    assert data == python_ipfix_bytes(encoder, "exporting_stats", codec.tid, values)
    types = encoder.type_records()
    assert len(types) == len(encoder.type_elements())
    for (codec, data, _, _), d in zip(types, encoder.type_elements(), strict=True):
        values = dict(id=d.id, pen=d.pen, data_type=d.type_num, semantics=SEMANTICS[d.semantics],
                      units=UNITS[d.units], range_begin=d.range_begin, range_end=d.range_end, name=d.name,
                      description=d.description)
        assert data == python_ipfix_bytes(encoder, "ie_type", codec.tid, values)
        b = MessageBuilder(odid=7, mtu=65535)
        assert b.add_template(codec) and b.add_record(codec, data)
        (rec,) = Decoder().decode(b.finish(0))
        assert (rec["informationElementId"], rec["informationElementName"]) == (d.id, d.name)


def _data_sets(msg: bytes) -> bytes:
    """Concatenated data set payloads of a message (checks that the set lengths add up)."""
    out, offset = b"", 16
    while offset < len(msg):
        set_id, length = struct.unpack_from("!HH", msg, offset)
        assert length >= 4 and offset + length <= len(msg)
        if set_id >= 256:
            out += msg[offset + 4:offset + length]
        offset += length
    assert offset == len(msg)
    return out


@pytest.mark.parametrize("mtu", [512, 1400, 9000])
def test_messages_frame_records_within_mtu_with_sequence_numbers(tmp_path, mtu):
    recs = varied(1500, seed=mtu)
    path = tmp_path / "out.ipfix"
    exp = Exporter(ExportSettings(collectors=[f"file://{path}"], mtu=mtu, observation_domain=7,
                                  exporting_process_id=4242), clock=lambda: CLOCK)
    exp.export(recs)
    exp.close()
    encoder = exp.encoder
    encoded = encoder.encode(recs)
    fits = [data for data in encoded.data if len(data) + 16 + 4 <= mtu]
    dropped = len(recs) - len(fits)
    assert (dropped > 0) == (mtu == 512)  # 600-octet names do not fit 512
    assert exp.counters[f"file://{path}"]["not_sent_records"] == dropped

    decoder, sequence, payload, records = Decoder(), 0, b"", []
    for msg in iter_messages(path.read_bytes()):
        assert len(msg) <= mtu
        version, length, export_time, seq, odid = struct.unpack_from("!HHIII", msg)
        assert (version, length, export_time, odid) == (10, len(msg), int(CLOCK), 7)
        assert seq == sequence, "sequence = data records sent before this message"
        payload += _data_sets(msg)
        decoded = decoder.decode(msg)
        sequence += len(decoded)
        records += [r for r in decoded if "IPSecSPI" in r]
    # the RFC 5610 records, then every SA record that fits, in order, byte for byte
    assert payload == b"".join([*encoder.type_records().data, *fits])
    sent = [sa for sa, data in zip(recs, encoded.data, strict=True) if len(data) + 20 <= mtu]
    assert len(records) == len(sent)
    for rec, sa in zip(records, sent, strict=True):
        assert rec["IPSecSPI"] == min(sa.spi, 0xFFFFFFFF)
        assert rec["flowStartMilliseconds"] == datetime(1970, 1, 1) + timedelta(milliseconds=sa.start_ms)
        assert rec["espLostPacketDeltaCount"] == min(sa.lost, 2**64 - 1)
        assert rec["espMaxReorderExtent"] == max(sa.max_reorder_extent, 0)
        assert rec.get("espTunnelName") == (sa.tunnel_name or None)
        assert ("espFirstSequenceNumber" in rec) == (sa.first_seq is not None and sa.last_seq is not None)
        assert ("sourceTransportPort" in rec) == (sa.encap == ENCAP_UDP and sa.sport is not None)
        assert rec.get("sourceIPv6Address", rec.get("sourceIPv4Address")) == ipaddress.ip_address(sa.src)


def test_milliseconds_exact_where_python_ipfix_rounds_down():
    """python-ipfix goes through float seconds: 263117785 ms comes out as 263117784."""
    encoder = RecordEncoder(InfoModel.load(), 1, biflow=False)
    sa = make_sa(1, start_ms=263117785)
    encoded = encoder.encode([sa])
    assert struct.unpack_from("!Q", encoded.data[0], 0)[0] == 263117785
    ref = python_ipfix_bytes(encoder, "sa", encoded.codecs[0].tid, dict(_sa_values(sa), odid=1))
    assert struct.unpack_from("!Q", ref, 0)[0] == 263117784


def test_string_beyond_two_octet_length_is_dropped_and_counted(tmp_path):
    path = tmp_path / "out.ipfix"
    exp = Exporter(ExportSettings(collectors=[f"file://{path}"], mtu=65535), clock=lambda: CLOCK)
    exp.export([make_sa(1, tunnel_name="n" * 70000), make_sa(2, tunnel_name="ok")])
    exp.close()
    assert exp.counters[f"file://{path}"]["not_sent_records"] == 1
    decoder = Decoder()
    decoded = [r for m in iter_messages(path.read_bytes()) for r in decoder.decode(m) if "IPSecSPI" in r]
    assert [r["espTunnelName"] for r in decoded] == ["ok"]
