"""`espmeter read` output: the JSON document other tools rely on (docs/read-json.md) and the table."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple, TextIO

from agent.compiled import fastpath
from agent.decode import LINKTYPE_OF_DLT
from agent.drill import Observer
from agent.ike import IkePair
from agent.meter import Meter
from agent.records import tunnel_name
from agent.sa import SA, address_text
from agent.tracker import LossRun

# how a value of a flat entry is written (`_json_text`); FLOAT: finite floats (times)
INT, INT_OR_NULL, STR, STR_OR_NULL, BOOL, FLOAT, INTS, ANY = range(8)  # INTS: a list of ints
# the `sas[]` entry (docs/read-json.md: key order is part of the contract); values from `sa_values`
SA_FIELDS: tuple[tuple[str, int], ...] = (
    ("src", STR), ("dst", STR), ("spi", INT), ("encap", STR), ("sport", INT_OR_NULL), ("dport", INT_OR_NULL),
    ("vlan", INT_OR_NULL), ("inner_vlan", INT_OR_NULL), ("interface", ANY), ("direction", STR_OR_NULL),
    ("local", BOOL), ("generation", INT), ("packets", INT), ("octets", INT), ("datagrams", INT),
    ("first_seq", INT_OR_NULL), ("last_seq", INT_OR_NULL), ("expected", INT), ("lost", INT), ("reordered", INT),
    ("max_reorder_extent", INT), ("duplicates", INT), ("late", INT), ("implausible", INT), ("incomplete", INT),
    ("peer_spi", INT_OR_NULL), ("tunnel", INT_OR_NULL), ("tunnel_name", STR_OR_NULL), ("first_seen", FLOAT),
    ("last_seen", FLOAT),
)
SA_KEYS = tuple(k for k, _ in SA_FIELDS)
# the `tunnels[]` entry: id, name, the forward SA's addresses, the two SAs' indexes in `sas[]` and SPIs
TUNNEL_FIELDS = (("id", INT), ("name", STR_OR_NULL), ("a", STR), ("b", STR), ("sas", INTS), ("spis", INTS))
TUNNEL_KEYS = tuple(k for k, _ in TUNNEL_FIELDS)


def sa_values(sa: SA, tunnel_names: dict[str, str], interfaces: dict[int, str] | None = None) -> tuple[Any, ...]:
    """The values of an SA's `sas[]` entry, in `SA_FIELDS` order; `interfaces`: a pcapng file's interface
    numbers -> names."""
    src, dst, spi, sport, dport, ifindex, vlan, inner_vlan = sa.identity()
    seen = sa.last >= 0
    peer = sa.peer
    return (
        address_text(src), address_text(dst), spi, "udp" if sa.udp else "esp", sport, dport, vlan,
        inner_vlan, interfaces.get(ifindex, ifindex) if interfaces else ifindex, sa.direction, sa.local,
        sa.generation, sa.packets, sa.octets, sa.datagrams, sa.first if seen else None, sa.last if seen else None,
        sa.expected, sa.lost, sa.reordered, sa.max_extent, sa.duplicates, sa.late, sa.implausible, sa.incomplete,
        peer.identity()[2] if peer is not None else None, sa.tunnel_id, tunnel_name(sa, tunnel_names),
        round(sa.first_seen, 6), round(sa.last_seen, 6),
    )


Tunnel = tuple[int, SA, SA, int, int]  # id, forward and reverse SA, their indexes in `sas[]`


def tunnel_values(tunnel: Tunnel, tunnel_names: dict[str, str]) -> tuple[Any, ...]:
    """The values of a `tunnels[]` entry, in `TUNNEL_FIELDS` order."""
    tid, fwd, rev, i, j = tunnel
    src, dst, spi = fwd.identity()[:3]
    return tid, tunnel_name(fwd, tunnel_names), address_text(src), address_text(dst), [i, j], [spi, rev.identity()[2]]


def sa_json(sa: SA, tunnel_names: dict[str, str], interfaces: dict[int, str] | None = None) -> dict[str, Any]:
    """An SA's `sas[]` entry."""
    return dict(zip(SA_KEYS, sa_values(sa, tunnel_names, interfaces), strict=True))


def _json_text(fields: tuple[tuple[str, int], ...]) -> Callable[[tuple[Any, ...]], str]:
    """A function writing the entry of `fields`'s values as `json.dumps(dict(...), separators=(",", ":"))`
    writes it, compiled into one f-string: a third of the time of building the dict and encoding it."""
    env: dict[str, Any] = {"_q": encode_basestring_ascii, "_any": _ENCODE}
    forms = {INT: "{v[%d]}", INT_OR_NULL: '{"null" if v[%d] is None else v[%d]}', STR: "{_q(v[%d])}",
             STR_OR_NULL: '{"null" if v[%d] is None else _q(v[%d])}', BOOL: '{"true" if v[%d] else "false"}',
             FLOAT: "{v[%d]!r}", INTS: '[{",".join(map(str, v[%d]))}]',
             ANY: '{"null" if v[%d] is None else _any(v[%d])}'}
    body = ",".join(f"{_ENCODE(key)}:" + forms[kind].replace("%d", str(i)) for i, (key, kind) in enumerate(fields))
    source = f"def text(v):\n    return f'''{{{{{body}}}}}'''\n"
    exec(compile(source, "<json entry>", "exec"), env)  # noqa: S102 - keys are the constants above
    return env["text"]


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # as json.dumps(x, separators=(",", ":"))
_SA_TEXT = _json_text(SA_FIELDS)
_TUNNEL_TEXT = _json_text(TUNNEL_FIELDS)


def events_json(events: list[LossRun]) -> list[dict[str, Any]]:
    return [{"first": e.first, "last": e.last, "count": e.count, "after": round(e.after, 6),
             "before": round(e.before, 6)} for e in events]


def _ike_json(p: IkePair) -> dict[str, Any]:
    return {
        "a": address_text(p.a),
        "b": address_text(p.b),
        "packets": p.packets,
        "octets": p.octets,
        "first_seen": round(p.first_seen, 6),
        "last_seen": round(p.last_seen, 6),
    }


_CHUNK = 1000  # entries per write (and per encoder call: its per-call cost is paid once per chunk)


class _Section(NamedTuple):
    """A list of the document: its items, each one's entry, and the text of a chunk of entries joined by
    commas where it is compiled (else the chunk's entries are encoded at once)."""

    key: str
    items: Sequence[Any]
    entry: Callable[[Any], dict[str, Any]]
    text: Callable[[Sequence[Any]], str] | None = None


def _sections(meter: Meter, source: str, linktype: int, error: str | None, interfaces: dict[int, str] | None,
              events: bool, observer: Observer | None) -> tuple[list[_Section], dict[str, Any]]:
    """The document's lists in key order (`sas`, `tunnels`, `ike`), each entry made when it is written,
    and its `capture` object."""
    sas = meter.table.all_sas()
    names = meter.producer.names
    bins = observer is not None and observer.bin_us is not None
    extras = events or bins

    def sa_entry(sa: SA) -> dict[str, Any]:
        doc = sa_json(sa, names, interfaces)
        doc.update(sa_extra(sa))
        return doc

    def sa_text(sa: SA) -> str:
        text = _SA_TEXT(sa_values(sa, names, interfaces))
        return text[:-1] + "," + _ENCODE(sa_extra(sa))[1:] if extras else text  # {...,"loss_events":...}

    def sa_texts(chunk: list[SA]) -> str:
        if fastpath is None or extras:
            return ",".join(map(sa_text, chunk))
        return fastpath.sa_entries(chunk, names, interfaces, sa_text)  # the same text, 10x faster

    def sa_extra(sa: SA) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if events:
            extra["loss_events"] = events_json(meter.events_of(sa))
        if bins:
            assert observer is not None
            extra["bins"] = observer.sa_bins(sa, meter.events_of(sa))
        return extra

    def tunnel_entry(tunnel: Tunnel) -> dict[str, Any]:
        return dict(zip(TUNNEL_KEYS, tunnel_values(tunnel, names), strict=True))

    def tunnel_text(tunnel: Tunnel) -> str:
        return _TUNNEL_TEXT(tunnel_values(tunnel, names))

    def tunnel_texts(chunk: list[Tunnel]) -> str:
        if fastpath is None:
            return ",".join(map(tunnel_text, chunk))
        return fastpath.tunnel_entries(chunk, names, tunnel_text)

    capture: dict[str, Any] = {
        "file": source,
        "linktype": LINKTYPE_OF_DLT.get(linktype, linktype),  # as the capture file header says
        "frames": meter.frames,
        "classes": dict(meter.classes),
        "unconfirmed_sas": meter.table.unconfirmed_sas,
        "unconfirmed_datagrams": meter.table.unconfirmed_datagrams,
    }
    if error:
        capture["error"] = error
    sections = [_Section("sas", sas, sa_entry, sa_texts),
                _Section("tunnels", tunnel_pairs(sas), tunnel_entry, tunnel_texts),
                _Section("ike", list(meter.ike.pairs.values()), _ike_json)]
    return sections, capture


def tunnel_pairs(sas: list[SA]) -> list[Tunnel]:
    """The document's tunnels: for each SA (in `sas` order) with a tunnel id not taken yet whose partner is
    in `sas` too, (id, the first of the two in `sas`, the other, their indices), by id."""
    compiled = fastpath.tunnel_pairs(sas) if fastpath is not None else None  # a tenth of the time (bench/run.py)
    if compiled is not None:  # None: a tunnel id that is not an int (or None), left to the lines below
        return compiled
    index = {id(sa): i for i, sa in enumerate(sas)}
    pairs: dict[int, Tunnel] = {}
    for i, sa in enumerate(sas):
        tid = sa.tunnel_id
        if tid is None or tid in pairs or sa.peer is None:
            continue
        j = index.get(id(sa.peer))
        if j is not None:
            pairs[tid] = (tid, sa, sa.peer, i, j) if i <= j else (tid, sa.peer, sa, j, i)
    return [pairs[t] for t in sorted(pairs)]


def document(meter: Meter, source: str, linktype: int, error: str | None = None,
             interfaces: dict[int, str] | None = None, events: bool = False,
             observer: Observer | None = None) -> dict[str, Any]:
    """The `read --json` document. `interfaces`: the capture's interface numbers -> names (a pcapng
    file's IDBs); with `events`, every SA's `loss_events`; with an observer that bins, every SA's `bins`."""
    sections, capture = _sections(meter, source, linktype, error, interfaces, events, observer)
    return {**{s.key: [s.entry(x) for x in s.items] for s in sections}, "capture": capture}


class _Entries:
    """A list of the document whose entries are made as they are read, and not kept."""

    __slots__ = ("section",)

    def __init__(self, section: _Section) -> None:
        self.section = section

    def __len__(self) -> int:
        return len(self.section.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.section.entry(self.section.items[i])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(self.section.entry, self.section.items)


def document_view(meter: Meter, source: str, linktype: int, error: str | None = None,
                  interfaces: dict[int, str] | None = None, events: bool = False,
                  observer: Observer | None = None) -> dict[str, Any]:
    """`document(...)` for one pass that reads each entry once (the table): its lists make entries as they
    are read (at 100 000 SAs the document would hold 130 MB). Not with bins: they are counted as made."""
    sections, capture = _sections(meter, source, linktype, error, interfaces, events, observer)
    return {**{s.key: _Entries(s) for s in sections}, "capture": capture}


def write_json(out: TextIO, meter: Meter, source: str, linktype: int, error: str | None = None,
               interfaces: dict[int, str] | None = None, events: bool = False,
               observer: Observer | None = None) -> None:
    """`document(...)` written as `json.dumps(doc, separators=(",", ":"))` and a newline would write it,
    a chunk of entries at a time: at 100 000 SAs the dict would hold 150 MB and its text 55 MB more."""
    sections, capture = _sections(meter, source, linktype, error, interfaces, events, observer)
    out.write("{")
    for s in sections:
        out.write(f"{_ENCODE(s.key)}:[")
        for i in range(0, len(s.items), _CHUNK):
            chunk = s.items[i:i + _CHUNK]
            # the entries joined by commas (a list's text without its brackets)
            text = s.text(chunk) if s.text else _ENCODE([s.entry(x) for x in chunk])[1:-1]
            out.write("," + text if i else text)
        out.write("],")
    out.write(f'"capture":{_ENCODE(capture)}}}\n')


def _loss(sa: dict[str, Any]) -> str:
    if not sa["expected"]:
        return "-"
    if sa["local"]:
        return "n/a (sent here)"
    return f"{100.0 * sa['lost'] / sa['expected']:.3f}%"


def _endpoint(sa: dict[str, Any], side: str) -> str:
    addr = sa[side]
    port = sa["sport" if side == "src" else "dport"]
    return f"{addr}:{port}" if port is not None else addr


def _line(sa: dict[str, Any]) -> str:
    where = []
    if sa["interface"] is not None:
        where.append(f"if {sa['interface']}")
    if sa["vlan"] is not None:
        where.append(f"vlan {sa['vlan']}" + (f".{sa['inner_vlan']}" if sa["inner_vlan"] is not None else ""))
    gen = f" gen {sa['generation']}" if sa["generation"] else ""
    return (
        f"  {_endpoint(sa, 'src')} -> {_endpoint(sa, 'dst')}  spi 0x{sa['spi']:08x}{gen}"
        f"{'  [' + ', '.join(where) + ']' if where else ''}\n"
        f"      packets {sa['packets']}  bytes {sa['octets']}  loss {sa['lost']}/{sa['expected']} ({_loss(sa)})"
        f"  reordered {sa['reordered']} (max extent {sa['max_reorder_extent']})"
        f"  dup {sa['duplicates']}  late {sa['late']}  incomplete {sa['incomplete']}\n"
    )


def utc(t: float) -> str:
    """Epoch seconds as ISO 8601 UTC to the microsecond."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _block(sa: dict[str, Any], max_events: int) -> str:
    """An SA's lines: the figures, then its loss events (the entry is read once: a view builds it)."""
    return _line(sa) + _events(sa, max_events)


def _events(sa: dict[str, Any], limit: int) -> str:
    """An SA's loss events: all in sequence order, or the `limit` longest when there are more."""
    events = sa.get("loss_events")
    if not events:
        return ""
    shown = events if len(events) <= limit else sorted(events, key=lambda e: (-e["count"], e["first"]))[:limit]
    lines = [f"      loss events {len(events)}" + (f" ({limit} longest shown)" if len(events) > limit else "") + "\n"]
    for e in shown:
        span = f"{e['first']}" if e["first"] == e["last"] else f"{e['first']}..{e['last']}"
        lines.append(f"        {utc(e['after'])}  {e['before'] - e['after']:+.6f} s  numbers {span}"
                     f"  count {e['count']}\n")
    return "".join(lines)


def write_table(doc: dict[str, Any], out: TextIO, max_events: int = 20) -> None:
    """One block per tunnel (peer A ⇄ peer B), then unpaired SAs, IKE peers and the frame classes.
    Reads each entry once (`doc` may be a `document_view`)."""
    sas = doc["sas"]
    paired: set[int] = set()
    for t in doc["tunnels"]:
        name = f" \"{t['name']}\"" if t["name"] else ""
        out.write(f"tunnel {t['id']}{name}: {t['a']} <=> {t['b']}  "
                  f"spi 0x{t['spis'][0]:08x} / 0x{t['spis'][1]:08x}\n")
        for i in t["sas"]:
            out.write(_block(sas[i], max_events))
            paired.add(i)
    unpaired = [i for i in range(len(sas)) if i not in paired]
    if unpaired:
        out.write("unpaired SAs:\n")
        for i in unpaired:
            out.write(_block(sas[i], max_events))
    for ike in doc["ike"]:
        out.write(f"IKE {ike['a']} <=> {ike['b']}: {ike['packets']} packets, {ike['octets']} bytes\n")
    cap = doc["capture"]
    classes = ", ".join(f"{k} {v}" for k, v in cap["classes"].items() if v)
    out.write(f"{cap['frames']} frames: {classes}\n")
    if cap.get("error"):
        out.write(f"warning: capture damaged after these frames: {cap['error']}\n")
