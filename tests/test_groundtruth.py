"""Ground truth for `espmeter read --json` (docs/read-json.md), from generated captures.

Every scenario is written by tests/gt, which knows exactly what it dropped, duplicated, delayed,
fragmented or garbled; the real CLI runs in a subprocess and every field of every SA is compared.

Readings of the contract where it leaves room (what a network engineer would expect):
- `capture.linktype` is the LINKTYPE_* value of the file (101 for raw IP, as in the pcap header and
  pcapng IDB), not libpcap's platform DLT (12).
- A frame cut by the snaplen whose ESP header (SPI + sequence number) is intact is an `esp` frame and
  counts normally; `octets` come from the IP header, never from the captured length.  `truncated`
  means the cut falls before the ESP header (or inside the IP header) is complete; such a datagram
  is not observed, so its number counts as lost.
- `first_seen`/`last_seen` span every frame attributed to the SA (duplicates, late and implausible
  datagrams, non-first fragments), compared to the microsecond.
- An implausible jump never confirmed: datagrams +1, late +1, implausible +1, packets/octets include
  it, first/last_seq and lost unaffected.  A confirmed jump: implausible +1 and the gap is lost.
- The restarting datagram (<= 1024) that a following one confirms belongs to generation 1.
- With ESN the high 32 bits of the first number seen are taken as 0.
- `max_reorder_extent` is 0 when nothing was reordered; `expected` 0 and seqs null without datagrams.
- `tunnels[].name` is null: `read` has no configuration naming tunnels.  Tunnel ids are arbitrary and
  matched through the SAs; the order of `sas[]`, `tunnels[]` and `ike[]` is not part of the contract.
- `ike[].octets` sum IP total lengths like SA octets; NAT keepalives are neither IKE nor ESP.
- SLL/SLL2 packet type 4 (outgoing) is direction "out", 0 (to us) is "in"; `interface` is the SLL2
  ifindex; in a pcapng file the interface (IDB) a packet was captured on, by its if_name or as if<N>;
  null otherwise (a pcap file knows no interface).
- ARP, unknown ethertypes, TCP and ICMP are `other`; an IPv4 header with IHL < 5 or a total length
  below its header length is `malformed`.
- A late datagram is final because it is behind the window, or because its gap is older than the
  reorder time even inside the window (500 positions at 5 ms = 2.5 s); either way its number is lost.
- With ESN, loss and reordering across the 2**32 wrap are inferred from the 64-bit number: a low
  wire value after a wrap is not a restart.
- Pairing across interfaces or VLANs is never needed to get the expected answer: scenarios keep the
  right partner on the same observation point and first seen closest in time; a restarted SA (two
  generations) is left unpaired.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_read
from tests.gt import Scenario, registry

KEY = ("src", "dst", "spi", "sport", "dport", "vlan", "inner_vlan", "interface", "generation")
SA_FIELDS = ("src", "dst", "spi", "encap", "sport", "dport", "vlan", "inner_vlan", "interface", "direction",
             "generation", "packets", "octets", "datagrams", "first_seq", "last_seq", "expected", "lost",
             "reordered", "max_reorder_extent", "duplicates", "late", "implausible", "incomplete", "peer_spi",
             "tunnel", "first_seen", "last_seen")
TIMES = ("first_seen", "last_seen")


def sa_key(sa: dict[str, Any]) -> tuple:
    return tuple(sa[k] for k in KEY)


def _same(field: str, want: Any, got: Any) -> bool:
    if field in TIMES:
        return isinstance(got, int | float) and math.isclose(want, got, rel_tol=0, abs_tol=1e-6)
    return type(want) is type(got) and want == got


def compare_sas(expected: list[dict], actual: list[dict]) -> dict[int, int]:
    """Every field of every SA; returns expected tunnel id -> actual tunnel id."""
    by_key = {sa_key(sa): sa for sa in actual}
    assert len(by_key) == len(actual), "two sas[] entries share one key"
    assert len(actual) == len(expected), f"{len(actual)} SAs reported, {len(expected)} expected"
    problems, tunnel_map = [], {}
    for want in expected:
        got = by_key.get(sa_key(want))
        if got is None:
            problems.append(f"missing SA {sa_key(want)}")
            continue
        for field in SA_FIELDS:
            if field == "tunnel":
                continue
            if field not in got or not _same(field, want[field], got[field]):
                problems.append(f"{sa_key(want)} {field}: want {want[field]!r} got {got.get(field, '<absent>')!r}")
        if (want["tunnel"] is None) != (got.get("tunnel") is None):
            problems.append(f"{sa_key(want)} tunnel: want {want['tunnel']!r} got {got.get('tunnel')!r}")
        elif want["tunnel"] is not None and tunnel_map.setdefault(want["tunnel"], got["tunnel"]) != got["tunnel"]:
            problems.append(f"{sa_key(want)} is not in the same tunnel as its peer")
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:60])
    assert len(set(tunnel_map.values())) == len(tunnel_map), "two pairs share one tunnel id"
    return tunnel_map


def compare_events(expected: list[dict], actual: list[dict]) -> None:
    """`loss_events` of every SA: numbers exactly, times to the microsecond."""
    by_key = {sa_key(sa): sa for sa in actual}
    problems = []
    for want in expected:
        got = by_key[sa_key(want)].get("loss_events")
        if got is None or len(got) != len(want["loss_events"]) or any(
                (w["first"], w["last"], w["count"]) != (g["first"], g["last"], g["count"])
                or not all(math.isclose(w[k], g[k], rel_tol=0, abs_tol=1e-6) for k in ("after", "before"))
                for w, g in zip(want["loss_events"], got, strict=False)):
            problems.append(f"{sa_key(want)} loss_events: want {want['loss_events']!r} got {got!r}")
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:20])


def check_invariant(actual: list[dict]) -> None:
    for sa in actual:
        assert sa["lost"] + sa["datagrams"] - sa["duplicates"] - sa["late"] == sa["expected"], sa_key(sa)
        assert sa["expected"] == (sa["last_seq"] - sa["first_seq"] + 1 if sa["datagrams"] else 0), sa_key(sa)


def compare_tunnels(expected: dict, actual: dict, tunnel_map: dict[int, int]) -> None:
    got_tunnels = {t["id"]: t for t in actual["tunnels"]}
    assert len(got_tunnels) == len(actual["tunnels"]) == len(expected["tunnels"])
    for want in expected["tunnels"]:
        got = got_tunnels[tunnel_map[want["id"]]]
        fwd, rev = (actual["sas"][i] for i in got["sas"])
        assert [sa_key(fwd), sa_key(rev)] == [sa_key(expected["sas"][i]) for i in want["sas"]]
        assert (got["a"], got["b"], got["spis"], got["name"]) == (want["a"], want["b"], want["spis"], None)
        assert fwd["tunnel"] == rev["tunnel"] == got["id"]
        assert (fwd["peer_spi"], rev["peer_spi"]) == (rev["spi"], fwd["spi"])


def compare_ike(expected: list[dict], actual: list[dict]) -> None:
    def pair(flow: dict) -> frozenset:
        return frozenset((flow["a"], flow["b"]))

    got = {pair(f): f for f in actual}
    assert len(got) == len(actual) == len(expected)
    for want in expected:
        flow = got[pair(want)]
        for field in ("a", "b", "packets", "octets", *TIMES):
            assert _same(field, want[field], flow[field]), (field, want, flow)


def compare_capture(expected: dict, actual: dict) -> None:
    assert actual["file"] == expected["file"]
    assert actual["linktype"] == expected["linktype"]
    assert actual["classes"] == expected["classes"]
    assert actual["frames"] == expected["frames"] == sum(actual["classes"].values())
    assert actual["unconfirmed_sas"] == actual["unconfirmed_datagrams"] == 0


def check(scenario: str | Scenario, tmp_path: Path) -> dict[str, Any]:
    """Write, read back through the CLI, compare everything; return the actual JSON."""
    sc = registry()[scenario]() if isinstance(scenario, str) else scenario
    path = tmp_path / f"{sc.name}.{sc.fmt}"
    expected = sc.write(path)
    actual = run_read(path, "--events").json()
    assert set(actual) >= {"sas", "tunnels", "ike", "capture"}
    compare_capture(expected["capture"], actual["capture"])
    tunnel_map = compare_sas(expected["sas"], actual["sas"])
    compare_events(expected["sas"], actual["sas"])
    check_invariant(actual["sas"])
    compare_tunnels(expected, actual, tunnel_map)
    compare_ike(expected["ike"], actual["ike"])
    return actual


def find(actual: dict, **match: Any) -> list[dict]:
    return [sa for sa in actual["sas"] if all(sa[k] == v for k, v in match.items())]


def totals(actual: dict, field: str) -> int:
    return sum(sa[field] for sa in actual["sas"])


def test_no_loss(tmp_path: Path) -> None:
    actual = check("no_loss", tmp_path)
    assert totals(actual, "lost") == totals(actual, "reordered") == totals(actual, "duplicates") == 0
    assert len(actual["tunnels"]) == 3


def test_random_loss(tmp_path: Path) -> None:
    actual = check("random_loss", tmp_path)
    assert totals(actual, "lost") > 0 and totals(actual, "reordered") == 0


def test_burst_loss(tmp_path: Path) -> None:
    actual = check("burst_loss", tmp_path)
    assert find(actual, spi=0x51)[0]["lost"] == 61  # 10 + 50 + 999 (last_seq is 1000)
    assert find(actual, spi=0x52)[0]["lost"] == 300


def test_gilbert_elliott_bursts(tmp_path: Path) -> None:
    actual = check("gilbert_elliott", tmp_path)
    sa = find(actual, spi=0x170)[0]
    assert sa["lost"] > 0 and max(e["count"] for e in sa["loss_events"]) >= 3


def test_reordered_fills_inside_gaps(tmp_path: Path) -> None:
    actual = check("reorder_loss", tmp_path)
    sa = find(actual, spi=0x191)[0]
    spans = [(e["first"], e["last"]) for e in sa["loss_events"]]
    assert spans == [(100, 104), (106, 110), (200, 204), (300, 304), (400, 409), (600, 600)]
    split_low, split_high = sa["loss_events"][:2]
    assert split_low["before"] == split_high["after"]  # both the arrival of the reordered 105
    assert sa["loss_events"][-1]["after"] > sa["loss_events"][-1]["before"]  # the delayed 599 came after 601


def test_outage_longer_than_idle_timeout(tmp_path: Path) -> None:
    actual = check("outage", tmp_path)
    for spi in (0x1A1, 0x1A2):
        (event,) = find(actual, spi=spi)[0]["loss_events"]
        assert (event["first"], event["last"], event["count"]) == (1000, 1499, 500)
        assert event["before"] - event["after"] > 40
    (big,) = find(actual, spi=0x1A3)[0]["loss_events"]
    assert (big["first"], big["last"]) == (2000, 4999)


def test_reorder_without_loss(tmp_path: Path) -> None:
    actual = check("reorder", tmp_path)
    assert totals(actual, "lost") == 0 and totals(actual, "late") == 0
    assert find(actual, spi=0x61)[0]["max_reorder_extent"] == 900
    first = find(actual, spi=0x63)[0]
    assert (first["first_seq"], first["reordered"], first["max_reorder_extent"]) == (1, 1, 5)


def test_duplicates_with_loss(tmp_path: Path) -> None:
    actual = check("dup_loss", tmp_path)
    sa = find(actual, spi=0x71)[0]
    assert (sa["duplicates"], sa["lost"], sa["late"]) == (3, 4, 0)


@pytest.mark.parametrize(("name", "lost", "incomplete", "orphans"), [
    ("fragments_all", 0, 0, 0),
    ("fragments_nonfirst_lost", 0, 3, 0),
    ("fragments_first_lost", 3, 0, 18),
    ("fragments_out_of_order", 0, 0, 0),
])
def test_fragments(tmp_path: Path, name: str, lost: int, incomplete: int, orphans: int) -> None:
    actual = check(name, tmp_path)
    for spi in (0x81, 0x83, 0x85):
        sa = find(actual, spi=spi)[0]
        assert (sa["lost"], sa["incomplete"]) == (lost, incomplete), name
    assert actual["capture"]["classes"]["orphan_fragment"] == orphans


def test_nat_t_ike_and_keepalives(tmp_path: Path) -> None:
    actual = check("nat_t", tmp_path)
    classes = actual["capture"]["classes"]
    assert (classes["ike"], classes["keepalive"]) == (14, 10)
    assert {sa["encap"] for sa in actual["sas"]} == {"udp"}
    assert find(actual, spi=0xB1)[0]["sport"] == 34567


def test_rekey_overlapping_generations(tmp_path: Path) -> None:
    actual = check("rekey", tmp_path)
    assert sorted(sorted(t["spis"]) for t in actual["tunnels"]) == [[0x1000, 0x1001], [0x2000, 0x2001]]


def test_esn_wrap(tmp_path: Path) -> None:
    actual = check("esn_wrap", tmp_path)
    sa = find(actual, spi=0xE1)[0]
    assert (sa["first_seq"], sa["last_seq"], sa["lost"], sa["generation"]) == (2**32 - 50, 2**32 + 49, 0, 0)
    lossy = find(actual, spi=0xE3)[0]
    assert (lossy["last_seq"], lossy["lost"], lossy["reordered"], lossy["generation"]) == (2**32 + 99, 2, 2, 0)


def test_sequence_restart(tmp_path: Path) -> None:
    actual = check("restart", tmp_path)
    gens = sorted(find(actual, spi=0xF1), key=lambda sa: sa["generation"])
    assert [(g["generation"], g["first_seq"], g["last_seq"], g["lost"]) for g in gens] == [
        (0, 1, 3000, 0), (1, 1, 200, 0)]


def test_implausible_jump(tmp_path: Path) -> None:
    actual = check("implausible", tmp_path)
    held = find(actual, spi=0x91)[0]
    assert (held["late"], held["implausible"], held["lost"], held["last_seq"]) == (1, 1, 0, 100)
    confirmed = find(actual, spi=0x93)[0]
    assert (confirmed["implausible"], confirmed["late"], confirmed["lost"]) == (1, 0, 10**7)


def test_ipv6_extension_headers(tmp_path: Path) -> None:
    actual = check("ipv6_ext", tmp_path)
    assert find(actual, spi=0x601)[0]["lost"] == 1


def test_vlan_and_qinq(tmp_path: Path) -> None:
    actual = check("vlan", tmp_path)
    assert {(sa["vlan"], sa["inner_vlan"]) for sa in actual["sas"]} == {
        (None, None), (100, None), (200, None), (300, 42)}


def test_sll_direction(tmp_path: Path) -> None:
    actual = check("sll", tmp_path)
    assert find(actual, spi=0x801)[0]["direction"] == "out" and find(actual, spi=0x802)[0]["direction"] == "in"


def test_sll2_interface(tmp_path: Path) -> None:
    actual = check("sll2", tmp_path)
    assert {sa["interface"] for sa in actual["sas"]} == {2, 5}


def test_sll2_same_packets_on_two_interfaces(tmp_path: Path) -> None:
    actual = check("sll2_two_interfaces", tmp_path)
    assert sorted((sa["interface"], sa["duplicates"], sa["lost"]) for sa in actual["sas"]) == [(2, 1, 2), (3, 1, 2)]


@pytest.mark.parametrize("name", ["raw", "null"])
def test_raw_and_null_link_types(tmp_path: Path, name: str) -> None:
    actual = check(name, tmp_path)
    assert actual["capture"]["classes"]["esp"] == actual["capture"]["frames"]


def test_capture_starting_mid_sa(tmp_path: Path) -> None:
    actual = check("mid_sa", tmp_path)
    assert sorted(sa["first_seq"] for sa in actual["sas"]) == [5000, 77777]
    assert totals(actual, "lost") == 0


def test_thousands_of_sas(tmp_path: Path) -> None:
    actual = check("many_sas", tmp_path)
    assert len(actual["sas"]) == 3000 and len(actual["tunnels"]) == 1500
    assert len(find(actual, spi=0x5000)) == 5  # the same SPI towards five different spokes


def test_concentrator(tmp_path: Path) -> None:
    """5000 SAs, Zipf popularity, most at or below 1 packet/s: every SA one entry with exact counts."""
    actual = check("concentrator", tmp_path)
    assert len(actual["sas"]) == 5000 and len(actual["tunnels"]) == 2500
    slow = [sa for sa in actual["sas"] if sa["packets"] <= 20]  # 20 s capture
    assert len(slow) > 0.9 * 5000 and totals(actual, "lost") > 0


def test_late_packets(tmp_path: Path) -> None:
    actual = check("late", tmp_path)
    behind_window = find(actual, spi=0xD01)[0]
    assert (behind_window["late"], behind_window["lost"], behind_window["reordered"]) == (1, 1, 0)
    too_old = find(actual, spi=0xD03)[0]
    assert (too_old["late"], too_old["lost"], too_old["reordered"], too_old["max_reorder_extent"]) == (1, 1, 1, 300)


def test_malformed_and_truncated_frames(tmp_path: Path) -> None:
    actual = check("malformed", tmp_path)
    classes = actual["capture"]["classes"]
    assert (classes["malformed"], classes["truncated"], classes["other"]) == (2, 3, 4)
    assert find(actual, spi=0xE01)[0]["lost"] == 2


def test_pcapng_input(tmp_path: Path) -> None:
    check("pcapng", tmp_path)


def test_pcapng_two_interfaces(tmp_path: Path) -> None:
    """`dumpcap -i wan -i lan`: the same SA on both interfaces is two SAs, each with its own exact figures."""
    doc = check("pcapng_two_interfaces", tmp_path)
    assert sorted((sa["interface"], sa["spi"], sa["lost"], sa["duplicates"]) for sa in doc["sas"]) == [
        ("if2", 0x2A03, 0, 0), ("if2", 0x2A04, 0, 0),
        ("lan", 0x2A01, 4, 0), ("lan", 0x2A02, 0, 1), ("wan", 0x2A01, 1, 0), ("wan", 0x2A02, 0, 0)]


def test_snaplen_cut_payloads(tmp_path: Path) -> None:
    actual = check("snaplen", tmp_path)
    assert find(actual, spi=0xF01)[0]["octets"] == 99 * (20 + 8 + 300)


@pytest.mark.parametrize("content", [b"this is not a capture\n" * 10, b"", None])
def test_not_a_capture(tmp_path: Path, content: bytes | None) -> None:
    """Text, an empty file, a missing file: exit 2, one line on stderr, nothing on stdout."""
    path = tmp_path / "notes.txt"
    if content is not None:
        path.write_bytes(content)
    result = run_read(path)
    assert result.returncode == 2
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert result.stdout == ""


def test_every_scenario_is_covered() -> None:
    """A scenario added to tests/gt must get a ground-truth test here."""
    source = Path(__file__).read_text()
    assert [name for name in registry() if f'"{name}"' not in source] == []


def test_mixed_perturbations(tmp_path: Path) -> None:
    """All perturbations at once on 40 SAs (IPv4/IPv6, ESP/UDP): the counters must not interfere."""
    actual = check("mixed", tmp_path)
    for field in ("lost", "reordered", "duplicates", "late", "implausible", "incomplete"):
        assert totals(actual, field) > 0, field
