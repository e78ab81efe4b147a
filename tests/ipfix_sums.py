"""Sum exported IPFIX records per SA and compare them with `espmeter read --json` figures."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from exporter.collect import is_loss_event, read_file
from tests.conftest import run_read

# read --json key -> (forward IE name, reverse IE name in biflow records)
DELTAS = {
    "packets": ("packetDeltaCount", "reversePacketDeltaCount"),
    "octets": ("octetDeltaCount", "reverseOctetDeltaCount"),
    "datagrams": ("espDatagramDeltaCount", "reverseEspDatagramDeltaCount"),
    "lost": ("espLostPacketDeltaCount", "reverseEspLostPacketDeltaCount"),
    "reordered": ("espReorderedPacketDeltaCount", "reverseEspReorderedPacketDeltaCount"),
    "duplicates": ("espDuplicatePacketDeltaCount", "reverseEspDuplicatePacketDeltaCount"),
    "late": ("espLatePacketDeltaCount", "reverseEspLatePacketDeltaCount"),
    "expected": ("espExpectedPacketDeltaCount", "reverseEspExpectedPacketDeltaCount"),
    "incomplete": ("espIncompleteDatagramDeltaCount", "reverseEspIncompleteDatagramDeltaCount"),
}

SAKey = tuple[str, str, int, Any, Any]


def read_json(path: str, *args: str) -> dict[str, Any]:
    return run_read(path, *args).json()


def truth(doc: dict[str, Any]) -> dict[SAKey, dict[str, int]]:
    """read --json per SA (generations and observation points summed, as records carry neither)."""
    out: dict[SAKey, dict[str, int]] = defaultdict(lambda: dict.fromkeys(DELTAS, 0))
    for sa in doc["sas"]:
        key = (sa["src"], sa["dst"], sa["spi"], sa["sport"], sa["dport"])
        for k in DELTAS:
            out[key][k] += sa[k]
    return dict(out)


def _addr(rec: dict[str, Any], side: str) -> str:
    return str(rec.get(f"{side}IPv4Address") or rec.get(f"{side}IPv6Address"))


def sums(records: list[dict[str, Any]]) -> dict[SAKey, dict[str, int]]:
    """Per-SA sums of the delta fields of SA records and of both halves of biflow records."""
    out: dict[SAKey, dict[str, int]] = defaultdict(lambda: dict.fromkeys(DELTAS, 0))
    for rec in records:
        if not is_sa_record(rec):
            continue
        src, dst = _addr(rec, "source"), _addr(rec, "destination")
        sport, dport = rec.get("sourceTransportPort"), rec.get("destinationTransportPort")
        fwd = out[(src, dst, rec["IPSecSPI"], sport, dport)]
        for k, (name, _) in DELTAS.items():
            fwd[k] += rec.get(name, 0)
        if "reverseIPSecSPI" in rec:
            rev = out[(dst, src, rec["reverseIPSecSPI"], dport, sport)]
            for k, (_, name) in DELTAS.items():
                rev[k] += rec.get(name, 0)
    return dict(out)


def is_sa_record(rec: dict[str, Any]) -> bool:
    """An SA or biflow data record (loss-event records carry IPSecSPI too, but no counters)."""
    return "IPSecSPI" in rec and not is_loss_event(rec)


def event_truth(doc: dict[str, Any]) -> dict[SAKey, dict[str, Any]]:
    """read --events per SA: the events (numbers, after/before in ms), their number and longest."""
    out: dict[SAKey, dict[str, Any]] = defaultdict(lambda: {"events": [], "count": 0, "longest": 0})
    for sa in doc["sas"]:
        want = out[(sa["src"], sa["dst"], sa["spi"], sa["sport"], sa["dport"])]
        for e in sa["loss_events"]:
            want["events"].append((e["first"], e["last"], e["count"], round(e["after"] * 1e6) // 1000,
                                   round(e["before"] * 1e6) // 1000))
            want["count"] += 1
            want["longest"] = max(want["longest"], e["count"])
    for want in out.values():
        want["events"].sort()
    return {k: v for k, v in out.items() if v["count"]}


def events_exported(records: list[dict[str, Any]]) -> dict[SAKey, dict[str, Any]]:
    """The same from the export: loss-event records, and the SA records' event counters."""
    out: dict[SAKey, dict[str, Any]] = defaultdict(lambda: {"events": [], "count": 0, "longest": 0})
    for rec in records:
        src, dst = _addr(rec, "source"), _addr(rec, "destination")
        sport, dport = rec.get("sourceTransportPort"), rec.get("destinationTransportPort")
        if is_loss_event(rec):
            assert "espLostPacketDeltaCount" not in rec  # a collector summing loss must not count it twice
            out[(src, dst, rec["IPSecSPI"], sport, dport)]["events"].append((
                rec["espLossEventFirstSequenceNumber"], rec["espLossEventLastSequenceNumber"],
                rec["espLossEventPacketCount"], _ms(rec["espLossEventAfterMilliseconds"]),
                _ms(rec["espLossEventBeforeMilliseconds"])))
        elif is_sa_record(rec):
            sides = [((src, dst, rec["IPSecSPI"], sport, dport), "")]
            if "reverseIPSecSPI" in rec:
                sides.append(((dst, src, rec["reverseIPSecSPI"], dport, sport), "reverse"))
            for key, prefix in sides:
                count = rec.get(f"{prefix}EspLossEventDeltaCount" if prefix else "espLossEventDeltaCount", 0)
                longest = rec.get(f"{prefix}EspLongestLossRun" if prefix else "espLongestLossRun", 0)
                out[key]["count"] += count
                out[key]["longest"] = max(out[key]["longest"], longest)
    for got in out.values():
        got["events"].sort()
    return {k: v for k, v in out.items() if v["count"] or v["events"]}


def _ms(value: Any) -> int:
    """dateTimeMilliseconds as decoded (datetime or int) to epoch milliseconds."""
    if isinstance(value, int):
        return value
    from datetime import UTC

    return round(value.replace(tzinfo=value.tzinfo or UTC).timestamp() * 1000)


def exported_sums(ipfix_file: str) -> dict[SAKey, dict[str, int]]:
    return sums(read_file(ipfix_file))


def pairs(records: list[dict[str, Any]]) -> set[tuple[int, int]]:
    """(spi, peer spi) from SA records that carry espPeerSPI, or from biflow records."""
    out = set()
    for rec in records:
        if "espPeerSPI" in rec:
            out.add((rec["IPSecSPI"], rec["espPeerSPI"]))
        if "reverseIPSecSPI" in rec:
            out.add((rec["IPSecSPI"], rec["reverseIPSecSPI"]))
            out.add((rec["reverseIPSecSPI"], rec["IPSecSPI"]))
    return out
