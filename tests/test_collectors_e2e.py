"""Ground-truth captures → `espmeter read --collector udp://…` → real collectors → the same figures.

nfcapd/nfdump (per SA and per tunnel biflow: packets and bytes, in and out) and nfacctd with the
generated primitives (every enterprise field and IE 295) decode what espmeter exported from a capture
whose every number the generator knows; `read --json` of the same capture is proven exact by
tests/test_groundtruth.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from exporter.dictionaries import render
from tests.collectors import nfacctd, nfcapd, nfdump_json
from tests.gt.scenarios import registry
from tests.ipfix_sums import read_json

SCENARIOS = registry()
CAPTURES = ["random_loss", "nat_t", "ipv6_ext", "dup_loss", "reorder"]  # one SA per address/port pair


def _capture(tmp_path: Path, name: str) -> tuple[str, dict]:
    path = str(tmp_path / f"{name}.pcap")
    SCENARIOS[name]().write(path)
    return path, read_json(path, "--events")


def _export(cap: str, url: str, tmp_path: Path, mode: str = "sa") -> None:
    cfg = tmp_path / f"{mode}.yaml"
    cfg.write_text(f"records: {mode}\nactive_timeout_s: 1\n")
    subprocess.run([sys.executable, "-m", "agent.cli", "read", cap, "--collector", url, "--config", str(cfg)],
                   check=True, capture_output=True)


def _flow_key(src: str, dst: str, sport: int | None, dport: int | None) -> tuple:
    return src, dst, sport or 0, dport or 0


def _nfdump_addr(row: dict, side: str) -> str:
    return row.get(f"{side}4_addr") or row[f"{side}6_addr"]


def test_nfdump_per_sa_packets_and_bytes(tmp_path: Path) -> None:
    want: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    with nfcapd(tmp_path) as col:
        for name in CAPTURES:
            cap, doc = _capture(tmp_path, name)
            for sa in doc["sas"]:
                w = want[_flow_key(sa["src"], sa["dst"], sa["sport"], sa["dport"])]
                w[0] += sa["packets"]
                w[1] += sa["octets"]
                w[2] = 17 if sa["encap"] == "udp" else 50
            _export(cap, col.url, tmp_path)
        flows = col.stop()
    got: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in nfdump_json(flows):
        g = got[_flow_key(_nfdump_addr(row, "src"), _nfdump_addr(row, "dst"), row["src_port"], row["dst_port"])]
        g[0] += row["in_packets"]
        g[1] += row["in_bytes"]
        g[2] = row["proto"]
    assert dict(got) == dict(want)


def test_nfdump_biflow_in_and_out(tmp_path: Path) -> None:
    want: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    with nfcapd(tmp_path) as col:
        for name in CAPTURES:
            cap, doc = _capture(tmp_path, name)
            for t in doc["tunnels"]:
                fwd, rev = (doc["sas"][i] for i in t["sas"])
                w = want[_flow_key(fwd["src"], fwd["dst"], fwd["sport"], fwd["dport"])]
                for i, v in enumerate((fwd["packets"], fwd["octets"], rev["packets"], rev["octets"])):
                    w[i] += v
            _export(cap, col.url, tmp_path, "biflow")
        flows = col.stop()
    got: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for row in nfdump_json(flows):
        key = _flow_key(_nfdump_addr(row, "src"), _nfdump_addr(row, "dst"), row["src_port"], row["dst_port"])
        g = got[key]
        for i, k in enumerate(("in_packets", "in_bytes", "out_packets", "out_bytes")):
            g[i] += row.get(k, 0)
    paired = {k: v for k, v in got.items() if k in want}
    assert paired == dict(want)
    assert all(v[2] > 0 for v in paired.values()), "every tunnel shows both directions"


FIELDS = {"lost": "esp_lost_packet_delta_count", "reordered": "esp_reordered_packet_delta_count",
          "duplicates": "esp_duplicate_packet_delta_count", "late": "esp_late_packet_delta_count",
          "expected": "esp_expected_packet_delta_count", "datagrams": "esp_datagram_delta_count",
          "incomplete": "esp_incomplete_datagram_delta_count"}


EVENT_FIELDS = ("first_sequence_number", "last_sequence_number", "after_milliseconds", "before_milliseconds",
                "packet_count")


def test_nfacctd_every_enterprise_field(tmp_path: Path) -> None:
    docs = []
    with nfacctd(tmp_path, render("pmacct", 32473)) as col:
        for name in CAPTURES:
            cap, doc = _capture(tmp_path, name)
            docs.append(doc)
            _export(cap, col.url, tmp_path)
        rows = col.stop()
    got: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    peers: dict[int, int] = {}
    events: dict[int, list[tuple]] = defaultdict(list)
    for row in rows:
        spi = int(row["ipsec_spi"], 16)
        if not spi:
            continue  # options records
        if int(row["esp_loss_event_packet_count"]):  # a loss-event record: no counters of the SA's
            events[spi].append(tuple(int(row[f"esp_loss_event_{k}"]) for k in EVENT_FIELDS))
            assert int(row["esp_lost_packet_delta_count"]) == 0
            continue
        g = got[spi]
        g["events"] += int(row["esp_loss_event_delta_count"])
        g["longest"] = max(g["longest"], int(row["esp_longest_loss_run"]))
        g = got[spi]
        g["packets"] += row["packets"]
        g["octets"] += row["bytes"]
        for k, name in FIELDS.items():
            g[k] += int(row[name])
        if int(row["esp_peer_spi"], 16):
            peers[spi] = int(row["esp_peer_spi"], 16)
    want, want_events = {}, {}
    for doc in docs:
        for sa in doc["sas"]:
            runs = sa["loss_events"]
            want[sa["spi"]] = {"packets": sa["packets"], "octets": sa["octets"], **{k: sa[k] for k in FIELDS},
                               "events": len(runs), "longest": max((e["count"] for e in runs), default=0)}
            if runs:
                want_events[sa["spi"]] = sorted((e["first"], e["last"], round(e["after"] * 1e6) // 1000,
                                                 round(e["before"] * 1e6) // 1000, e["count"]) for e in runs)
            if sa["peer_spi"] is not None:
                assert peers[sa["spi"]] == sa["peer_spi"]
    assert {k: dict(v) for k, v in got.items()} == want
    assert {k: sorted(v) for k, v in events.items()} == want_events
    assert sum(len(v) for v in want_events.values()) > 20
