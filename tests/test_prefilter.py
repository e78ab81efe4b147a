"""The BPF prefilter keeps everything espmeter needs: ESP behind VLAN/QinQ tags, behind IPv6 extension
headers, every fragment, ESP-in-UDP and IKE. Compiled by libpcap and applied to the ground-truth captures;
the per-SA figures must not change. (The live tests apply it in the kernel on a veth pair.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.capture import L3_FILTER, PREFILTER, build_filter
from tests.gt.scenarios import registry
from tests.ipfix_sums import read_json

SCENARIOS = registry()
ETHERNET = ["vlan", "ipv6_ext", "fragments_all", "fragments_out_of_order", "fragments_nonfirst_lost",
            "fragments_first_lost", "nat_t", "rekey", "random_loss", "mixed", "esn_wrap", "sll", "sll2"]


@pytest.mark.parametrize("name", ETHERNET)
def test_prefilter_loses_nothing_espmeter_needs(name: str, tmp_path: Path) -> None:
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS[name]().write(cap)
    plain = read_json(cap)
    filtered = read_json(cap, "--bpf", L3_FILTER if name.startswith("sll") else PREFILTER)
    assert filtered["sas"] == plain["sas"]
    assert filtered["ike"] == plain["ike"]
    for cls in ("esp", "ike", "keepalive", "orphan_fragment", "truncated"):
        assert filtered["capture"]["classes"][cls] == plain["capture"]["classes"][cls], cls


def test_prefilter_keeps_other_traffic_out(tmp_path: Path) -> None:
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS["malformed"]().write(cap)
    plain = read_json(cap)["capture"]["classes"]
    filtered = read_json(cap, "--bpf", PREFILTER)["capture"]["classes"]
    assert plain["other"] > 0 and filtered["other"] < plain["other"]


def test_user_filter_is_anded() -> None:
    assert build_filter("host 192.0.2.1") == f"({PREFILTER}) and (host 192.0.2.1)"
    assert build_filter(None) == PREFILTER
    assert build_filter(None, 113) == L3_FILTER  # Linux SLL: no VLAN keyword
