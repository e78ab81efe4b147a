"""Proof that the strongSwan namespace lab is trustworthy ground truth for live-capture tests.

What espmeter tests will rely on, checked against an independent observer (tcpdump in the router):
ESP-in-UDP with the SPIs charon reports crosses the router, per SPI exactly nft's sent-minus-dropped,
sequence numbers 1..sent with exactly the dropped ones missing, and a rekey switches to new SPIs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.ipsec_lab import EspCounters, EspPacket, IPsecLab, esp_by_spi, parse_vici_raw

pytestmark = pytest.mark.root


def _delta(after: dict[str, EspCounters], before: dict[str, EspCounters]) -> dict[str, EspCounters]:
    return {side: EspCounters(after[side].sent - before[side].sent, after[side].dropped - before[side].dropped)
            for side in after}


def _seqs(packets: list[EspPacket]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for p in packets:
        out[p.spi].append(p.seq)
    return out


def test_parse_vici_raw() -> None:
    raw = ("list-sa event {lab {uniqueid=1 state=ESTABLISHED child-sas {net-1 {name=net state=INSTALLED "
           "spi-in=217ccc1c spi-out=b7516a24 packets-in=3 local-ts=[10.99.1.0/24 10.99.3.0/24]}}}}\n"
           "list-sas reply {}\n")
    msgs = parse_vici_raw(raw)
    child = msgs[0]["lab"]["child-sas"]["net-1"]
    assert child["spi-in"] == "217ccc1c" and child["packets-in"] == "3"
    assert child["local-ts"] == ["10.99.1.0/24", "10.99.3.0/24"]
    assert msgs[1] == {}


def test_lab_esp_crosses_router_exactly_as_counted(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with IPsecLab(drop_percent=5) as lab:
        up = time.monotonic() - t0
        sa1 = lab.installed()
        left, right = sa1["left"], sa1["right"]
        assert left.encap and right.encap, "kernel-libipsec must use ESP in UDP 4500"
        assert left.spi_out == right.spi_in and left.spi_in == right.spi_out

        # Both router interfaces: each is a place espmeter may capture; both must see the same ESP.
        caps = {iface: lab.capture(iface, tmp_path / f"{iface}.pcap") for iface in lab.router_ifaces}
        c0 = lab.drop_counters()
        assert lab.traffic(400, 0.002)[1] > 0
        c1 = lab.drop_counters()
        sa2 = lab.rekey()
        assert {sa2["left"].spi_in, sa2["left"].spi_out}.isdisjoint({left.spi_in, left.spi_out})
        assert lab.traffic(400, 0.002)[1] > 0
        time.sleep(0.2)  # nothing is in flight after the echo client's 1 s tail, but be generous
        c2 = lab.drop_counters()
        packets = {iface: cap.stop() for iface, cap in caps.items()}
        sas_end = lab.list_sas()

    phase1, phase2 = _delta(c1, c0), _delta(c2, c1)
    expected = {  # SPI -> nft's sent-minus-dropped of the sender using it
        left.spi_out: phase1["left"], right.spi_out: phase1["right"],
        sa2["left"].spi_out: phase2["left"], sa2["right"].spi_out: phase2["right"],
    }
    for side, counters in (*phase1.items(), *phase2.items()):
        assert counters.sent >= 300, f"{side}: too little ESP sent: {counters}"
        assert 0 < counters.dropped < counters.sent * 0.15, f"{side}: 5 % drop expected: {counters}"

    for iface, pkts in packets.items():
        by_spi = esp_by_spi(pkts)
        assert set(by_spi) == set(expected), f"{iface}: SPIs {by_spi} vs {expected}"
        for spi, counters in expected.items():
            assert by_spi[spi] == counters.passed, f"{iface}: SPI {spi:#x} captured {by_spi[spi]} vs nft {counters}"
        # libipsec numbers from 1 per SA: the gaps are exactly nft's drops, no reorder or dup on veths.
        for spi, seqs in _seqs(pkts).items():
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"{iface}: SPI {spi:#x} not in order"
            assert seqs[-1] <= expected[spi].sent
            missing = expected[spi].sent - len(seqs)
            assert missing == expected[spi].dropped, f"{iface}: SPI {spi:#x} gaps {missing} vs {expected[spi]}"
        src = {p.spi: p.src for p in pkts}
        assert src[left.spi_out] == lab.left_addr and src[right.spi_out] == lab.right_addr

    # charon's own SA counters agree: sender counts before nft, receiver after the wire.
    left_end = {sa.spi_out: sa for sa in sas_end["left"]}
    right_end = {sa.spi_out: sa for sa in sas_end["right"]}
    new_left, new_right = left_end[sa2["left"].spi_out], right_end[sa2["right"].spi_out]
    assert new_left.packets_out == phase2["left"].sent and new_right.packets_in == phase2["left"].passed
    assert new_right.packets_out == phase2["right"].sent and new_left.packets_in == phase2["right"].passed

    print(f"lab up {up:.2f}s {lab.timings}; phase1 {phase1}; phase2 {phase2}; "
          f"captured { {hex(k): v for k, v in esp_by_spi(packets[lab.router_ifaces[0]]).items()} }")


def test_lab_drops_only_esp_never_ike() -> None:
    """With 100 % drop the tunnel still comes up and rekeys (IKE on 4500 passes), while no ESP gets through."""
    with IPsecLab(drop_percent=100) as lab:
        sent, received = lab.traffic(20, 0.005)
        assert (sent, received) == (20, 0)
        old = lab.installed()["left"]
        new = lab.rekey()["left"]
        assert new.spi_in != old.spi_in
        counters = lab.drop_counters()
        assert counters["left"] == EspCounters(20, 20)
        assert counters["right"] == EspCounters(0, 0)
