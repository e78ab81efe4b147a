"""For every SA, the delta fields summed over all its exported records equal `espmeter read --json`.

Short active/idle timeouts split each SA into many records, so loss that becomes final in one
interval must be counted there exactly once. Runs the real CLI with a file:// collector and decodes
the file with the project's collector.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.collect import read_file
from tests.gt.scenarios import registry
from tests.ipfix_sums import event_truth, events_exported, is_sa_record, pairs, read_json, sums, truth

SCENARIOS = registry()
SPLIT = ["random_loss", "burst_loss", "reorder", "dup_loss", "late", "rekey", "nat_t", "fragments_nonfirst_lost",
         "fragments_out_of_order", "restart", "implausible", "esn_wrap", "vlan", "ipv6_ext", "many_sas"]


@pytest.mark.parametrize("mode", ["sa", "biflow"])
@pytest.mark.parametrize("name", SPLIT)
def test_record_sums_equal_read(name: str, mode: str, tmp_path: Path) -> None:
    cap = str(tmp_path / "cap.pcap")
    SCENARIOS[name]().write(cap)
    cfg = tmp_path / "espmeter.yaml"
    cfg.write_text(f"records: {mode}\nactive_timeout_s: 1\nidle_timeout_s: 2\n")
    out = tmp_path / "out.ipfix"
    doc = read_json(cap, "--events", "--config", str(cfg), "--collector", f"file://{out}")
    records = read_file(str(out))
    data = [r for r in records if is_sa_record(r)]
    assert data, "no data records exported"
    assert sums(records) == truth(doc)
    # every loss event as a record of its own: numbers exactly, times to the millisecond; the SA records
    # count them (espLossEventDeltaCount) and name the longest of each interval
    assert events_exported(records) == event_truth(doc)
    want = {(sa["spi"], sa["peer_spi"]) for sa in doc["sas"] if sa["peer_spi"] is not None}
    assert want <= pairs(records) | {(b, a) for a, b in pairs(records)}
    for rec in data:  # the invariant holds per record, in each direction
        lost, exp = rec["espLostPacketDeltaCount"], rec["espExpectedPacketDeltaCount"]
        acc = rec["espDatagramDeltaCount"] - rec["espDuplicatePacketDeltaCount"] - rec["espLatePacketDeltaCount"]
        assert lost + acc == exp
    long_lived = [sa["spi"] for sa in doc["sas"] if sa["last_seen"] - sa["first_seen"] > 1.5]
    for spi in long_lived:  # a 1 s active timeout splits these into several records
        assert sum(1 for r in data if spi in (r["IPSecSPI"], r.get("reverseIPSecSPI"))) >= 2
