"""Turn espmeter's records into (template, values) pairs using the layouts.

Which optional groups a record has decides its template variant: e.g. an SA whose partner is not
known yet has no `peer`/`tunnel` group, so it goes out under a template without espPeerSPI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ipfix import template as ipfix_template

from .infomodel import SEMANTICS, UNITS, ElementDef, InfoModel
from .layouts import Layout, load_layouts
from .records import ENCAP_UDP, BiflowRecord, MeteringStats, SARecord

PROTO_ESP = 50
PROTO_UDP = 17


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A data record ready for any session: template, values, and what it counts for notSent*."""

    template: ipfix_template.Template
    values: tuple
    packets: int = 0
    octets: int = 0


def _sa_values(sa: SARecord) -> dict[str, Any]:
    values = {f.name: getattr(sa, f.name) for f in dataclasses.fields(sa)}
    values["protocol"] = PROTO_UDP if sa.encap == ENCAP_UDP else PROTO_ESP
    return values


def sa_groups(sa: SARecord) -> set[str]:
    present = {"ipv4" if sa.src.version == 4 else "ipv6"}
    optional = {
        "ports": sa.encap == ENCAP_UDP and sa.sport is not None and sa.dport is not None,
        "vlan": sa.vlan is not None,
        "inner_vlan": sa.vlan is not None and sa.inner_vlan is not None,
        "ingress": sa.ingress_if is not None,
        "egress": sa.egress_if is not None,
        "direction": sa.direction is not None,
        "seq": sa.first_seq is not None and sa.last_seq is not None,
        "peer": sa.peer_spi is not None,
        "tunnel": sa.tunnel_id is not None,
        "name": bool(sa.tunnel_name),
    }
    return present | {g for g, on in optional.items() if on}


class RecordEncoder:
    """Encodes SA, biflow, statistics and RFC 5610 records for one exporter configuration."""

    def __init__(self, model: InfoModel, odid: int, biflow: bool):
        self.model = model
        self.odid = odid
        self.biflow = biflow
        self.layouts: dict[str, Layout] = load_layouts(model)

    def sa(self, sa: SARecord) -> EncodedRecord:
        values = _sa_values(sa)
        values["odid"] = self.odid
        tmpl, vals = self.layouts["sa"].encode(values, sa_groups(sa))
        return EncodedRecord(tmpl, vals, sa.packets, sa.octets)

    def biflow_record(self, bf: BiflowRecord) -> EncodedRecord:
        fwd, rev = bf.forward, bf.reverse
        values = {f"forward.{k}": v for k, v in _sa_values(fwd).items()}
        values.update({f"reverse.{k}": v for k, v in _sa_values(rev).items()})
        values.update(
            start_ms=min(fwd.start_ms, rev.start_ms), end_ms=max(fwd.end_ms, rev.end_ms),
            protocol=values["forward.protocol"], end_reason=fwd.end_reason, odid=self.odid,
            tunnel_id=fwd.tunnel_id if fwd.tunnel_id is not None else rev.tunnel_id,
            tunnel_name=fwd.tunnel_name or rev.tunnel_name,
        )
        present = sa_groups(fwd) - {"peer", "tunnel", "name"}
        if rev.first_seq is not None and rev.last_seq is not None:
            present.add("rseq")
        if values["tunnel_id"] is not None:
            present.add("tunnel")
        if values["tunnel_name"]:
            present.add("name")
        tmpl, vals = self.layouts["biflow"].encode(values, present)
        return EncodedRecord(tmpl, vals, fwd.packets + rev.packets, fwd.octets + rev.octets)

    def record(self, rec: SARecord | BiflowRecord) -> list[EncodedRecord]:
        """One record per SA, or per tunnel with `records: biflow` (a biflow given to an SA exporter
        is split into its two SAs, an SA given to a biflow exporter stays an SA record)."""
        if isinstance(rec, BiflowRecord):
            if self.biflow:
                return [self.biflow_record(rec)]
            return [self.sa(rec.forward), self.sa(rec.reverse)]
        return [self.sa(rec)]

    def metering_stats(self, stats: MeteringStats, messages: int, records: int, octets: int) -> EncodedRecord:
        values = dataclasses.asdict(stats)
        values.update(odid=self.odid, messages=messages, records=records, message_octets=octets)
        present = {"ignored_times"} if stats.first_ignored_ms is not None and stats.last_ignored_ms is not None \
            else set()
        tmpl, vals = self.layouts["metering_stats"].encode(values, present)
        return EncodedRecord(tmpl, vals)

    def exporting_stats(self, process_id: int, records: int, packets: int, octets: int) -> EncodedRecord:
        values = dict(exporting_process_id=process_id, not_sent_records=records,
                      not_sent_packets=packets, not_sent_octets=octets)
        tmpl, vals = self.layouts["exporting_stats"].encode(values, ())
        return EncodedRecord(tmpl, vals)

    def type_elements(self) -> list[ElementDef]:
        """Every enterprise IE, plus the reverse ones the biflow layout uses when biflow is on."""
        out = self.model.enterprise()
        if self.biflow:
            used = {f.ie for f in self.layouts["biflow"].fields}
            out += [d for d in self.model.enterprise(reverse=True) if d.name in used]
        return out

    def type_records(self) -> list[EncodedRecord]:
        """RFC 5610 records so collectors (ipfixDump --rfc5610, ipfixcol2) can name and type our IEs."""
        out = []
        for d in self.type_elements():
            values = dict(id=d.id, pen=d.pen, data_type=d.type_num, semantics=_code(d.semantics, "semantics"),
                          units=_code(d.units, "units"), range_begin=d.range_begin, range_end=d.range_end,
                          name=d.name, description=d.description)
            tmpl, vals = self.layouts["ie_type"].encode(values, ())
            out.append(EncodedRecord(tmpl, vals))
        return out

    def options_templates(self) -> list[ipfix_template.Template]:
        """All options template variants (sent at start and on every refresh)."""
        out = []
        for name in ("metering_stats", "exporting_stats", "ie_type"):
            lay = self.layouts[name]
            out += [lay.template(m) for m in range(1 << len(lay.groups))]
        return out


def _code(name: str, kind: str) -> int:
    table = SEMANTICS if kind == "semantics" else UNITS
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"espmeter.iespec: unknown {kind} {name!r}") from None


def encode_all(encoder: RecordEncoder, records: Iterable[SARecord | BiflowRecord]) -> list[EncodedRecord]:
    return [enc for rec in records for enc in encoder.record(rec)]
