"""Turn espmeter's records into encoded data records using the layouts.

Which optional groups a record has decides its template variant: e.g. an SA whose partner is not
known yet has no `peer`/`tunnel` group, so it goes out under a template without espPeerSPI.
SA and biflow records are the bulk of an export (100 000 at a concentrator flush): each variant gets
a compiled `ObjectPacker` that reads the record's attributes and packs them in one struct call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .codec import Constant, ObjectPacker, TemplateCodec
from .infomodel import SEMANTICS, UNITS, ElementDef, InfoModel
from .layouts import Layout, Variant, load_layouts
from .records import ENCAP_UDP, BiflowRecord, LossEvent, MeteringStats, SARecord

# the optional groups `sa_mask` knows (records.yaml names them per layout)
_SA_GROUPS = ("ipv4", "ipv6", "ports", "vlan", "inner_vlan", "ingress", "egress", "direction", "seq", "peer",
              "tunnel", "name")
_TUNNEL_GROUPS = ("peer", "tunnel", "name")  # a biflow takes these from the tunnel, not from its forward SA


OptionsRecord = tuple[TemplateCodec, bytes]  # an encoded options record (it counts no packets)


@dataclass(slots=True)
class EncodedRecords:
    """Data records ready for any session, as columns: template codec, bytes, and what each counts for
    notSent*. A flush is 100 000 records; an object per record would cost a third of the encoding time
    in garbage collection."""

    codecs: list[TemplateCodec] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    packets: list[int] = field(default_factory=list)
    octets: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, records: Iterable[OptionsRecord]) -> EncodedRecords:
        out = cls()
        for codec, data in records:
            out.add(codec, data)
        return out

    def add(self, codec: TemplateCodec, data: bytes, packets: int = 0, octets: int = 0) -> None:
        self.codecs.append(codec)
        self.data.append(data)
        self.packets.append(packets)
        self.octets.append(octets)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[TemplateCodec, bytes, int, int]:
        return self.codecs[i], self.data[i], self.packets[i], self.octets[i]

    def __iter__(self) -> Iterator[tuple[TemplateCodec, bytes, int, int]]:
        return zip(self.codecs, self.data, self.packets, self.octets, strict=True)


def _bits(layout: Layout, groups: Iterable[str], skip: Iterable[str] = ()) -> dict[str, int]:
    """Group name -> its bit in `layout`'s template mask (0 for a group the layout lacks or `skip`s)."""
    return {g: 1 << layout.groups.index(g) if g in layout.groups and g not in skip else 0 for g in groups}


def sa_mask(sa: SARecord, bit: Mapping[str, int]) -> int:
    """Template mask of the optional groups an SA record has; `bit` from `_bits(layout, _SA_GROUPS)`."""
    m = bit["ipv4"] if len(sa.src) == 4 else bit["ipv6"]
    if sa.encap == ENCAP_UDP and sa.sport is not None and sa.dport is not None:
        m |= bit["ports"]
    if sa.vlan is not None:
        m |= bit["vlan"]
        if sa.inner_vlan is not None:
            m |= bit["inner_vlan"]
    if sa.ingress_if is not None:
        m |= bit["ingress"]
    if sa.egress_if is not None:
        m |= bit["egress"]
    if sa.direction is not None:
        m |= bit["direction"]
    if sa.first_seq is not None and sa.last_seq is not None:
        m |= bit["seq"]
    if sa.peer_spi is not None:
        m |= bit["peer"]
    if sa.tunnel_id is not None:
        m |= bit["tunnel"]
    if sa.tunnel_name:
        m |= bit["name"]
    return m


def _packer(variant: Variant, constants: Mapping[str, Any]) -> ObjectPacker:
    """Value keys are attribute paths of the record (addresses are packed), or constants of the exporter."""
    return ObjectPacker(variant.codec, [Constant(constants[f.key]) if f.key in constants else f.key
                                        for f in variant.fields])


class RecordEncoder:
    """Encodes SA, biflow, statistics and RFC 5610 records for one exporter configuration."""

    def __init__(self, model: InfoModel, odid: int, biflow: bool):
        self.model = model
        self.odid = odid
        self.biflow = biflow
        self.layouts: dict[str, Layout] = load_layouts(model)
        self._constants = {"odid": odid}
        self._sa_bits = _bits(self.layouts["sa"], _SA_GROUPS)
        bf = self.layouts["biflow"]
        self._bf_fwd_bits = _bits(bf, _SA_GROUPS, skip=_TUNNEL_GROUPS)
        self._bf_bits = _bits(bf, ("rseq", *_TUNNEL_GROUPS))
        self._event_bits = _bits(self.layouts["loss_event"], ("ipv4", "ipv6", "ports", "ingress", "egress"))
        self._sa_packers: dict[int, ObjectPacker] = {}
        self._bf_packers: dict[int, ObjectPacker] = {}
        self._event_packers: dict[int, ObjectPacker] = {}

    def _packer(self, cache: dict[int, ObjectPacker], layout: str, mask: int) -> ObjectPacker:
        packer = cache.get(mask)
        if packer is None:
            packer = cache[mask] = _packer(self.layouts[layout].variant(mask), self._constants)
        return packer

    def _sa_packer(self, sa: SARecord) -> ObjectPacker:
        mask = sa_mask(sa, self._sa_bits)
        return self._sa_packers.get(mask) or self._packer(self._sa_packers, "sa", mask)

    def _biflow_packer(self, bf: BiflowRecord) -> ObjectPacker:
        bits = self._bf_bits
        mask = sa_mask(bf.forward, self._bf_fwd_bits)
        if bf.reverse.first_seq is not None and bf.reverse.last_seq is not None:
            mask |= bits["rseq"]
        if bf.tunnel_id is not None:
            mask |= bits["tunnel"]
        if bf.tunnel_name:
            mask |= bits["name"]
        return self._packer(self._bf_packers, "biflow", mask)

    def encode(self, records: Iterable[SARecord | BiflowRecord]) -> EncodedRecords:
        """One data record per SA, or per tunnel with `records: biflow`, in order (a biflow given to an SA
        exporter is split into its two SAs, an SA given to a biflow exporter stays an SA record)."""
        out = EncodedRecords()
        codecs, data, packets, octets = out.codecs.append, out.data.append, out.packets.append, out.octets.append
        for rec in records:
            if type(rec) is BiflowRecord:
                if self.biflow:
                    p = self._biflow_packer(rec)
                    codecs(p.codec)
                    data(p.pack(rec))
                    packets(rec.forward.packets + rec.reverse.packets)
                    octets(rec.forward.octets + rec.reverse.octets)
                    continue
                sas: tuple[SARecord, ...] = (rec.forward, rec.reverse)
            else:
                sas = (rec,)
            for sa in sas:
                p = self._sa_packer(sa)
                codecs(p.codec)
                data(p.pack(sa))
                packets(sa.packets)
                octets(sa.octets)
        return out

    def _options(self, layout: str, values: Mapping[str, Any], present: Iterable[str] = ()) -> OptionsRecord:
        lay = self.layouts[layout]
        var = lay.variant(lay.mask(present))
        return var.codec, var.pack_mapping(values)

    def loss_events(self, events: Iterable[LossEvent]) -> EncodedRecords:
        """One loss-event record each (layout `loss_event`): the SA's key fields, numbers and times, packed
        from the event's attributes as SA records are (a mapping per event cost 8.6 instead of ~2 us)."""
        out = EncodedRecords()
        bit = self._event_bits
        for ev in events:
            m = bit["ipv4"] if len(ev.src) == 4 else bit["ipv6"]
            if ev.encap == ENCAP_UDP and ev.sport is not None:
                m |= bit["ports"]
            if ev.ingress_if is not None:
                m |= bit["ingress"]
            if ev.egress_if is not None:
                m |= bit["egress"]
            p = self._event_packers.get(m) or self._packer(self._event_packers, "loss_event", m)
            out.add(p.codec, p.pack(ev))
        return out

    def metering_stats(self, stats: MeteringStats, messages: int, records: int, octets: int) -> OptionsRecord:
        values = dataclasses.asdict(stats)
        values.update(odid=self.odid, messages=messages, records=records, message_octets=octets)
        present = ("ignored_times",) if stats.first_ignored_ms is not None and stats.last_ignored_ms is not None \
            else ()
        return self._options("metering_stats", values, present)

    def exporting_stats(self, process_id: int, records: int, packets: int, octets: int) -> OptionsRecord:
        return self._options("exporting_stats", dict(exporting_process_id=process_id, not_sent_records=records,
                                                     not_sent_packets=packets, not_sent_octets=octets))

    def type_elements(self) -> list[ElementDef]:
        """Every enterprise IE, plus the reverse ones the biflow layout uses when biflow is on."""
        out = self.model.enterprise()
        if self.biflow:
            used = {f.ie for f in self.layouts["biflow"].fields}
            out += [d for d in self.model.enterprise(reverse=True) if d.name in used]
        return out

    def type_records(self) -> EncodedRecords:
        """RFC 5610 records so collectors (ipfixDump --rfc5610, ipfixcol2) can name and type our IEs."""
        return EncodedRecords.of(self._options("ie_type", dict(
            id=d.id, pen=d.pen, data_type=d.type_num, semantics=_code(d.semantics, "semantics"),
            units=_code(d.units, "units"), range_begin=d.range_begin, range_end=d.range_end,
            name=d.name, description=d.description)) for d in self.type_elements())

    def options_codecs(self) -> list[TemplateCodec]:
        """All options template variants (sent at start and on every refresh)."""
        return [v.codec for name in ("metering_stats", "exporting_stats", "ie_type")
                for v in self.layouts[name].variants()]


def _code(name: str, kind: str) -> int:
    table = SEMANTICS if kind == "semantics" else UNITS
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"espmeter.iespec: unknown {kind} {name!r}") from None
