"""Live equals offline: ground-truth captures replayed on a veth pair, metered by `espmeter run`.

tcpreplay sends each capture into one end of a veth pair between two namespaces created here;
`espmeter run` captures the other end through AF_PACKET (pcapy-ng) with its BPF prefilter and
exports to a file:// collector. Its records, decoded and summed per SA, must equal the
`espmeter read --json` figures of the same capture — which the ground-truth tests prove exact.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pcapy
import pytest

from agent.capture import CaptureSettings
from exporter.collect import read_file
from tests.gt.scenarios import registry
from tests.gt.writer import Record, write_pcap
from tests.ipfix_sums import is_sa_record, pairs, read_json, sums, truth
from tests.netns import ROOT, AgentProcess, cpu_seconds, veth_pair

pytestmark = pytest.mark.root
SCENARIOS = registry()
# Ethernet captures whose figures do not depend on inter-packet timing (tcpreplay compresses it):
# VLAN/QinQ and IPv6 extension headers and fragments must all pass the prefilter.
TIMED = {"late"}  # a gap older than the 2 s reorder time: replayed with the capture's own timing
LIVE = ["random_loss", "dup_loss", "reorder", "late", "vlan", "ipv6_ext", "fragments_nonfirst_lost",
        "fragments_out_of_order", "nat_t", "esn_wrap", "malformed"]


def _start(pair, tmp_path: Path, extra: str = "") -> tuple[AgentProcess, Path]:
    out = tmp_path / "live.ipfix"
    cfg = tmp_path / "espmeter.yaml"
    cfg.write_text(f"interfaces: [{pair.capture_if}]\ncollectors: ['file://{out}']\n{extra}")
    agent = AgentProcess(pair.capture_ns, ["--config", str(cfg)], tmp_path / "agent.log")
    agent.wait_for("capturing on")
    return agent, out


@pytest.mark.parametrize("name", LIVE)
def test_live_capture_equals_offline(name: str, tmp_path: Path) -> None:
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS[name]().write(cap)
    want = truth(read_json(cap))
    with veth_pair() as pair:
        agent, out = _start(pair, tmp_path)
        try:
            pair.replay(cap, pps=20000, realtime=name in TIMED)
            time.sleep(0.5)
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
        ifindex = pair.ifindex(pair.capture_ns, pair.capture_if)
    records = read_file(str(out))
    assert sums(records) == want
    data = [r for r in records if is_sa_record(r)]
    assert {r["ingressInterface"] for r in data} == {ifindex}
    assert all(r.get("flowDirection") == 0 for r in data)
    stats = [r for r in records if "droppedPacketTotalCount" in r]
    assert stats and stats[-1]["droppedPacketTotalCount"] == 0


def _frames(cap: str) -> list[str]:
    """The capture's frames as a live handle delivers them: cut at the snap length."""
    handle, frames = pcapy.open_offline(cap), []
    while (packet := handle.next())[0]:
        frames.append(packet[1][:CaptureSettings().snaplen].hex())
    return frames


def test_each_packet_copied_into_one_ring(tmp_path: Path) -> None:
    """direction both: each handle's kernel filter takes only its direction, so no inbound packet enters
    the out ring (nor outbound the in ring), and each ring delivers every packet of its direction in
    order, VLAN tags included, the first ones too: `inbound`/`outbound` in the filter expression lose the
    first ring block, which libpcap filters again in user space where the packet type is unknown."""
    inbound, outbound = str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap")
    SCENARIOS["vlan"]().write(inbound)
    SCENARIOS["random_loss"]().write(outbound)
    with veth_pair() as pair:
        probe = subprocess.Popen(
            ["ip", "netns", "exec", pair.capture_ns, sys.executable, "-m", "tests.ringprobe", pair.capture_if],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert probe.stdout.readline() == "ready\n"
            pair.replay(inbound)
            pair.run(pair.capture_ns, "tcpreplay", "-q", "--topspeed", "-i", pair.capture_if, outbound)
            rings = json.loads(probe.communicate("go\n", timeout=30)[0])
        finally:
            probe.kill()
    for direction, cap in (("in", inbound), ("out", outbound)):
        want = _frames(cap)
        assert (rings[direction]["received"], rings[direction]["dropped"]) == (len(want), 0), direction
        assert rings[direction]["frames"] == want, direction


def test_a_meter_slower_than_the_link_leaves_the_ring_to_it(tmp_path: Path) -> None:
    """The ring is read ahead of the metering (LiveCapture.read): 80 000 frames at 40 000/s into a 4 MiB
    ring (about 20 000 small frames), metered at 20 000/s, leave a backlog of about 40 000 by the end of
    the replay: it waits in memory, none is dropped and every frame is delivered in order. Read as it was
    metered, a batch at a time, the ring held the backlog and dropped about half of it."""
    eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 68, 0, 0, 64, 50, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    frames = [eth + ip + struct.pack("!II", 0x100, n) + bytes(40) for n in range(1, 80_001)]
    cap = tmp_path / "cap.pcap"
    write_pcap(cap, 1, [Record(i, f) for i, f in enumerate(frames)])
    with veth_pair() as pair:
        probe = subprocess.Popen(
            ["ip", "netns", "exec", pair.capture_ns, sys.executable, "-m", "tests.ringprobe", pair.capture_if,
             "--slow-meter"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert probe.stdout.readline() == "ready\n"
            probe.stdin.write("go\n")
            probe.stdin.flush()
            pair.replay(str(cap), pps=40_000)
            rings = json.loads(probe.communicate("done\n", timeout=60)[0])
        finally:
            probe.kill()
    assert (rings["in"]["received"], rings["in"]["dropped"]) == (len(frames), 0)
    assert rings["in"]["frames"] == [f.hex() for f in frames]


def test_sigterm_right_after_the_last_packet(tmp_path: Path) -> None:
    """SIGTERM while the last packets sit in a ring block the kernel has not handed over yet: shutdown
    reads them before the final records, so every packet of the replay is metered."""
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS["random_loss"]().write(cap)
    want = truth(read_json(cap))
    with veth_pair() as pair:
        agent, out = _start(pair, tmp_path)
        try:
            pair.replay(cap)
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
    assert sums(read_file(str(out))) == want


def test_sighup_reopening_the_capture_meters_what_the_rings_hold(tmp_path: Path) -> None:
    """A reload that changes the capture settings reopens the handles: what the old rings still hold,
    the partly filled block of the last packets included, is metered before they close."""
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS["random_loss"]().write(cap)
    want = truth(read_json(cap))
    with veth_pair() as pair:
        agent, out = _start(pair, tmp_path)
        try:
            pair.replay(cap)
            cfg = tmp_path / "espmeter.yaml"
            cfg.write_text(cfg.read_text() + "buffer_size_mb: 4\n")
            agent.signal(signal.SIGHUP)
            agent.wait_for("configuration reloaded")
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
    assert sums(read_file(str(out))) == want


def test_link_down_right_after_the_last_packet_meters_what_the_rings_hold(tmp_path: Path) -> None:
    """The capture link goes down right after a top-speed replay: its handles close, but only after
    what their rings hold, the partly filled block of the last packets included, is metered."""
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS["random_loss"]().write(cap)
    want = truth(read_json(cap))
    with veth_pair() as pair:
        agent, out = _start(pair, tmp_path)
        try:
            pair.replay(cap)
            pair.run(pair.capture_ns, "ip", "link", "set", pair.capture_if, "down")
            agent.wait_for(f"{pair.capture_if} is down")
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
    assert sums(read_file(str(out))) == want


def test_drops_are_the_frames_metering_lost(tmp_path: Path) -> None:
    """The agent frozen (SIGSTOP) while a replay overflows its 1 MiB ring: the drops it exports are
    exactly the frames it did not see, none counted by the out ring, which takes no inbound packet."""
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS["random_loss"]().write(cap)
    loops = 10
    sent = loops * len(_frames(cap))
    with veth_pair() as pair:
        agent, out = _start(pair, tmp_path, "buffer_size_mb: 1\n")
        try:
            agent.signal(signal.SIGSTOP)
            pair.run(pair.sender_ns, "tcpreplay", "-q", "--topspeed", f"--loop={loops}", "-i", pair.sender_if, cap)
            agent.signal(signal.SIGCONT)
            time.sleep(0.5)
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
    stats = [r for r in read_file(str(out)) if "droppedPacketTotalCount" in r][-1]
    assert stats["droppedPacketTotalCount"] > 0
    assert stats["packetTotalCount"] + stats["droppedPacketTotalCount"] == sent


def test_sigterm_flushes_and_sighup_reloads(tmp_path: Path) -> None:
    """Records of SAs still open at SIGTERM are exported (forced end); SIGHUP re-reads the config."""
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS["rekey"]().write(cap)
    doc = read_json(cap)
    with veth_pair() as pair:
        agent, out = _start(pair, tmp_path, "active_timeout_s: 3600\nidle_timeout_s: 3600\n")
        try:
            pair.replay(cap, pps=5000)
            cfg = tmp_path / "espmeter.yaml"
            cfg.write_text(cfg.read_text() + "tunnel_names: {'192.0.2.2': branch-2}\n")
            agent.signal(signal.SIGHUP)
            agent.wait_for("configuration reloaded")
            agent.signal(signal.SIGUSR1)
            agent.wait_for("SA 192.0.2.1 -> 192.0.2.2")
            assert agent.stop() == 0
        finally:
            agent.kill()
    records = read_file(str(out))
    assert sums(records) == truth(doc)
    data = [r for r in records if is_sa_record(r)]
    assert {r["flowEndReason"] for r in data} == {4}
    assert {r.get("espTunnelName") for r in data} == {"branch-2"}
    assert len(doc["tunnels"]) == 2 and {(t["spis"][0], t["spis"][1]) for t in doc["tunnels"]} <= pairs(records)


def test_the_loop_goes_on_while_a_reload_is_checked(tmp_path: Path) -> None:
    """The child that checks a SIGHUP's configuration takes ~0.3 s to start (agent.runtime.Check), more than a
    ring is sized to wait (buffer_size_mb: 0.1 s): the loop goes on meanwhile, so a SIGUSR1 sent just after
    the SIGHUP is answered before the reload is applied (it was after: the loop waited for the child)."""
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS["rekey"]().write(cap)
    with veth_pair() as pair:
        agent, _ = _start(pair, tmp_path)
        try:
            pair.replay(cap, pps=5000)
            agent.wait_for("espmeter running")
            agent.signal(signal.SIGHUP)
            time.sleep(0.05)
            agent.signal(signal.SIGUSR1)
            agent.wait_for("configuration reloaded")
            agent.wait_for("SA 192.0.2.1 -> 192.0.2.2")
            log = agent.log.read_text()
            assert log.index("SA 192.0.2.1 -> 192.0.2.2") < log.index("configuration reloaded"), log
            assert agent.stop() == 0
        finally:
            agent.kill()


def test_interface_deleted_and_recreated(tmp_path: Path) -> None:
    """The link flaps: capture resumes on the new link, both halves of the traffic are metered."""
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS["no_loss"]().write(cap)
    want = truth(read_json(cap))
    with veth_pair() as pair:
        agent, out = _start(pair, tmp_path)
        try:
            pair.replay(cap, pps=20000)
            time.sleep(1.0)  # let the agent drain its socket: frames queued on a deleted link are gone
            pair.recreate_capture_if()
            deadline = time.monotonic() + 15
            while agent.log.read_text().count("capturing on") < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert agent.log.read_text().count("capturing on") >= 2, agent.log.read_text()
            assert f"interface {pair.capture_if} does not exist (waiting for it)" in agent.log.read_text()
            pair.replay(cap, pps=20000)
            time.sleep(0.5)
            assert agent.stop() == 0
        finally:
            agent.kill()
    records = read_file(str(out))
    got = sums(records)
    for key, figures in want.items():  # the new link is a new observation point: new SAs, same figures
        assert got[key] == {k: 2 * v for k, v in figures.items()}
    assert len({r["ingressInterface"] for r in records if is_sa_record(r)}) == 2


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _next_state(sock: socket.socket) -> bytes:
    """The next notification that is not a watchdog ping."""
    while (msg := sock.recv(4096)) == b"WATCHDOG=1":
        pass
    return msg


def test_drops_privileges_notifies_systemd_and_idles(tmp_path: Path) -> None:
    """As root with `user: nobody`: runs as nobody with only CAP_NET_RAW, sends READY/RELOADING/STOPPING,
    and an idle link costs (almost) no CPU: the loop sleeps in select(), it does not spin."""
    public = Path(tempfile.mkdtemp(prefix="espm-notify-"))  # reachable by `nobody`, as /run/systemd is
    public.chmod(0o755)
    sock_path = public / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    sock_path.chmod(0o777)
    notify.settimeout(20)
    nobody = pwd.getpwnam("nobody").pw_uid
    with veth_pair() as pair:
        cfg = tmp_path / "espmeter.yaml"
        cfg.write_text(f"interfaces: [{pair.capture_if}]\ncollectors: ['udp://127.0.0.1:9']\nuser: nobody\n")
        agent = AgentProcess(pair.capture_ns, ["--config", str(cfg)], tmp_path / "agent.log",
                             env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
        try:
            assert b"READY=1" in notify.recv(4096)
            assert b"WATCHDOG=1" in notify.recv(4096)  # every half WatchdogSec, also on an idle link
            pid = agent.proc.pid
            status = _proc_status(pid)
            assert status["Uid"].split() == [str(nobody)] * 4
            assert int(status["CapEff"], 16) == 1 << 13 and int(status["CapPrm"], 16) == 1 << 13
            cpu0 = cpu_seconds(pid)
            time.sleep(3.0)
            assert cpu_seconds(pid) - cpu0 < 0.3, "the idle loop must not spin"
            agent.signal(signal.SIGHUP)
            assert b"RELOADING=1" in _next_state(notify)
            assert b"READY=1" in _next_state(notify)
            agent.signal(signal.SIGTERM)
            assert b"STOPPING=1" in _next_state(notify)
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
            notify.close()
            shutil.rmtree(public)


def test_an_interpreter_the_user_cannot_execute_is_said_at_start(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """After `user:` dropped privileges, a SIGHUP's configuration check runs this interpreter as that user: one
    only root can reach (here: behind a 0700 directory) is a warning at start, and each SIGHUP one error line."""
    private = Path(tempfile.mkdtemp(prefix="espm-root-only-"))  # mode 0700
    (private / "prefix").symlink_to(sys.prefix)
    monkeypatch.setattr(sys, "executable", str(private / "prefix" / Path(sys.executable).relative_to(sys.prefix)))
    with veth_pair() as pair:
        cfg = tmp_path / "espmeter.yaml"
        cfg.write_text(f"interfaces: [{pair.capture_if}]\nuser: nobody\n")
        cfg.chmod(0o644)
        agent = AgentProcess(pair.capture_ns, ["--config", str(cfg)], tmp_path / "agent.log")
        try:
            agent.wait_for("espmeter running")
            agent.signal(signal.SIGHUP)
            agent.wait_for("reload failed, keeping the running configuration: cannot run the configuration check")
            log = agent.log.read_text()
            assert f"user nobody cannot execute {sys.executable}: SIGHUP cannot check" in log, log
            assert agent.stop() == 0, log
        finally:
            agent.kill()
            shutil.rmtree(private)


def test_interface_that_appears_later(tmp_path: Path) -> None:
    """Configured before it exists (a PPPoE link not up yet): capture starts when netlink announces it."""
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS["random_loss"]().write(cap)
    want = truth(read_json(cap))
    with veth_pair(link=False) as pair:
        out = tmp_path / "late.ipfix"
        cfg = tmp_path / "espmeter.yaml"
        cfg.write_text(f"interfaces: [{pair.capture_if}]\ncollectors: ['file://{out}']\n")
        agent = AgentProcess(pair.capture_ns, ["--config", str(cfg)], tmp_path / "agent.log")
        try:
            agent.wait_for("espmeter running")
            assert "capturing on" not in agent.log.read_text()
            pair.create_link()
            agent.wait_for("capturing on", timeout=3.0)  # the link event, not the 5 s retry
            pair.replay(cap, pps=20000)
            time.sleep(0.5)
            assert agent.stop() == 0
        finally:
            agent.kill()
    assert sums(read_file(str(out))) == want


def test_sas_sent_by_this_box_are_marked(tmp_path: Path) -> None:
    """An address of the box appears (netlink event): SAs from it are egress (flowDirection 1) and
    flagged in the SA table, so nobody reads their 0 % loss as a healthy path."""
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS["random_loss"]().write(cap)
    with veth_pair() as pair:
        agent, out = _start(pair, tmp_path)
        try:
            pair.run(pair.capture_ns, "ip", "addr", "add", "10.0.1.1/32", "dev", pair.capture_if)
            time.sleep(1.0)
            pair.replay(cap, pps=20000)
            time.sleep(0.5)
            agent.signal(signal.SIGUSR1)
            agent.wait_for("(sent here)")
            assert agent.stop() == 0
        finally:
            agent.kill()
    data = [r for r in read_file(str(out)) if is_sa_record(r)]
    local = {r["flowDirection"] for r in data if str(r["sourceIPv4Address"]) == "10.0.1.1"}
    others = {r["flowDirection"] for r in data if str(r["sourceIPv4Address"]) != "10.0.1.1"}
    assert local == {1} and others == {0}
