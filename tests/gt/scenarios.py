"""Named ground-truth scenarios shared by the tests, the CLI, the README demo and benchmarks."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from . import frames as fr
from .build import Scenario
from .scenario import FragPlan, SASpec

MS = 1000
SEC = 1_000_000


def v4(net: int, host: int) -> str:
    return f"10.{net >> 8 & 0xFF}.{net & 0xFF}.{host}"


def v6(net: int, host: int) -> str:
    return f"2001:db8:{net:x}::{host:x}"


def _tunnels(sc: Scenario, n: int, **kw: object) -> list[tuple[int, int]]:
    """`n` plain tunnels between distinct address pairs, 100 packets each unless overridden."""
    out = []
    for t in range(n):
        spec = SASpec(v4(t + 1, 1), v4(t + 1, 2), 0xC0000000 + 2 * t, link=sc.link(), start_us=t * 50, **kw)
        out.append(sc.add_tunnel(spec, 0xC0000001 + 2 * t))
    return out


def no_loss() -> Scenario:
    sc = Scenario("no_loss")
    _tunnels(sc, 2, count=200)
    spec = SASpec("192.0.2.1", "198.51.100.1", 0x1234, link=sc.link(), start_us=300, count=150,
                  v4_options=fr.IPV4_ROUTER_ALERT)
    sc.add_tunnel(spec, 0x4321)
    return sc


def random_loss() -> Scenario:
    sc = Scenario("random_loss")
    rng = random.Random(1)
    for t in range(4):
        encap = "udp" if t % 2 else "esp"
        spec = SASpec(v4(t + 1, 1), v4(t + 1, 2), 0x100 + t, link=sc.link(), encap=encap, count=500,
                      start_us=t * 100, drops={s for s in range(2, 500) if rng.random() < 0.05})
        sc.add_tunnel(spec, 0x200 + t, drops={s for s in range(2, 500) if rng.random() < 0.02})
    return sc


def burst_loss() -> Scenario:
    sc = Scenario("burst_loss")
    spec = SASpec(v4(1, 1), v4(1, 2), 0x51, link=sc.link(), count=1000,
                  drops=set(range(100, 110)) | set(range(400, 450)) | {999})
    sc.add_tunnel(spec, 0x52, drops=set(range(600, 900)))
    return sc


def reorder() -> Scenario:
    """Delays of 1..900 positions at 1 ms spacing: inside the 1024 window and the 2 s reorder time."""
    sc = Scenario("reorder")
    base = 10_001
    spec = SASpec(v4(1, 1), v4(1, 2), 0x61, link=sc.link(), start_seq=base, count=2000,
                  delays={base + 10: 1, base + 50: 3, base + 100: 10, base + 300: 100, base + 1000: 900})
    sc.add_tunnel(spec, 0x62, delays={base + 500: 2})
    first = SASpec(v4(2, 1), v4(2, 2), 0x63, link=sc.link(), count=100, start_us=10, delays={1: 5})
    sc.add_sa(first)
    return sc


def dup_loss() -> Scenario:
    sc = Scenario("dup_loss")
    spec = SASpec(v4(1, 1), v4(1, 2), 0x71, link=sc.link(), count=300, drops={20, 21, 150, 299},
                  dups={10: 0, 100: 3, 200: 0})
    sc.add_tunnel(spec, 0x72, dups={50: 1}, drops={51, 52})
    return sc


def gilbert_elliott() -> Scenario:
    """Bursty loss from a two-state Markov chain (good: 0.2 % loss, bad: 60 %) on two tunnels."""
    sc = Scenario("gilbert_elliott")
    rng = random.Random(5)
    for t in range(2):
        drops, bad = set(), False
        for s in range(2, 4000):
            bad = rng.random() < (0.7 if bad else 0.01)
            if rng.random() < (0.6 if bad else 0.002):
                drops.add(s)
        spec = SASpec(v4(t + 1, 1), v4(t + 1, 2), 0x170 + t, link=sc.link(), count=4000, spacing_us=500,
                      start_us=t * 100, drops=drops)
        sc.add_tunnel(spec, 0x180 + t, drops={s for s in range(2, 4000) if rng.random() < 0.01})
    return sc


def reorder_loss() -> Scenario:
    """Reordered datagrams inside gaps: one splits a gap in two, others fill a gap's lowest or highest
    number; a duplicate and a fragmented datagram just before gaps (their arrival must not move `after`)."""
    sc = Scenario("reorder_loss")
    drops = set(range(100, 105)) | set(range(106, 111)) | set(range(200, 205)) | set(range(300, 305)) \
        | set(range(400, 410)) | {600}
    spec = SASpec(v4(1, 1), v4(1, 2), 0x191, link=sc.link(), count=1000, drops=drops,
                  delays={105: 20, 199: 10, 305: 10, 599: 5}, dups={399: 0})
    sc.add_tunnel(spec, 0x192, drops={500, 501}, dups={499: 2})
    frag = SASpec(v4(2, 1), v4(2, 2), 0x193, link=sc.link(), count=100, payload=400, start_us=30,
                  frags={40: FragPlan(3), 60: FragPlan(3, order=(2, 1, 0))}, drops={41, 42, 61})
    sc.add_sa(frag)
    return sc


def outage() -> Scenario:
    """Tunnels silent for longer than the idle timeout (30 s) while numbers go on: 500 numbers lost over
    40 s both ways; 3000 numbers (more than the window) over 35 s on a second tunnel."""
    sc = Scenario("outage")
    gone = set(range(1000, 1500))
    sc.add_tunnel(SASpec(v4(1, 1), v4(1, 2), 0x1A1, link=sc.link(), count=2000, drops=gone,
                         pauses={1500: 40 * SEC}), 0x1A2, drops=gone, pauses={1500: 40 * SEC})
    sc.add_tunnel(SASpec(v4(2, 1), v4(2, 2), 0x1A3, link=sc.link(), count=6000, start_us=10,
                         drops=set(range(2000, 5000)), pauses={5000: 35 * SEC}), 0x1A4)
    return sc


def _fragments(name: str, plan: FragPlan) -> Scenario:
    """The same plan applied to datagrams 10, 20, 30 of an ESP, a UDP and an IPv6 SA."""
    sc = Scenario(name)
    plans = {10: plan, 20: plan, 30: plan}
    for n, (src, dst, encap, ext) in enumerate([(v4(1, 1), v4(1, 2), "esp", ()),
                                                (v4(2, 1), v4(2, 2), "udp", ()),
                                                (v6(3, 1), v6(3, 2), "esp", (fr.PROTO_HOPOPT,))]):
        spec = SASpec(src, dst, 0x81 + 2 * n, link=sc.link(), encap=encap, count=50, payload=400,
                      start_us=n * 100, frags=plans, v6_ext=ext)
        sc.add_tunnel(spec, 0x82 + 2 * n)
    return sc


def fragments_all() -> Scenario:
    return _fragments("fragments_all", FragPlan(3))


def fragments_nonfirst_lost() -> Scenario:
    return _fragments("fragments_nonfirst_lost", FragPlan(3, lost=frozenset({1})))


def fragments_first_lost() -> Scenario:
    return _fragments("fragments_first_lost", FragPlan(3, lost=frozenset({0})))


def fragments_out_of_order() -> Scenario:
    return _fragments("fragments_out_of_order", FragPlan(3, order=(2, 1, 0)))


def nat_t() -> Scenario:
    """ESP-in-UDP behind NAT, with IKE on 500 and 4500 (non-ESP marker) and NAT keepalives."""
    sc = Scenario("nat_t")
    a, b, c = "192.0.2.10", "203.0.113.5", "198.51.100.7"
    sc.add_ike(a, b, 8, sc.link(), start_us=0)
    sc.add_ike(c, b, 6, sc.link(), start_us=500)
    sc.add_tunnel(SASpec(a, b, 0xA1, link=sc.link(), encap="udp", count=200, start_us=20 * MS, drops={77}), 0xA2)
    sc.add_tunnel(SASpec(c, b, 0xB1, link=sc.link(), encap="udp", sport=34567, dport=4500, count=200,
                         start_us=21 * MS), 0xB2)
    for n in range(5):
        sc.add_keepalive(a, b, sc.link(), 25 * MS + n * 20 * MS)
        sc.add_keepalive(c, b, sc.link(), 26 * MS + n * 20 * MS)
    return sc


def rekey() -> Scenario:
    """Old and new SA pairs overlapping in time: two tunnels, paired by first-seen proximity."""
    sc = Scenario("rekey")
    a, b = "192.0.2.1", "192.0.2.2"
    sc.add_ike(a, b, 4, sc.link(), start_us=0)
    sc.add_tunnel(SASpec(a, b, 0x1000, link=sc.link(), count=700, spacing_us=10 * MS, start_us=10 * MS,
                         drops=set(range(650, 660))), 0x1001)
    sc.add_ike(b, a, 4, sc.link(), start_us=4900 * MS)
    sc.add_tunnel(SASpec(a, b, 0x2000, link=sc.link(), count=500, spacing_us=10 * MS, start_us=5 * SEC,
                         drops={30, 31, 32}), 0x2001, rev_delay_us=900, drops={499})
    return sc


def esn_wrap() -> Scenario:
    """Numbers crossing 2**32 on the wire: a plain wrap, and one with loss and reordering across it."""
    sc = Scenario("esn_wrap")
    sc.add_tunnel(SASpec(v4(1, 1), v4(1, 2), 0xE1, link=sc.link(), start_seq=2**32 - 50, count=100), 0xE2)
    wrap = 2**32
    sc.add_sa(SASpec(v4(2, 1), v4(2, 2), 0xE3, link=sc.link(), start_seq=wrap - 100, count=200, start_us=10,
                     drops={wrap - 1, wrap}, delays={wrap - 3: 4, wrap + 5: 2}))
    return sc


def restart() -> Scenario:
    """Same SPI restarting at 1 after 3000 packets: a generation 1 entry, no phantom loss."""
    sc = Scenario("restart")
    first = SASpec(v4(1, 1), v4(1, 2), 0xF1, link=sc.link(), count=3000)
    sc.add_sa(first)
    sc.add_sa(SASpec(v4(1, 1), v4(1, 2), 0xF1, link=sc.link(), count=200, generation=1, start_us=3100 * MS))
    sc.add_tunnel(SASpec(v4(2, 1), v4(2, 2), 0xF3, link=sc.link(), count=100, start_us=5), 0xF4)
    return sc


def implausible() -> Scenario:
    """One unconfirmed jump of 10**7 (late + implausible) and one confirmed jump (implausible, gap lost)."""
    sc = Scenario("implausible")
    sc.add_tunnel(SASpec(v4(1, 1), v4(1, 2), 0x91, link=sc.link(), count=100, jumps={50: 10**7}), 0x92)
    seqs = list(range(1, 101)) + list(range(10**7 + 101, 10**7 + 151))
    sc.add_sa(SASpec(v4(2, 1), v4(2, 2), 0x93, link=sc.link(), seqs=seqs, start_us=10))
    return sc


def ipv6_ext() -> Scenario:
    sc = Scenario("ipv6_ext")
    chain = (fr.PROTO_HOPOPT, fr.PROTO_ROUTING, fr.PROTO_DSTOPTS)
    sc.add_tunnel(SASpec(v6(1, 1), v6(1, 2), 0x601, link=sc.link(), count=100, v6_ext=chain, drops={5}), 0x602)
    sc.add_tunnel(SASpec(v6(2, 1), v6(2, 2), 0x603, link=sc.link(), encap="udp", count=100, v6_ext=chain,
                         start_us=10), 0x604, v6_ext=())
    return sc


def vlan() -> Scenario:
    """Untagged, 802.1Q and QinQ; the same address pair and SPIs on two VLANs are distinct SAs."""
    sc = Scenario("vlan")
    a, b = "192.0.2.1", "192.0.2.2"
    for n, link in enumerate([sc.link(), sc.link(vlan=100), sc.link(vlan=200), sc.link(vlan=300, inner_vlan=42)]):
        sc.add_tunnel(SASpec(a, b, 0x700, link=link, count=100, start_us=n * SEC, drops={n + 3}), 0x701)
    return sc


def sll() -> Scenario:
    sc = Scenario("sll", linktype=fr.LINKTYPE_LINUX_SLL)
    out, inn = sc.link(pkttype=fr.SLL_OUTGOING), sc.link(pkttype=fr.SLL_HOST)
    sc.add_tunnel(SASpec(v4(1, 1), v4(1, 2), 0x801, link=out, count=100), 0x802, link=inn)
    sc.add_tunnel(SASpec(v6(2, 1), v6(2, 2), 0x803, link=inn, count=100, start_us=10, drops={9}), 0x804, link=out)
    return sc


def sll2() -> Scenario:
    sc = Scenario("sll2", linktype=fr.LINKTYPE_LINUX_SLL2)
    for n, ifindex in enumerate((2, 5)):
        out, inn = sc.link(ifindex=ifindex, pkttype=fr.SLL_OUTGOING), sc.link(ifindex=ifindex)
        sc.add_tunnel(SASpec(v4(n + 1, 1), v4(n + 1, 2), 0x901 + 2 * n, link=out, count=100, start_us=n * 10,
                             encap="udp" if n else "esp"), 0x902 + 2 * n, link=inn)
    return sc


def sll2_two_interfaces() -> Scenario:
    """A forwarded flow seen on ingress (if 2, in) and egress (if 3, out): two SAs, no duplicates."""
    sc = Scenario("sll2_two_interfaces", linktype=fr.LINKTYPE_LINUX_SLL2)
    base = SASpec(v4(1, 1), v4(1, 2), 0x951, link=sc.link(ifindex=2), count=200, drops={40, 41}, dups={90: 0})
    sc.add_sa(base)
    sc.add_sa(SASpec(v4(1, 1), v4(1, 2), 0x951, link=sc.link(ifindex=3, pkttype=fr.SLL_OUTGOING), count=200,
                     start_us=20, drops={40, 41}, dups={90: 0}))
    return sc


def raw() -> Scenario:
    sc = Scenario("raw", linktype=fr.LINKTYPE_RAW)
    sc.add_tunnel(SASpec(v4(1, 1), v4(1, 2), 0xA01, link=sc.link(), count=100, drops={3}), 0xA02)
    sc.add_tunnel(SASpec(v6(2, 1), v6(2, 2), 0xA03, link=sc.link(), count=100, encap="udp", start_us=10), 0xA04)
    return sc


def null() -> Scenario:
    sc = Scenario("null", linktype=fr.LINKTYPE_NULL)
    sc.add_tunnel(SASpec(v4(1, 1), v4(1, 2), 0xB01, link=sc.link(), count=100, drops={7}), 0xB02)
    for n, af in enumerate((24, 28, 30)):
        link = sc.link(null_af6=af)
        sc.add_tunnel(SASpec(v6(n + 2, 1), v6(n + 2, 2), 0xB03 + 2 * n, link=link, count=50, start_us=10 + n),
                      0xB04 + 2 * n)
    return sc


def mid_sa() -> Scenario:
    """The capture starts while SAs are running: first numbers 5000 and 77777, no phantom loss."""
    sc = Scenario("mid_sa")
    sc.add_tunnel(SASpec(v4(1, 1), v4(1, 2), 0xC01, link=sc.link(), start_seq=5000, count=300), 0xC02,
                  start_seq=77777)
    return sc


def many_sas(tunnels: int = 1500, packets: int = 20) -> Scenario:
    """Thousands of SAs; SPIs reused towards different peers and SPIs sharing their low 16 bits."""
    sc = Scenario("many_sas")
    rng = random.Random(7)
    hub = "172.16.0.1"
    for t in range(tunnels):
        spoke = f"10.{t >> 8 & 0xFF}.{t & 0xFF}.9"
        spi = 0x5000 + t % 100 if t % 3 == 0 else (t << 16) | 0xBEEF
        drops = {s for s in range(2, packets) if rng.random() < 0.03}
        spec = SASpec(hub, spoke, spi, link=sc.link(), count=packets, spacing_us=10 * MS, start_us=t * 5,
                      drops=drops, payload=48)
        sc.add_tunnel(spec, (t << 16) | 0xCAFE, rev_delay_us=2)
    return sc


def concentrator(tunnels: int = 2500, span_us: int = 20 * SEC) -> Scenario:
    """A VPN concentrator: Zipf popularity (tunnel k, from 1, sends about 2000/k packets each way and at
    least one), spread over 20 s, so most of its 5000 SAs send at most one packet a second; every SA is
    seen from its number 1; 0.5 % of the numbers after the first are missing."""
    sc = Scenario("concentrator")
    rng = random.Random(13)
    for t in range(tunnels):
        count = max(1, round(2000 / (t + 1)))
        spec = SASpec(v4(t + 1, 1), v4(t + 1, 2), 0x10000 + 2 * t, link=sc.link(), count=count, payload=48,
                      spacing_us=span_us // count, start_us=rng.randrange(SEC),
                      drops={s for s in range(2, count) if rng.random() < 0.005})
        sc.add_tunnel(spec, 0x10001 + 2 * t, rev_delay_us=rng.randrange(1, 50 * MS),
                      drops={s for s in range(2, count) if rng.random() < 0.005})
    return sc


def late() -> Scenario:
    """Late datagrams: behind the 1024 window (2000 positions), or in it but older than the 2 s reorder time."""
    sc = Scenario("late")
    base = 100_000
    sc.add_tunnel(SASpec(v4(1, 1), v4(1, 2), 0xD01, link=sc.link(), start_seq=base, count=3000,
                         lates={base + 500: 2000}), 0xD02, count=50)
    # Inside the window but older than the reorder time (500 x 5 ms = 2.5 s): late.  300 x 5 ms: reordered.
    sc.add_sa(SASpec(v4(2, 1), v4(2, 2), 0xD03, link=sc.link(), start_seq=base, count=1000, spacing_us=5 * MS,
                     start_us=3, lates={base + 100: 500}, delays={base + 600: 300}))
    return sc


def malformed() -> Scenario:
    """Garbage frames next to a healthy tunnel: each lands in its class, nothing crashes."""
    sc = Scenario("malformed")
    link = sc.link()
    sc.add_tunnel(SASpec(v4(1, 1), v4(1, 2), 0xE01, link=link, count=100, truncs={30, 31}), 0xE02)
    esp = fr.esp(0xE01, 999, 32)
    sc.add_frame(5 * MS, link, link.frame(fr.ipv4(v4(1, 1), v4(1, 2), fr.PROTO_ESP, esp, ihl=3)), "malformed")
    sc.add_frame(6 * MS, link, link.frame(fr.ipv4(v4(1, 1), v4(1, 2), fr.PROTO_ESP, esp, total_length=12)),
                 "malformed")
    whole = link.frame(fr.ipv4(v4(1, 1), v4(1, 2), fr.PROTO_ESP, esp))
    sc.add_frame(7 * MS, link, whole, "truncated", caplen=14 + 10)
    sc.add_frame(8 * MS, link, link.header(0x88B5) + b"\x00" * 46, "other")
    sc.add_frame(9 * MS, link, link.header(0x0806) + b"\x00" * 28, "other")
    sc.add_other(v4(1, 1), v4(1, 2), link, 10 * MS)
    return sc


def pcapng() -> Scenario:
    sc = nat_t()
    sc.name, sc.fmt = "pcapng", "pcapng"
    return sc


def pcapng_two_interfaces() -> Scenario:
    """A transit router captured with `dumpcap -i wan -i lan`: each SA seen on both interfaces, the
    router dropping some datagrams between them (lost on lan only), an unnamed third interface."""
    sc = Scenario("pcapng_two_interfaces", fmt="pcapng", if_names=("wan", "lan", None))
    wan, lan, other = sc.link(capture_if=0), sc.link(capture_if=1), sc.link(capture_if=2)
    fwd = SASpec(v4(1, 1), v4(1, 2), 0x2A01, link=wan, count=300, drops={50})
    rev = SASpec(v4(1, 2), v4(1, 1), 0x2A02, link=lan, count=300, start_us=200, dups={120: 0})
    sc.add_sa(fwd)
    sc.add_sa(dataclasses.replace(fwd, link=lan, start_us=10, drops={50, 60, 61, 200}))  # the router's loss
    sc.add_sa(rev)
    sc.add_sa(dataclasses.replace(rev, link=wan, start_us=215, dups={}))
    sc.pairs += [(0, 3), (1, 2)]
    sc.add_tunnel(SASpec(v4(3, 1), v4(3, 2), 0x2A03, link=other, count=50, start_us=5), 0x2A04)
    return sc


def snaplen() -> Scenario:
    """Snaplen 96 cuts every ESP payload but keeps the headers: counted as ESP, octets from IP length."""
    sc = Scenario("snaplen", snaplen=96)
    sc.add_tunnel(SASpec(v4(1, 1), v4(1, 2), 0xF01, link=sc.link(), count=100, payload=300, drops={4}), 0xF02)
    return sc


def _mixed_spec(rng: random.Random, sc: Scenario, t: int, count: int) -> SASpec:
    """Every perturbation at once, each in its own 100-number block so none sits on another's threshold."""
    base = 5000
    spec = SASpec(v6(t + 1, 1) if t % 4 == 3 else v4(t + 1, 1), v6(t + 1, 2) if t % 4 == 3 else v4(t + 1, 2),
                  0x3000 + t, link=sc.link(), encap="udp" if t % 2 else "esp", start_seq=base, count=count,
                  payload=200, start_us=t * 37)
    for block in range(1, count // 100 - 1):
        b = base + block * 100
        spec.drops |= {b + o for o in range(60, 100) if rng.random() < 0.04}
        kind = block % 10
        if kind == 1:
            spec.delays[b + 10] = rng.randint(1, 80)
        elif kind == 3:
            spec.dups[b + 20] = rng.randint(0, 3)
        elif kind == 5:
            lost = rng.choice([frozenset(), frozenset({0}), frozenset({1})])
            n = rng.randint(2, 3)
            spec.frags[b + 30] = FragPlan(n, lost=lost, order=tuple(range(n))[::-1] if block % 20 else None)
        elif kind == 7 and block % 20 == 7:
            spec.jumps[b + 40] = 10**7 + rng.randint(0, 1000)
        elif kind == 9 and block == 9:
            spec.lates[b + 50] = 1500
    return spec


def mixed(tunnels: int = 20, count: int = 3000) -> Scenario:
    """Loss, reordering, duplicates, fragments, late and implausible datagrams together on many SAs."""
    sc = Scenario("mixed")
    rng = random.Random(11)
    for t in range(tunnels):
        sc.add_tunnel(_mixed_spec(rng, sc, t, count), 0x4000 + t, drops={s for s in range(5002, 5000 + count)
                                                                           if rng.random() < 0.01})
    return sc


def registry() -> dict[str, Callable[[], Scenario]]:
    """Fresh name -> constructor mapping (no shared mutable module state)."""
    return {f.__name__: f for f in (
        no_loss, random_loss, burst_loss, gilbert_elliott, reorder, reorder_loss, dup_loss, outage, fragments_all,
        fragments_nonfirst_lost,
        fragments_first_lost, fragments_out_of_order, nat_t, rekey, esn_wrap, restart, implausible, ipv6_ext,
        vlan, sll, sll2, sll2_two_interfaces, raw, null, mid_sa, many_sas, concentrator, late, malformed, pcapng,
        pcapng_two_interfaces, snaplen, mixed)}
