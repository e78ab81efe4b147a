"""strongSwan authority, one function at a time: vici messages to claims, the pairer consulting an
authority, and the reader's one log line for a socket that is missing or not a socket.
(The real charons: tests/test_vici_gateway.py.)"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from agent.config import ConfigError, parse_config
from agent.pairing import Pairer
from agent.sa import SA, esp_ident, udp_ident
from agent.satable import SATable, TableSettings
from agent.strongswan import Claim, Vici, ike_claims

GW, PEER = bytes([198, 18, 1, 2]), bytes([198, 18, 2, 2])

# the shape of charon 5.9.8's list-sa message (values as the binding returns them)
LIST_SA = {"branch-paris": {
    "uniqueid": b"7", "local-host": b"198.18.1.2", "local-port": b"4500",
    "remote-host": b"198.18.2.2", "remote-port": b"4500",
    "child-sas": {
        "net-3": {"name": b"net", "protocol": b"ESP", "encap": b"yes", "spi-in": b"0ee0d125", "spi-out": b"e51b965e"},
        "voice-4": {"name": b"voice", "protocol": b"ESP", "encap": b"no",
                    "spi-in": b"00000a01", "spi-out": b"00000b01"},
        "ah-5": {"name": b"ah", "protocol": b"AH", "spi-in": b"00000c01", "spi-out": b"00000d01"},
        "half-6": {"name": b"half", "protocol": b"ESP", "encap": b"no"},  # no SPIs yet: skipped
    }}}


def test_claims_of_a_list_sa_message() -> None:
    claims = ike_claims(LIST_SA)
    inbound = udp_ident(PEER, GW, 4500, 4500, 0x0EE0D125)
    outbound = udp_ident(GW, PEER, 4500, 4500, 0xE51B965E)
    assert claims[inbound] == Claim("branch-paris/net", outbound, "7")
    assert claims[outbound] == Claim("branch-paris/net", inbound, "7")
    assert claims[esp_ident(PEER, GW, 0xA01)] == Claim("branch-paris/voice", esp_ident(GW, PEER, 0xB01), "7")
    assert len(claims) == 4  # AH and the CHILD_SA without SPIs give none


def test_claims_of_a_child_rekey_message() -> None:
    rekey = {"lab": {**LIST_SA["branch-paris"], "child-sas": {"net": {
        "old": LIST_SA["branch-paris"]["child-sas"]["voice-4"],
        "new": {**LIST_SA["branch-paris"]["child-sas"]["voice-4"], "spi-in": b"00000a02", "spi-out": b"00000b02"}}}}}
    assert set(ike_claims(rekey, "old")) == {esp_ident(PEER, GW, 0xA01), esp_ident(GW, PEER, 0xB01)}
    assert set(ike_claims(rekey, "new")) == {esp_ident(PEER, GW, 0xA02), esp_ident(GW, PEER, 0xB02)}


class Known:
    """An authority that knows a fixed set of claims."""

    def __init__(self, claims: dict[bytes, Claim]) -> None:
        self.claims = claims

    def claim(self, sa: SA) -> Claim | None:
        return self.claims.get(sa.ident)


def _sa(src: bytes, dst: bytes, spi: int, t: float) -> SA:
    return SA(esp_ident(src, dst, spi), False, t, None)


def _pair_claims(name: str, out_spi: int, in_spi: int) -> dict[bytes, Claim]:
    o, i = esp_ident(GW, PEER, out_spi), esp_ident(PEER, GW, in_spi)
    return {o: Claim(name, i, "1"), i: Claim(name, o, "1")}


def test_authority_wins_over_the_heuristic_and_counts_it() -> None:
    """Two CHILD_SAs between the same peers come up close in time: the heuristic (closest first seen)
    would pair in-1 with out-2 and in-2 with out-1; charon says out-1/in-1 and out-2/in-2."""
    pairer = Pairer(Known({**_pair_claims("gw/a", 1, 11), **_pair_claims("gw/b", 2, 12)}))
    out1, out2, in1, in2 = _sa(GW, PEER, 1, 0.0), _sa(GW, PEER, 2, 1.0), _sa(PEER, GW, 11, 1.05), _sa(PEER, GW, 12, 1.1)
    for sa in (out1, out2, in1, in2):
        pairer.add(sa)
    assert (out1.peer, out2.peer, in1.peer, in2.peer) == (in1, in2, out1, out2)
    assert (out1.name, in1.name, out2.name, in2.name) == ("gw/a", "gw/a", "gw/b", "gw/b")
    assert out1.tunnel_id == in1.tunnel_id != out2.tunnel_id == in2.tunnel_id
    assert pairer.disagreements == 1  # in-1 would have taken out-2; in-2's only candidate left was right


def test_unknown_sas_keep_the_heuristic_but_not_the_authoritys_sas() -> None:
    pairer = Pairer(Known(_pair_claims("gw/a", 1, 11)))
    out1 = _sa(GW, PEER, 1, 0.0)
    stranger = _sa(PEER, GW, 99, 0.1)  # not charon's: must not take out-1, reserved for in-11
    other_out = _sa(GW, PEER, 98, 0.2)  # not charon's either: pairs with the stranger by heuristic
    for sa in (out1, stranger, other_out):
        pairer.add(sa)
    assert out1.peer is None and stranger.peer is other_out and other_out.name is None
    assert pairer.disagreements == 0  # only SAs charon names are compared


def test_late_answer_repairs_a_wrong_heuristic_pair() -> None:
    """SAs appear before charon named them: the heuristic pairs; the answer re-pairs and counts."""
    authority = Known({})
    pairer = Pairer(authority)
    out1, in2, out2, in1 = _sa(GW, PEER, 1, 0.0), _sa(PEER, GW, 12, 0.1), _sa(GW, PEER, 2, 3.0), _sa(PEER, GW, 11, 3.1)
    for sa in (out1, in2, out2, in1):
        pairer.add(sa)
    assert in2.peer is out1 and in1.peer is out2  # wrong, by time
    authority.claims = {**_pair_claims("gw/a", 1, 11), **_pair_claims("gw/b", 2, 12)}
    for sa in (out1, in2, out2, in1):
        pairer.adopt(sa, authority.claims[sa.ident])
    assert (out1.peer, in1.peer, out2.peer, in2.peer) == (in1, out1, in2, out2)
    assert {sa.name for sa in (out1, in1)} == {"gw/a"} and {sa.name for sa in (out2, in2)} == {"gw/b"}
    assert pairer.disagreements == 2  # out-1's and out-2's heuristic partners were wrong
    assert not pairer.unpaired


def test_a_new_generation_keeps_its_name() -> None:
    pairer = Pairer(Known(_pair_claims("gw/a", 1, 11)))
    old = _sa(GW, PEER, 1, 0.0)
    pairer.add(old)
    new = SA(old.key, False, 5.0, None, 1)
    pairer.inherit(old, new)
    assert new.name == "gw/a"


def _vici_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "strongSwan vici" in r.getMessage()]


@pytest.mark.parametrize("kind", ["missing", "regular file", "refused"])
def test_unreachable_socket_logs_one_line_and_keeps_retrying(tmp_path: Path, kind: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "charon.vici"
    if kind == "regular file":
        path.write_text("not a socket")
    elif kind == "refused":  # a stale socket file of a charon that has gone
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    vici = Vici(f"unix://{path}")
    table = SATable(TableSettings(), lambda *_: None)
    caplog.set_level(logging.DEBUG, logger="espmeter")
    attempts = []
    real_session = vici.reader._session

    def counting(sessions: list) -> object:
        attempts.append(time.monotonic())
        return real_session(sessions)

    vici.reader._session = counting  # type: ignore[method-assign]
    vici.start(table)
    try:
        time.sleep(2.2)
        table.create(esp_ident(GW, PEER, 1), False, 0.0, None)  # the packet path is not held up
        vici.apply()
    finally:
        vici.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    want = {"missing": "no such socket", "regular file": "not a socket", "refused": "connection refused"}[kind]
    assert len(warnings) == 1 and want in warnings[0] and "heuristic" in warnings[0], warnings
    assert len(attempts) >= 4 and max(b - a for a, b in zip(attempts, attempts[1:], strict=False)) < 1.0
    assert not vici.connected and table.pairer.authority is None


@pytest.mark.parametrize("value", ["/var/run/charon.vici", "tcp://127.0.0.1:4502", "unix:///"])
def test_vici_url_must_be_a_unix_socket_path(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^f.yaml:3: strongswan.vici: .* is not a vici socket URL \(expected unix:"):
        parse_config(f"interfaces: [eth0]\nstrongswan:\n  vici: '{value}'\n", "f.yaml")
    assert parse_config("strongswan:\n", "f.yaml").strongswan.vici is None  # commented out: heuristic only


def test_an_spi_flood_unknown_to_charon_waits_in_constant_time(tmp_path: Path) -> None:
    """Every flood SA is an identity charon does not know: it waits (Vici.waiting, at most MAX_WAITING), the
    oldest making room. Found by next(iter()) on a plain dict that skips every entry deleted before it, that
    cost ~7 us per new SA at 10 000 waiting, more than a flood frame's whole budget: 20 000 unknown SAs
    after the waiting list is full must cost about what the first 5000 cost (they cost 4-6 times more)."""
    from agent.strongswan import MAX_WAITING

    vici = Vici(f"unix://{tmp_path}/none.sock")
    try:
        def claim(first: int, count: int) -> float:
            sas = [SA(esp_ident(GW, PEER, spi), False, 0.0, None) for spi in range(first, first + count)]
            start = time.process_time()
            for sa in sas:
                vici.claim(sa)
            return (time.process_time() - start) / count

        fresh = min(claim(1 + k * 5000, 5000) for k in range(2))  # below MAX_WAITING
        claim(10_001, MAX_WAITING)  # full
        assert len(vici.waiting) == MAX_WAITING
        assert claim(100_001, 20_000) < 2 * fresh + 1e-6
    finally:
        vici.close()
