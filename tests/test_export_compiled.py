"""exporter/_encode.c writes exactly what the Python packers and selectors (the oracle) write.

Every record goes through both: the same template variant, the same bytes, including the records the
compiled packer hands back to Python (None, out of range, floats, addresses of another length, strings
of 255 octets or more). The whole message stream is pinned for both paths by test_export_stream_golden.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest

from exporter import codec
from exporter.encoding import RecordEncoder
from exporter.infomodel import InfoModel
from exporter.records import ENCAP_UDP, BiflowRecord, LossEvent, SARecord
from tests.collectors import make_sa
from tests.test_export_codec import varied


def encoders(biflow: bool) -> tuple[RecordEncoder, RecordEncoder]:
    """(compiled, Python) encoders."""
    if codec.compiled is None:
        pytest.skip("exporter/_encode.c not built in this tree (pip install -e . or setup.py build_ext --inplace)")
    return (RecordEncoder(InfoModel.load(), 7, biflow=biflow),
            RecordEncoder(InfoModel.load(), 7, biflow=biflow, compiled=False))


def edge_cases() -> list[SARecord]:
    """Values at and beyond every field's range, and types struct takes or refuses."""
    out = [make_sa(0, spi=2**32 - 1, packets=2**64 - 1, lost=2**64, reordered=-1, first_seq=True, last_seq=2.5),
           make_sa(1, src=b"\x01\x02\x03", dst=b"\x01" * 5, vlan=0, inner_vlan=None, direction=0),
           make_sa(2, encap=ENCAP_UDP, sport=4500, dport=65536, tunnel_name="n" * 254, peer_spi=2**32),
           make_sa(3, encap=ENCAP_UDP, sport=None, dport=4500, tunnel_name="ü" * 127, tunnel_id=2**63),
           make_sa(4, tunnel_name="ü" * 128, ingress_if=2**31, egress_if=-(2**70), max_reorder_extent=2**32),
           make_sa(5, tunnel_name="", end_reason=256, start_ms=2**63, end_ms=2**63 - 1)]
    return out + varied(1500, seed=3)


@pytest.mark.parametrize("biflow", [False, True])
def test_compiled_records_equal_python(biflow):
    fast, slow = encoders(biflow)
    recs = edge_cases()
    records: list[SARecord | BiflowRecord] = list(recs)
    records += [BiflowRecord(a, b) for a, b in zip(recs[::2], recs[1::2], strict=False)]
    got, want = fast.encode(records), slow.encode(iter(records))
    assert [c.tid for c in got.codecs] == [c.tid for c in want.codecs]
    assert got.data == want.data
    assert got.packets == want.packets and got.octets == want.octets
    assert len({c.tid for c in got.codecs}) > 100


def test_compiled_loss_events_equal_python():
    fast, slow = encoders(False)
    events = [LossEvent(src=sa.src, dst=sa.dst, spi=sa.spi, encap=sa.encap, sport=sa.sport, dport=sa.dport,
                        ingress_if=sa.ingress_if, egress_if=sa.egress_if, first=sa.first_seq or 0,
                        last=(sa.first_seq or 0) + i % 9, after=1795651003.000123 + i, before=1795651003.5 + i,
                        tunnel_id=sa.tunnel_id, tunnel_name=sa.tunnel_name)
              for i, sa in enumerate(edge_cases())]
    got, want = fast.loss_events(events), slow.loss_events(events)
    assert [c.tid for c in got.codecs] == [c.tid for c in want.codecs]
    assert got.data == want.data


def test_compiled_errors_and_references_as_python():
    """A value Python cannot encode raises the same error; nothing the packer reads is leaked."""
    fast, slow = encoders(False)
    bad = make_sa(0, tunnel_name="\udc80")  # a lone surrogate: not UTF-8
    for enc in (fast, slow):
        with pytest.raises(UnicodeEncodeError):
            enc.encode([bad])
    with pytest.raises(TypeError):
        fast.encode([make_sa(0, src=None)])  # len(None), as the Python selector
    rec = make_sa(0, tunnel_name="site-1", lost=2**70)  # the fallback path too
    name, lost = rec.tunnel_name, rec.lost
    before = [sys.getrefcount(x) for x in (rec, name, lost)]
    for _ in range(1000):
        fast.encode([rec, dataclasses.replace(rec, lost=1)])
    assert [sys.getrefcount(x) for x in (rec, name, lost)] == before


def test_compiled_encoder_is_built_and_taken_unless_forced_off():
    """CI builds exporter/_encode.c (gcc, python3-dev): the C path must be the one under test there."""
    if os.environ.get("ESPMETER_PURE_PYTHON"):
        assert codec.compiled is None
        return
    if codec.compiled is None and not os.environ.get("CI"):
        pytest.skip("exporter/_encode.c not built in this tree (pip install -e . or setup.py build_ext --inplace)")
    assert codec.compiled is not None, "exporter/_encode.c is not built (pip install -e .)"
    enc = RecordEncoder(InfoModel.load(), 7, biflow=False)
    assert isinstance(enc._select_sa, codec.compiled.Selector)
    assert type(enc._select_sa(make_sa(0)).pack).__name__ == "builtin_function_or_method"
    assert not isinstance(RecordEncoder(InfoModel.load(), 7, biflow=False, compiled=False)._select_sa,
                          codec.compiled.Selector)
