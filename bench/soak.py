"""Soak run (not in CI): replayed traffic with SA churn for a long time; memory and CPU must stay flat
and the exported counts must be exact at the end.

Each round replays a fresh ground-truth capture (new SPIs: rekeys) into a veth pair while `espmeter run`
captures the other end with short timeouts and a small SA table, so SAs keep being created, going idle,
dormant and evicted. RSS and CPU of the agent are sampled every round; at the end the records it
exported, summed per SA, must equal `espmeter read --json` of every capture. Needs root.

    python bench/soak.py --minutes 60
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.collect import read_file  # noqa: E402
from tests.gt.build import Scenario  # noqa: E402
from tests.gt.scenario import SASpec  # noqa: E402
from tests.ipfix_sums import read_json, sums, truth  # noqa: E402
from tests.netns import AgentProcess, cpu_seconds, rss_kb, veth_pair  # noqa: E402


def capture(path: Path, round_no: int, tunnels: int) -> None:
    rng = random.Random(round_no)
    sc = Scenario(f"soak{round_no}")
    for t in range(tunnels):
        spi = (round_no << 16) | (t << 1) | 1
        src, dst = f"10.{t >> 8}.{t & 255}.1", f"10.{t >> 8}.{t & 255}.2"
        spec = SASpec(src, dst, spi, link=sc.link(), count=150, start_us=t * 37,
                      drops={s for s in range(2, 150) if rng.random() < 0.01})
        sc.add_tunnel(spec, spi + 1, drops={s for s in range(2, 150) if rng.random() < 0.01})
    sc.write(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--tunnels", type=int, default=200)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="espm-soak-"))
    out = work / "records.ipfix"
    want: dict = {}
    samples = []
    with veth_pair() as pair:
        cfg = work / "espmeter.yaml"
        cfg.write_text(f"interfaces: [{pair.capture_if}]\ncollectors: ['file://{out}']\n"
                       "active_timeout_s: 5\nidle_timeout_s: 3\nmax_sas: 1000\n")
        agent = AgentProcess(pair.capture_ns, ["--config", str(cfg)], work / "agent.log")
        try:
            agent.wait_for("capturing on")
            deadline = time.monotonic() + 60 * args.minutes
            round_no = 1
            while time.monotonic() < deadline:
                cap = work / "round.pcap"
                capture(cap, round_no, args.tunnels)
                for key, figures in truth(read_json(str(cap))).items():
                    want[key] = figures
                pair.replay(str(cap), pps=20000)
                pid = agent.proc.pid
                samples.append({"round": round_no, "t": round(time.monotonic(), 1), "rss_kb": rss_kb(pid),
                                "cpu_s": round(cpu_seconds(pid), 2)})
                print(json.dumps(samples[-1]), flush=True)
                round_no += 1
            time.sleep(1.0)
            assert agent.stop() == 0, agent.log.read_text()
        finally:
            agent.kill()
    got = sums(read_file(str(out)))
    exact = got == want
    first, last = samples[0], samples[-1]
    print(json.dumps({"rounds": len(samples), "sas": len(want), "exact": exact,
                      "rss_kb_first": first["rss_kb"], "rss_kb_last": last["rss_kb"],
                      "rss_kb_max": max(s["rss_kb"] for s in samples),
                      "cpu_s_per_round_first": samples[1]["cpu_s"] - first["cpu_s"] if len(samples) > 1 else None,
                      "cpu_s_per_round_last": last["cpu_s"] - samples[-2]["cpu_s"] if len(samples) > 1 else None}))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
