"""Turn espmeter's records into encoded data records using the layouts.

Which optional groups a record has decides its template variant: e.g. an SA whose partner is not
known yet has no `peer`/`tunnel` group, so it goes out under a template without espPeerSPI.
SA and biflow records are the bulk of an export (100 000 at a concentrator flush): a function compiled
from the layout's group conditions picks a record's variant, whose compiled `ObjectPacker` reads the
record's attributes and packs them in one struct call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from types import ModuleType
from typing import Any

from . import codec as _codec
from .codec import Constant, Derived, ObjectPacker, TemplateCodec
from .infomodel import SEMANTICS, UNITS, ElementDef, InfoModel
from .layouts import Layout, Variant, load_layouts
from .records import ENCAP_ESP, ENCAP_UDP, BiflowRecord, LossEvent, MeteringStats, SARecord, protocol

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
    _offsets: list[int] = field(default_factory=list, init=False, repr=False, compare=False)

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

    def offsets(self) -> list[int]:
        """Where each record starts if all were written in a row (and where the last ends): a message takes a
        run of records with one bisection instead of a length test per record. Computed once for all sessions."""
        if len(self._offsets) != len(self.data) + 1:
            self._offsets = list(accumulate(map(len, self.data), initial=0))
        return self._offsets

    def __getitem__(self, i: int) -> tuple[TemplateCodec, bytes, int, int]:
        return self.codecs[i], self.data[i], self.packets[i], self.octets[i]

    def __iter__(self) -> Iterator[tuple[TemplateCodec, bytes, int, int]]:
        return zip(self.codecs, self.data, self.packets, self.octets, strict=True)


Test = tuple[str, str, Any]  # (attribute path, "set" | "true" | "eq" | "len_eq" | "len_ne", argument)
_TEST_SOURCE = {"set": "{} is not None", "true": "{}", "eq": "{} == {!r}", "len_eq": "len({}) == {!r}",
                "len_ne": "len({}) != {!r}"}


def _sa_groups(r: str = "") -> dict[str, tuple[Test, ...]]:
    """When an SA record (at attribute path prefix `r`) has each optional group: tests that must all pass."""
    return {
        "ipv4": ((f"{r}src", "len_eq", 4),), "ipv6": ((f"{r}src", "len_ne", 4),),
        "ports": ((f"{r}encap", "eq", ENCAP_UDP), (f"{r}sport", "set", None), (f"{r}dport", "set", None)),
        "vlan": ((f"{r}vlan", "set", None),),
        "inner_vlan": ((f"{r}vlan", "set", None), (f"{r}inner_vlan", "set", None)),
        "ingress": ((f"{r}ingress_if", "set", None),), "egress": ((f"{r}egress_if", "set", None),),
        "direction": ((f"{r}direction", "set", None),),
        "seq": ((f"{r}first_seq", "set", None), (f"{r}last_seq", "set", None)),
        "peer": ((f"{r}peer_spi", "set", None),), "tunnel": ((f"{r}tunnel_id", "set", None),),
        "name": ((f"{r}tunnel_name", "true", None),),
    }


# the tests of each layout's groups (records.yaml names the groups); a biflow takes the tunnel's id and
# name (not its forward SA's) and the reverse SA's sequence range
_GROUPS: dict[str, dict[str, tuple[Test, ...]]] = {
    "sa": _sa_groups(),
    "biflow": {**_sa_groups("forward."), "rseq": _sa_groups("reverse.")["seq"],
               "tunnel": (("tunnel_id", "set", None),), "name": (("tunnel_name", "true", None),)},
    "loss_event": {**_sa_groups(), "ports": (("encap", "eq", ENCAP_UDP), ("sport", "set", None))},
}

Selector = Callable[[Any], ObjectPacker]


def _protocol(encap: str) -> Derived:
    """protocolIdentifier follows espEncapsulation (`records.protocol`): looked up, not a property call."""
    return Derived(encap, {ENCAP_UDP: protocol(ENCAP_UDP)}, protocol(ENCAP_ESP))


# value keys that are not attribute paths of the record, per layout (besides the exporter's constants)
_DERIVED = {"sa": {"protocol": _protocol("encap")}, "biflow": {"protocol": _protocol("forward.encap")},
            "loss_event": {"protocol": _protocol("encap")}}


def _packer(variant: Variant, sources: Mapping[str, Constant | Derived], compiled: ModuleType | None) -> ObjectPacker:
    """Value keys are attribute paths of the record (addresses are packed), or the given sources."""
    return ObjectPacker(variant.codec, [sources.get(f.key, f.key) for f in variant.fields], compiled)


def _selector(layout: Layout, constants: Mapping[str, Any], compiled: ModuleType | None) -> Selector:
    """The packer of a record's template variant, by a function made from its layout's group tests (compiled
    in exporter/_encode.c where built, else Python source): one call per record instead of a dozen
    attribute tests against a bit table (bench/export.py)."""
    groups = _GROUPS[layout.name]
    sources = {**{k: Constant(v) for k, v in constants.items()}, **_DERIVED[layout.name]}
    missing = set(layout.groups) - set(groups)
    if missing:
        raise ValueError(f"records.yaml {layout.name}: no tests for groups {sorted(missing)}")
    packers: dict[int, ObjectPacker] = {}

    def new(m: int) -> ObjectPacker:
        packers[m] = packer = _packer(layout.variant(m), sources, compiled)
        return packer
    tests = [(1 << i, path, op, arg) for i, g in enumerate(layout.groups) for path, op, arg in groups[g]]
    if compiled is not None:
        return compiled.Selector([(bit, tuple(path.split(".")), op, arg) for bit, path, op, arg in tests],
                                 packers, new)
    mask = " | ".join(f"({1 << i} if {_condition(groups[g])} else 0)" for i, g in enumerate(layout.groups)) or "0"
    source = (f"def select(r):\n    m = {mask}\n    try:\n        return _packers[m]\n"
              f"    except KeyError:\n        return _new(m)\n")
    env: dict[str, Any] = {"_packers": packers, "_new": new}
    exec(compile(source, f"<selector {layout.name}>", "exec"), env)  # noqa: S102 - tests are this module's
    return env["select"]


def _condition(tests: Iterable[Test]) -> str:
    """The Python expression of a group's tests on the record `r`."""
    return " and ".join(_TEST_SOURCE[op].format(f"r.{path}", arg) for path, op, arg in tests)


class RecordEncoder:
    """Encodes SA, biflow, statistics and RFC 5610 records for one exporter configuration."""

    def __init__(self, model: InfoModel, odid: int, biflow: bool, compiled: bool = True):
        """`compiled`: use exporter/_encode.c where it is built (False: the Python oracle)."""
        self.model = model
        self.odid = odid
        self.biflow = biflow
        self.layouts: dict[str, Layout] = load_layouts(model)
        self._constants = {"odid": odid}
        ext = _codec.compiled if compiled else None
        self._select_sa = _selector(self.layouts["sa"], self._constants, ext)
        self._select_biflow = _selector(self.layouts["biflow"], self._constants, ext)
        self._select_event = _selector(self.layouts["loss_event"], self._constants, ext)
        self._encode_sas: Callable[..., int] | None = self._select_sa.encode if ext is not None else None

    def encode(self, records: Iterable[SARecord | BiflowRecord]) -> EncodedRecords:
        """One data record per SA, or per tunnel with `records: biflow`, in order (a biflow given to an SA
        exporter is split into its two SAs, an SA given to a biflow exporter stays an SA record)."""
        out = EncodedRecords()
        codecs, data, packets, octets = out.codecs.append, out.data.append, out.packets.append, out.octets.append
        select_sa, encode_sas = self._select_sa, self._encode_sas
        recs = records if type(records) is list else list(records)
        i, n = 0, len(recs)
        while i < n:
            if encode_sas is not None:  # the SA records from i on, without a Python step per record
                i = encode_sas(recs, i, SARecord, out.codecs, out.data, out.packets, out.octets)
                if i == n:
                    break
            rec = recs[i]
            i += 1
            if type(rec) is BiflowRecord:
                if self.biflow:
                    p = self._select_biflow(rec)
                    codecs(p.codec)
                    data(p.pack(rec))
                    packets(rec.forward.packets + rec.reverse.packets)
                    octets(rec.forward.octets + rec.reverse.octets)
                    continue
                sas: tuple[SARecord, ...] = (rec.forward, rec.reverse)
            else:
                sas = (rec,)
            for sa in sas:
                p = select_sa(sa)
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
        for ev in events:
            p = self._select_event(ev)
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
