"""Regenerate agent/demo.pcap, the capture `espmeter demo` meters (uses the test generator).

    python examples/make_demo_capture.py && espmeter read agent/demo.pcap
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gt.build import Scenario  # noqa: E402
from tests.gt.scenario import SASpec  # noqa: E402

MS = 1000


def demo() -> Scenario:
    """Three tunnels a network engineer recognises: lossy, NAT-T with IKE, IPv6 with duplicates."""
    rng = random.Random(7)
    sc = Scenario("demo", snaplen=96)
    hq, branch, nat, v6a, v6b = "192.0.2.1", "198.51.100.1", "203.0.113.7", "2001:db8::1", "2001:db8:1::1"
    sc.add_ike(hq, branch, 4, sc.link(), start_us=0)
    sc.add_tunnel(SASpec(hq, branch, 0xC1A0_0001, link=sc.link(), count=1000, spacing_us=5 * MS, start_us=5 * MS,
                         drops={s for s in range(2, 1000) if rng.random() < 0.01},
                         delays={300: 3, 600: 40}), 0x0B5E_0001)
    sc.add_ike(nat, hq, 6, sc.link(), start_us=1 * MS)
    sc.add_tunnel(SASpec(nat, hq, 0xD00D_0042, link=sc.link(), encap="udp", sport=31337, dport=4500, count=800,
                         spacing_us=3 * MS, start_us=30 * MS, drops=set(range(400, 425))), 0xFEED_0042)
    for n in range(5):
        sc.add_keepalive(nat, hq, sc.link(), 40 * MS + n * 1000 * MS)
    sc.add_tunnel(SASpec(v6a, v6b, 0x6666_0001, link=sc.link(), count=500, spacing_us=8 * MS, start_us=50 * MS,
                         dups={100: 0, 300: 2}), 0x6666_0002)
    return sc


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "agent" / "demo.pcap"
    demo().write(out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
