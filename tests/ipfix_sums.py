"""Sum exported IPFIX records per SA and compare them with `espmeter read --json` figures."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from exporter.collect import read_file
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
        if "IPSecSPI" not in rec:
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
