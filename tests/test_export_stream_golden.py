"""Golden test: the exact IPFIX message stream of a varied export, pinned byte for byte.

The exporter's fast paths (per-layout generated encoders, record runs framed by slices) must write the
messages the straightforward encoder wrote: same messages, sets, records and order. The golden file
was written by the exporter before those paths existed (commit 5560db9); the export time and the
exporting process id are fixed, so nothing in it varies between runs. What each message counts
(records, packets and octets, the notSent* totals if it is lost) is pinned too.

Regenerate only for an intended change of the wire format: `python -m tests.test_export_stream_golden`.
"""

from __future__ import annotations

import ipaddress
import json
import lzma
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from exporter import Exporter, ExportSettings, MeteringStats, codec
from exporter.records import ENCAP_UDP, BiflowRecord, LossEvent, SARecord
from exporter.session import Session
from exporter.transport import CollectorCounters

GOLDEN = Path(__file__).parent / "golden" / "export-stream.json.xz"
CLOCK = 1795651040.0
T0_MS = 1795651003000
NAMES = (None, None, None, "", "t", "tunnel-ü", "x" * 254, "y" * 255, "z" * 300)
SCENARIOS = {  # name: (records, mtu, template_refresh_messages)
    "sa-1400": ("sa", 1400, 100), "sa-512-refresh": ("sa", 512, 7), "sa-9000": ("sa", 9000, 100),
    "biflow-1400": ("biflow", 1400, 100), "biflow-512-refresh": ("biflow", 512, 5),
}


class CaptureTransport:
    """A UDP-like transport (templates refreshed by the session) that keeps what it is given."""

    reliable = False

    def __init__(self, url: str):
        self.url = url
        self.counters = CollectorCounters()
        self.messages: list[bytes] = []

    def send(self, message: bytes) -> None:
        self.messages.append(message)
        self.counters.sent(message)

    def tick(self) -> None:
        pass

    def close(self, timeout: float = 5.0) -> None:
        pass


class CaptureExporter(Exporter):
    def _make_transport(self, url: str, session: Session) -> CaptureTransport:
        return CaptureTransport(url)


def _sa(r: random.Random, i: int, varied: bool) -> SARecord:
    """An SA record; `varied` draws every optional group (else a concentrator's IPv4 SA with peer)."""
    def maybe(p: float, value: Any) -> Any:
        return value if not varied or r.random() < p else None

    v6 = varied and r.random() < 0.3
    src = ipaddress.ip_address(f"2001:db8::{i:x}" if v6 else f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}").packed
    dst = ipaddress.ip_address("2001:db8:1::1" if v6 else "198.51.100.1").packed
    udp = varied and r.random() < 0.3
    packets = int(r.random() * 5000)
    return SARecord(
        start_ms=T0_MS + int(r.random() * 10**6), end_ms=T0_MS + 10**6 + int(r.random() * 10**6), src=src, dst=dst,
        spi=2**33 if varied and r.random() < 0.03 else 0xC0000000 + i, encap=ENCAP_UDP if udp else 0,
        sport=(4500 if r.random() < 0.7 else None) if udp else None, dport=4500 if udp else None,
        packets=packets, octets=packets * 600 + int(r.random() * 600), datagrams=packets,
        lost=2**70 if varied and r.random() < 0.05 else int(r.random() * 9), reordered=int(r.random() * 3),
        duplicates=int(r.random() * 2), late=int(r.random() * 2), expected=packets + 9,
        incomplete=int(r.random() * 2), first_seq=maybe(0.8, 1 + i), last_seq=maybe(0.8, packets + i + 9),
        max_reorder_extent=-3 if varied and r.random() < 0.05 else int(r.random() * 4), end_reason=2,
        vlan=maybe(0.4, int(r.random() * 4095)), inner_vlan=maybe(0.4, int(r.random() * 4095)),
        ingress_if=maybe(0.6, 2), egress_if=maybe(0.3, 3), direction=maybe(0.3, int(r.random() * 2)),
        peer_spi=0xC0000000 + (i ^ 1) if not varied or r.random() < 0.5 else None,
        tunnel_id=maybe(0.5, i // 2 + 1), tunnel_name=_name(r) if varied else None,
        loss_events=int(r.random() * 3), longest_loss_run=int(r.random() * 5),
    )


def _name(r: random.Random) -> str | None:
    """Strings around the 255-octet length switch, and a few above any MTU of the scenarios (dropped)."""
    return "w" * 1500 if r.random() < 0.01 else NAMES[int(r.random() * len(NAMES))]


def _event(r: random.Random, sa: SARecord) -> LossEvent:
    first = int(r.random() * 10**6)
    return LossEvent(src=sa.src, dst=sa.dst, spi=sa.spi, encap=sa.encap, sport=sa.sport, dport=sa.dport,
                     ingress_if=sa.ingress_if, egress_if=sa.egress_if, first=first, last=first + int(r.random() * 9),
                     after=1795651003.000123 + r.random() * 100, before=1795651103.25 + r.random() * 100,
                     tunnel_id=sa.tunnel_id, tunnel_name=sa.tunnel_name)


def stream(records: str, mtu: int, refresh_messages: int) -> tuple[list[bytes], dict[str, int]]:
    """The messages of one export: a concentrator-like run, varied SAs, biflows, loss events, statistics."""
    r = random.Random(9)
    uniform = [_sa(r, i, varied=False) for i in range(400)]
    varied = [_sa(r, 1000 + i, varied=True) for i in range(600)]
    biflows = [BiflowRecord(a, b) for a, b in zip(varied[::2], varied[1::2], strict=True)]
    events = [_event(r, sa) for sa in varied[:200]]
    exp = CaptureExporter(ExportSettings(collectors=["udp://127.0.0.1:4739"], observation_domain=7, mtu=mtu,
                                         template_refresh_messages=refresh_messages, records=records,
                                         exporting_process_id=4242), clock=lambda: CLOCK)
    exp.export(uniform)
    exp.export(varied[:300])
    exp.export_loss_events(events)
    exp.export(biflows[:100] + varied[300:400] + biflows[200:])
    exp.export_stats(MeteringStats(observation_domain=7, frames=10**6, octets=6 * 10**8, ignored_frames=3,
                                   first_ignored_ms=T0_MS, last_ignored_ms=T0_MS + 5))
    exp.export([uniform[0], varied[0], biflows[0]])
    exp.close()
    (session,) = exp._sessions
    messages = session.transport.messages
    return messages, session.counters.as_dict()


def current() -> dict[str, Any]:
    """Every scenario's messages (hex) with what each counts, and the collector counters."""
    out = {}
    for name, args in SCENARIOS.items():
        messages, counters = stream(*args)
        out[name] = {"messages": [m.hex() for m in messages],
                     "counts": [[m.records, m.packets, m.octets] for m in messages], "counters": counters}
    return out


def _set_ids(message: bytes) -> list[int]:
    out, at = [], 16
    while at < len(message):
        set_id, length = struct.unpack_from("!HH", message, at)
        out.append(set_id)
        at += length
    return out


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(lzma.decompress(GOLDEN.read_bytes()))


@pytest.mark.parametrize("path", ["default", "python"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_export_stream_is_byte_identical(golden, name, path, monkeypatch):
    """`default`: exporter/_encode.c where built; `python`: the Python packers and selectors."""
    if path == "python":
        monkeypatch.setattr(codec, "compiled", None)
    messages, counters = stream(*SCENARIOS[name])
    want = golden[name]
    got = [m.hex() for m in messages]
    first_diff = next((i for i, (a, b) in enumerate(zip(got, want["messages"], strict=False)) if a != b), None)
    assert first_diff is None and len(got) == len(want["messages"]), \
        f"{name}: message {first_diff} of {len(got)} (golden {len(want['messages'])}) differs"
    assert [[m.records, m.packets, m.octets] for m in messages] == want["counts"]
    assert counters == want["counters"]


def test_golden_covers_every_path(golden):
    """The stream has runs of one template, many variants, set changes, refreshes and an oversize drop."""
    sa = golden["sa-1400"]
    assert len(sa["messages"]) > 150 and sa["counters"]["not_sent_records"] > 0
    sets = [set_id for m in sa["messages"] for set_id in _set_ids(bytes.fromhex(m))]
    assert len(set(sets)) > 40 and sets.count(2) > 1 and sets.count(3) > 1
    assert sum(a != b for a, b in zip(sets, sets[1:], strict=False)) > 300
    assert len(golden["sa-512-refresh"]["messages"]) > len(sa["messages"]) * 2


if __name__ == "__main__":
    GOLDEN.write_bytes(lzma.compress(json.dumps(current(), separators=(",", ":")).encode(), preset=9))
    print(GOLDEN, GOLDEN.stat().st_size)
