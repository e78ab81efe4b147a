"""Live benchmark: tcpreplay at top speed into a veth pair, `espmeter run` capturing the other end.

Reports the replay rate, the kernel drops espmeter's capture saw (from its exported statistics),
espmeter's CPU time per packet during the replay (utime + stime from /proc), i.e. the packet rate one
core could take, its RSS after the replay and its CPU over 5 s of idle afterwards; and checks that the
exported records add up, per SA, to `espmeter read --json` of the same capture. Default settings
unless --buffer-mb. Needs root (namespaces). Capture: e.g. bench/out/esp-2000000-2000.pcap.

    python bench/live.py CAPTURE [--buffer-mb N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.collect import read_file  # noqa: E402
from tests.ipfix_sums import read_json, sums, truth  # noqa: E402
from tests.netns import AgentProcess, cpu_seconds, rss_kb, veth_pair  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("--buffer-mb", type=int, default=None, help="capture ring per direction (default: the agent's)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="espm-live-"))
    out = work / "records.ipfix"
    with veth_pair() as pair:
        cfg = work / "espmeter.yaml"
        cfg.write_text(f"interfaces: [{pair.capture_if}]\ncollectors: ['file://{out}']\n"
                       + (f"buffer_size_mb: {args.buffer_mb}\n" if args.buffer_mb else ""))
        agent = AgentProcess(pair.capture_ns, ["--config", str(cfg)], work / "agent.log")
        try:
            agent.wait_for("capturing on")
            time.sleep(0.5)
            cpu0 = cpu_seconds(agent.proc.pid)
            rss_before = rss_kb(agent.proc.pid)
            t0 = time.monotonic()
            rep = pair.run(pair.sender_ns, "tcpreplay", "--topspeed", "-i", pair.sender_if, args.capture)
            replay_s = time.monotonic() - t0
            time.sleep(1.0)  # let the agent drain its socket buffer
            cpu = cpu_seconds(agent.proc.pid) - cpu0
            rss_after = rss_kb(agent.proc.pid)
            idle0 = cpu_seconds(agent.proc.pid)
            time.sleep(5.0)
            idle_cpu = cpu_seconds(agent.proc.pid) - idle0
            rss_idle = rss_kb(agent.proc.pid)
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
    records = read_file(str(out))
    exact = sums(records) == truth(read_json(args.capture))
    stats = [r for r in records if "droppedPacketTotalCount" in r]
    last = stats[-1]
    frames = last["packetTotalCount"]
    sent = next((line for line in rep.stdout.splitlines() if "Actual:" in line), rep.stdout.strip())
    result = {
        "capture": args.capture,
        "tcpreplay": sent.strip(),
        "replay_seconds": round(replay_s, 3),
        "frames_seen": frames,
        "kernel_drops": last["droppedPacketTotalCount"],
        "espmeter_cpu_seconds": round(cpu, 3),
        "cpu_us_per_packet": round(1e6 * cpu / max(frames, 1), 3),
        "one_core_pps": round(frames / cpu) if cpu else None,
        "rss_mb_before_replay": round(rss_before / 1024, 1),
        "rss_mb_after_replay": round(rss_after / 1024, 1),
        "rss_mb_idle": round(rss_idle / 1024, 1),
        "cpu_s_per_5s_idle": round(idle_cpu, 3),
        "records_equal_read_json": exact,
    }
    print(json.dumps(result, indent=2))
    return 0 if exact and not last["droppedPacketTotalCount"] else 1


if __name__ == "__main__":
    sys.exit(main())
