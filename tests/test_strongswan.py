"""A real IPsec tunnel: two strongSwan charons in namespaces, espmeter capturing live in the router between.

nftables drops 5 % of ESP in the senders' namespaces (upstream of the capture). espmeter's per-SA
datagrams must equal what reached the capture point (nft sent − dropped, and an independent tcpdump),
its loss must equal nft's drops less those of an SA's very first or last packets (which no observer
can see as a gap), its pairs must equal charon's spi-in/spi-out, and the rekey must yield a new pair.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from exporter.collect import read_file
from tests.ipfix_sums import is_sa_record, pairs, sums
from tests.ipsec_lab import EspCounters, IPsecLab
from tests.netns import AgentProcess

pytestmark = pytest.mark.root


def _delta(after: dict[str, EspCounters], before: dict[str, EspCounters]) -> dict[str, EspCounters]:
    return {s: EspCounters(after[s].sent - before[s].sent, after[s].dropped - before[s].dropped) for s in after}


def test_strongswan_tunnel_metered_live(tmp_path: Path) -> None:
    out = tmp_path / "records.ipfix"
    cfg = tmp_path / "espmeter.yaml"
    with IPsecLab(drop_percent=5) as lab:
        iface = lab.router_ifaces[0]
        cfg.write_text(f"interfaces: [{{name: {iface}, direction: both}}]\n"
                       f"collectors: ['file://{out}']\n"
                       f"tunnel_names: {{'{lab.right_addr}': right-site}}\n")
        agent = AgentProcess(lab.router_ns, ["--config", str(cfg)], tmp_path / "agent.log")
        try:
            agent.wait_for("capturing on")
            cap = lab.capture(iface, tmp_path / "router.pcap")
            sa1 = lab.installed()
            c0 = lab.drop_counters()
            assert lab.traffic(400, 0.002)[1] > 0
            c1 = lab.drop_counters()
            sa2 = lab.rekey(wait_deleted=True)
            assert lab.traffic(400, 0.002)[1] > 0
            time.sleep(0.3)
            c2 = lab.drop_counters()
            captured = cap.stop()
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()

    phase1, phase2 = _delta(c1, c0), _delta(c2, c1)
    sender = {sa1["left"].spi_out: phase1["left"], sa1["right"].spi_out: phase1["right"],
              sa2["left"].spi_out: phase2["left"], sa2["right"].spi_out: phase2["right"]}
    seqs: dict[int, list[int]] = defaultdict(list)
    for p in captured:
        seqs[p.spi].append(p.seq)

    records = read_file(str(out))
    got = {key[2]: figures for key, figures in sums(records).items()}
    assert set(got) == set(sender), f"SPIs metered {sorted(got)} vs charon {sorted(sender)}"
    for spi, nft in sender.items():
        s = seqs[spi]
        head, tail = s[0] - 1, nft.sent - s[-1]  # libipsec numbers each SA from 1
        fig = got[spi]
        assert fig["datagrams"] == nft.passed == len(s), (hex(spi), fig, nft)
        assert fig["lost"] == nft.dropped - head - tail, (hex(spi), fig, nft, head, tail)
        assert fig["expected"] == s[-1] - s[0] + 1
        assert fig["reordered"] == fig["duplicates"] == fig["late"] == 0
        assert nft.dropped > 0

    want_pairs = {(sa1["left"].spi_out, sa1["left"].spi_in), (sa2["left"].spi_out, sa2["left"].spi_in)}
    found = pairs(records)
    for a, b in want_pairs:
        assert (a, b) in found and (b, a) in found, f"pair {a:#x}/{b:#x} not in {found}"
    data = [r for r in records if is_sa_record(r)]
    assert {r["espTunnelId"] for r in data if "espTunnelId" in r} == {1, 2}  # the rekey made a new pair
    assert {r.get("espTunnelName") for r in data if "espTunnelId" in r} == {"right-site"}
    directions = {(r["IPSecSPI"], r.get("flowDirection")) for r in data}
    assert (sa1["left"].spi_out, 0) in directions and (sa1["right"].spi_out, 1) in directions
