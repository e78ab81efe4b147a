"""espmeter on a strongSwan gateway, reading its charon over vici (the project's lab: two real charons).

The agent captures on the left gateway's own interface with `strongswan.vici` set to left's socket.
Every record of every SA (the first one included, with a 1 s active timeout) must carry the name and
partner charon reports (`swanctl --list-sas`), across a rekey and a charon restart, while the
figures stay exact against nft's counters and an independent tcpdump. Bad input: a socket path that
does not exist, one that is not a socket, charon going away: one log line, metering goes on.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sa import udp_ident
from agent.satable import SATable, TableSettings
from agent.strongswan import Vici
from exporter.collect import read_file
from tests.ipfix_sums import is_sa_record, pairs, sums
from tests.ipsec_lab import ChildSA, EspCounters, IPsecLab
from tests.netns import AgentProcess

pytestmark = pytest.mark.root


def _delta(after: dict[str, EspCounters], before: dict[str, EspCounters]) -> dict[str, EspCounters]:
    return {s: EspCounters(after[s].sent - before[s].sent, after[s].dropped - before[s].dropped) for s in after}


def _charon_says(sa: ChildSA) -> dict[int, tuple[str, int]]:
    """SPI -> (name, partner SPI) as swanctl lists the CHILD_SA on the gateway."""
    name = f"{sa.ike}/{sa.name}"
    return {sa.spi_out: (name, sa.spi_in), sa.spi_in: (name, sa.spi_out)}


def _vici_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "strongSwan vici" in line]


def test_gateway_names_and_pairs_from_vici_across_rekey_and_restart(tmp_path: Path) -> None:
    out = tmp_path / "records.ipfix"
    cfg = tmp_path / "espmeter.yaml"
    with IPsecLab(drop_percent=5) as lab:
        cfg.write_text("interfaces: [{name: eth0, direction: both}]\n"
                       f"collectors: ['file://{out}']\n"
                       "active_timeout_s: 1\n"
                       f"tunnel_names: {{'{lab.right_addr}': right-site}}\n"  # charon's name must win
                       f"strongswan: {{vici: '{lab.vici_uri('left')}'}}\n")
        agent = AgentProcess(lab.left_ns, ["--config", str(cfg)], tmp_path / "agent.log")
        try:
            agent.wait_for("capturing on")
            agent.wait_for("connected; names and pairs from charon")
            cap = lab.capture("eth0", tmp_path / "gw.pcap", ns="left")
            sa1 = lab.installed()["left"]
            c0 = lab.drop_counters()
            assert lab.traffic(400, 0.002)[1] > 0
            c1 = lab.drop_counters()
            agent.signal(signal.SIGUSR1)
            agent.wait_for(f"{sa1.ike}/{sa1.name} (sent here)")
            sa2 = lab.rekey(wait_deleted=True)["left"]
            assert lab.traffic(400, 0.002)[1] > 0
            c2 = lab.drop_counters()
            t_down = time.monotonic()
            sa3 = lab.restart_charon("left", down_s=1.5)["left"]
            restart_s = time.monotonic() - t_down
            assert lab.traffic(400, 0.002)[1] > 0
            time.sleep(0.3)
            c3 = lab.drop_counters()
            captured = cap.stop()
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
    log = agent.log.read_text()

    # names and pairs: every record equals what charon listed, first records included
    charon = {**_charon_says(sa1), **_charon_says(sa2), **_charon_says(sa3)}
    records = read_file(str(out))
    data = [r for r in records if is_sa_record(r)]  # loss-event records carry IPSecSPI, no name
    seen: dict[int, list[tuple[str | None, int | None]]] = defaultdict(list)
    for r in data:
        seen[r["IPSecSPI"]].append((r.get("espTunnelName"), r.get("espPeerSPI")))
    assert set(seen) == set(charon), (sorted(map(hex, seen)), sorted(map(hex, charon)))
    for spi, got in seen.items():
        assert set(got) == {charon[spi]}, (hex(spi), got[:3], charon[spi])
    assert pairs(records) == {(s, p) for s, (_, p) in charon.items()}
    assert len({r["espTunnelId"] for r in data}) == 3  # one tunnel per CHILD_SA generation

    # the figures stay exact against nft and tcpdump
    phase = [_delta(c1, c0), _delta(c2, c1), _delta(c3, c2)]
    sender = {}
    for sa, d in zip((sa1, sa2, sa3), phase, strict=True):
        sender[sa.spi_out], sender[sa.spi_in] = d["left"], d["right"]
    seqs: dict[int, list[int]] = defaultdict(list)
    for p in captured:
        seqs[p.spi].append(p.seq)
    got = {key[2]: figures for key, figures in sums(records).items()}
    for spi, nft in sender.items():
        s = seqs[spi]
        head, tail = s[0] - 1, nft.sent - s[-1]  # libipsec numbers each SA from 1
        fig = got[spi]
        assert fig["datagrams"] == nft.passed == len(s), (hex(spi), fig, nft)
        assert fig["lost"] == nft.dropped - head - tail, (hex(spi), fig, nft, head, tail)
        assert fig["expected"] == s[-1] - s[0] + 1
        assert nft.dropped > 0

    # charon going away: one line when it goes, one when it is back; nothing overruled here
    lines = _vici_lines(log)
    assert sum("connection lost" in line for line in lines) == 1, lines
    assert sum("connected;" in line for line in lines) == 2, lines
    assert len(lines) == 3 and "overruled" not in log and "Traceback" not in log, lines
    print(f"vici gateway: {len(data)} records, 6 SAs, restart took {restart_s:.1f} s")


@pytest.mark.parametrize("kind", ["missing", "not a socket"])
def test_bad_vici_socket_one_line_and_metering_goes_on(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "charon.vici"
    if kind == "not a socket":
        path.write_text("hello")
    out = tmp_path / "records.ipfix"
    cfg = tmp_path / "espmeter.yaml"
    with IPsecLab(drop_percent=5) as lab:
        cfg.write_text(f"interfaces: [{lab.router_ifaces[0]}]\n"
                       f"collectors: ['file://{out}']\n"
                       f"strongswan: {{vici: 'unix://{path}'}}\n")
        agent = AgentProcess(lab.router_ns, ["--config", str(cfg)], tmp_path / "agent.log")
        try:
            agent.wait_for("capturing on")
            agent.wait_for("strongSwan vici")
            sa = lab.installed()["left"]
            c0 = lab.drop_counters()
            assert lab.traffic(300, 0.002)[1] > 0
            time.sleep(1.5)  # retries go on in the background, silently
            c1 = lab.drop_counters()
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
    log = agent.log.read_text()
    lines = _vici_lines(log)
    want = {"missing": "no such socket", "not a socket": "not a socket"}[kind]
    assert len(lines) == 1 and want in lines[0] and "heuristic" in lines[0], lines
    assert "Traceback" not in log
    got = {key[2]: f for key, f in sums(read_file(str(out))).items()}
    d = _delta(c1, c0)
    assert got[sa.spi_out]["datagrams"] == d["left"].passed and got[sa.spi_in]["datagrams"] == d["right"].passed
    found = pairs(read_file(str(out)))
    assert (sa.spi_out, sa.spi_in) in found and (sa.spi_in, sa.spi_out) in found  # the heuristic paired


def _wait(cond: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sas_seen_before_charon_names_them_are_named_by_asking(tmp_path: Path) -> None:
    """The authority against a real charon, without the daemon: SAs that appear before the snapshot
    wait for it; an SA whose event was missed is named by asking charon (`list-sas`)."""
    with IPsecLab() as lab:
        sa = lab.installed()["left"]
        gw, peer = (bytes(int(x) for x in a.split(".")) for a in (lab.left_addr, lab.right_addr))
        out_key = udp_ident(gw, peer, 4500, 4500, sa.spi_out)
        in_key = udp_ident(peer, gw, 4500, 4500, sa.spi_in)
        table = SATable(TableSettings(), lambda *_: None)
        vici = Vici(lab.vici_uri("left"))
        table.pairer.authority = vici  # SAs before the reader runs: they wait
        vici.table, vici.pairer = table, table.pairer
        first = table.create(out_key, True, 0.0, None)
        assert first.name is None and first.ident in vici.waiting
        vici.reader.start()
        try:
            _wait(lambda: (vici.apply(), first.name)[1] is not None)
            assert first.name == f"{sa.ike}/{sa.name}" and not vici.waiting
            vici.claims.clear()  # as if the child-updown had been missed: charon must be asked
            second = table.create(in_key, True, 1.0, None)
            assert second.name is None and second.peer is None
            t0 = time.monotonic()
            _wait(lambda: (vici.apply(), second.name)[1] is not None)
            asked_s = time.monotonic() - t0
        finally:
            vici.close()
        assert second.peer is first and first.peer is second and second.name == first.name
        assert table.pairer.disagreements == 0
        print(f"vici: unknown SA named by asking charon after {asked_s * 1000:.0f} ms")


SINK_PORT = 7778
_SINK = f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], {SINK_PORT}))
print("ready", flush=True)
while True:
    s.recv(65535)
"""
_SEND = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for i in range(int(sys.argv[3])):
    s.sendto(bytes(64), (sys.argv[2], {SINK_PORT}))
    time.sleep(0.002)
"""


def test_heuristic_overruled_by_charon_is_counted(tmp_path: Path) -> None:
    """One-way traffic makes the heuristic wrong: before the rekey only left's outbound SA (A) speaks;
    after it, right speaks first on its new SA (B'). The heuristic pairs B' with A, the only reverse
    candidate; charon says B' belongs with A'. The gateway's agent follows charon and counts one
    disagreement; an agent on the router (no charon) shows what the heuristic alone would export."""
    gw_out, rt_out = tmp_path / "gw.ipfix", tmp_path / "rt.ipfix"
    with IPsecLab() as lab:
        for side, inner in (("left", lab.left_inner), ("right", lab.right_inner)):
            sink = lab.popen_in(side, [sys.executable, "-c", _SINK, inner], stdout=subprocess.PIPE, text=True)
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        (tmp_path / "gw.yaml").write_text(f"interfaces: [eth0]\ncollectors: ['file://{gw_out}']\n"
                                          f"strongswan: {{vici: '{lab.vici_uri('left')}'}}\n")
        (tmp_path / "rt.yaml").write_text(f"interfaces: [{lab.router_ifaces[0]}]\ncollectors: ['file://{rt_out}']\n")
        gw = AgentProcess(lab.left_ns, ["--config", str(tmp_path / "gw.yaml")], tmp_path / "gw.log")
        rt = AgentProcess(lab.router_ns, ["--config", str(tmp_path / "rt.yaml")], tmp_path / "rt.log")
        try:
            for agent in (gw, rt):
                agent.wait_for("capturing on")
            gw.wait_for("connected; names and pairs from charon")
            old = lab.installed()["left"]
            lab.run_in("left", [sys.executable, "-c", _SEND, lab.left_inner, lab.right_inner, "50"])
            time.sleep(0.3)
            new = lab.rekey(wait_deleted=True)["left"]
            lab.run_in("right", [sys.executable, "-c", _SEND, lab.right_inner, lab.left_inner, "50"])
            time.sleep(0.3)
            assert lab.traffic(50, 0.002)[1] > 0  # now A' speaks too
            gw.wait_for("heuristic pairing(s) overruled by charon")
            time.sleep(1.5)  # the agents read what is still in their capture rings before they stop
            for agent in (gw, rt):
                assert agent.stop() == 0, agent.log.read_text()
        finally:
            for agent in (gw, rt):
                agent.kill()
    a, a2, b2 = old.spi_out, new.spi_out, new.spi_in
    assert {(b2, a2), (a2, b2)} <= pairs(read_file(str(gw_out)))
    assert not {s for s, p in pairs(read_file(str(gw_out))) if a in (s, p)}  # A's partner never spoke
    assert (b2, a) in pairs(read_file(str(rt_out)))  # the heuristic alone pairs B' with A
    assert "1 heuristic pairing(s) overruled by charon (1 since start)" in gw.log.read_text()
