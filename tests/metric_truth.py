"""The generator's truth (tests/gt) as the Prometheus series espmeter must serve for it."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from typing import Any

from agent.metrics import COUNTERS

Samples = dict[str, dict[tuple, float]]  # metric name -> {sorted (label, value) items: value}


def series_labels(src: str, dst: str, spi: int, encap: str, sport: int | None, dport: int | None,
                  interface: str) -> tuple[tuple, tuple]:
    """(per-SA labels, per-tunnel labels), each as sorted (name, value) items."""
    sa = (("dst", dst), ("encap", encap), ("interface", interface), ("spi", f"0x{spi:08x}"), ("src", src))
    forward = ipaddress.ip_address(src) <= ipaddress.ip_address(dst)
    a, b, pa, pb = (src, dst, sport, dport) if forward else (dst, src, dport, sport)
    tunnel = (("direction", "a_to_b" if forward else "b_to_a"), ("peer_a", a), ("peer_b", b),
              ("ports", f"{pa}/{pb}" if encap == "udp" else ""))
    return sa, tunnel


def truth(doc: dict[str, Any], interface: str = "") -> tuple[Samples, Samples]:
    """The generator's figures summed per SA label set and per tunnel direction."""
    per_sa: Samples = defaultdict(lambda: defaultdict(int))
    per_tunnel: Samples = defaultdict(lambda: defaultdict(int))
    for sa in doc["sas"]:
        sa_key, tunnel_key = series_labels(sa["src"], sa["dst"], sa["spi"], sa["encap"], sa["sport"], sa["dport"],
                                           interface)
        for c in COUNTERS:
            per_sa[f"espmeter_sa_{c}_total"][sa_key] += sa[c]
            per_tunnel[f"espmeter_tunnel_{c}_total"][tunnel_key] += sa[c]
    return per_sa, per_tunnel
