"""`espmeter read` output: the JSON document other tools rely on (docs/read-json.md) and the table."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any, TextIO

from agent.decode import LINKTYPE_OF_DLT
from agent.drill import Observer
from agent.meter import Meter
from agent.records import tunnel_name
from agent.sa import SA
from agent.tracker import LossRun


def sa_json(sa: SA, tunnel_names: dict[str, str]) -> dict[str, Any]:
    sport, dport = sa.ports
    return {
        "src": str(sa.src),
        "dst": str(sa.dst),
        "spi": sa.spi,
        "encap": "udp" if sa.udp else "esp",
        "sport": sport,
        "dport": dport,
        "vlan": sa.vlan,
        "inner_vlan": sa.inner_vlan,
        "interface": sa.ifindex,
        "direction": sa.direction,
        "local": sa.local,
        "generation": sa.generation,
        "packets": sa.packets,
        "octets": sa.octets,
        "datagrams": sa.datagrams,
        "first_seq": sa.first if sa.last >= 0 else None,
        "last_seq": sa.last if sa.last >= 0 else None,
        "expected": sa.expected,
        "lost": sa.lost,
        "reordered": sa.reordered,
        "max_reorder_extent": sa.max_extent,
        "duplicates": sa.duplicates,
        "late": sa.late,
        "implausible": sa.implausible,
        "incomplete": sa.incomplete,
        "peer_spi": sa.peer.spi if sa.peer is not None else None,
        "tunnel": sa.tunnel_id,
        "tunnel_name": tunnel_name(sa, tunnel_names),
        "first_seen": round(sa.first_seen, 6),
        "last_seen": round(sa.last_seen, 6),
    }


def events_json(events: list[LossRun]) -> list[dict[str, Any]]:
    return [{"first": e.first, "last": e.last, "count": e.count, "after": round(e.after, 6),
             "before": round(e.before, 6)} for e in events]


def document(meter: Meter, source: str, linktype: int, error: str | None = None,
             interfaces: dict[int, str] | None = None, events: bool = False,
             observer: Observer | None = None) -> dict[str, Any]:
    """The `read --json` document. `interfaces`: the capture's interface numbers -> names (a pcapng
    file's IDBs); with `events`, every SA's `loss_events`; with an observer that bins, every SA's `bins`."""
    sas = meter.table.all_sas()
    names = meter.producer.names
    index = {id(sa): i for i, sa in enumerate(sas)}
    tunnels: dict[int, dict[str, Any]] = {}
    for sa in sas:
        peer = sa.peer
        if sa.tunnel_id is None or peer is None or sa.tunnel_id in tunnels or id(peer) not in index:
            continue
        fwd, rev = (sa, peer) if index[id(sa)] <= index[id(peer)] else (peer, sa)
        tunnels[sa.tunnel_id] = {
            "id": sa.tunnel_id,
            "name": tunnel_name(fwd, names),
            "a": str(fwd.src),
            "b": str(fwd.dst),
            "sas": [index[id(fwd)], index[id(rev)]],
            "spis": [fwd.spi, rev.spi],
        }
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
    sa_docs = [sa_json(sa, names) for sa in sas]
    for j in sa_docs:
        j["interface"] = (interfaces or {}).get(j["interface"], j["interface"])
    for sa, doc in zip(sas, sa_docs, strict=True):
        if events:
            doc["loss_events"] = events_json(meter.events_of(sa))
        if observer is not None and observer.bin_us is not None:
            doc["bins"] = observer.sa_bins(sa, meter.events_of(sa))
    return {
        "sas": sa_docs,
        "tunnels": sorted(tunnels.values(), key=lambda t: t["id"]),
        "ike": [
            {
                "a": str(ipaddress.ip_address(p.a)),
                "b": str(ipaddress.ip_address(p.b)),
                "packets": p.packets,
                "octets": p.octets,
                "first_seen": round(p.first_seen, 6),
                "last_seen": round(p.last_seen, 6),
            }
            for p in meter.ike.pairs.values()
        ],
        "capture": capture,
    }


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
    """One block per tunnel (peer A ⇄ peer B), then unpaired SAs, IKE peers and the frame classes."""
    sas = doc["sas"]
    paired: set[int] = set()
    for t in doc["tunnels"]:
        name = f" \"{t['name']}\"" if t["name"] else ""
        out.write(f"tunnel {t['id']}{name}: {t['a']} <=> {t['b']}  "
                  f"spi 0x{t['spis'][0]:08x} / 0x{t['spis'][1]:08x}\n")
        for i in t["sas"]:
            out.write(_line(sas[i]) + _events(sas[i], max_events))
            paired.add(i)
    unpaired = [sa for i, sa in enumerate(sas) if i not in paired]
    if unpaired:
        out.write("unpaired SAs:\n")
        for sa in unpaired:
            out.write(_line(sa) + _events(sa, max_events))
    for ike in doc["ike"]:
        out.write(f"IKE {ike['a']} <=> {ike['b']}: {ike['packets']} packets, {ike['octets']} bytes\n")
    cap = doc["capture"]
    classes = ", ".join(f"{k} {v}" for k, v in cap["classes"].items() if v)
    out.write(f"{cap['frames']} frames: {classes}\n")
    if cap.get("error"):
        out.write(f"warning: capture damaged after these frames: {cap['error']}\n")
