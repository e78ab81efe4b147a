"""agent.rtnl against iproute2 in a namespace of its own: links (index, up/down, missing), every address
(IPv4, IPv6, secondary, point-to-point peer), and the link and address events the agent reopens on."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from agent.rtnl import _attrs, _messages
from tests.netns import ROOT, sh


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"espm-rtnl-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def in_ns(ns: str, code: str) -> object:
    """Run `code` (which prints one JSON document) with agent.rtnl inside the namespace."""
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def ip(ns: str, *args: str) -> str:
    return sh("ip", "-n", ns, *args).stdout


def test_links_as_iproute2_sees_them(ns: str) -> None:
    ip(ns, "link", "add", "d0", "type", "veth", "peer", "name", "p0")
    ip(ns, "link", "add", "d1", "type", "veth", "peer", "name", "p1")
    ip(ns, "link", "set", "d1", "up")
    want = {link["ifname"]: link["ifindex"] for link in json.loads(ip(ns, "-j", "link", "show"))}
    got = in_ns(ns, """
        import json
        from agent.rtnl import link
        print(json.dumps({n: link(n) for n in ("lo", "d0", "d1", "nonexistent", "x" * 40)}))
    """)
    assert got == {"lo": [want["lo"], False], "d0": [want["d0"], False], "d1": [want["d1"], True],
                   "nonexistent": None, "x" * 40: None}


def test_every_address_as_iproute2_lists_it(ns: str) -> None:
    ip(ns, "link", "set", "lo", "up")
    ip(ns, "link", "add", "d0", "type", "veth", "peer", "name", "p0")
    ip(ns, "link", "set", "d0", "up")
    ip(ns, "addr", "add", "192.0.2.1/24", "dev", "d0")
    ip(ns, "addr", "add", "192.0.2.9/24", "dev", "d0")  # secondary
    ip(ns, "addr", "add", "2001:db8::1/64", "dev", "d0", "nodad")
    ip(ns, "addr", "add", "198.51.100.1", "peer", "198.51.100.2", "dev", "d0")  # IFA_ADDRESS is the peer
    want = set()
    for link in json.loads(ip(ns, "-j", "addr", "show")):
        for a in link["addr_info"]:
            text = a.get("address", a["local"])
            want.add(socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text).hex())
    got = in_ns(ns, "import json; from agent.rtnl import addresses; print(json.dumps([a.hex() for a in addresses()]))")
    assert set(got) == want
    assert {"c0000201", "c0000209", "c6336402", "20010db8000000000000000000000001"} <= want


def test_link_and_address_events(ns: str) -> None:
    got = in_ns(ns, """
        import json, subprocess, time
        from agent.rtnl import LinkMonitor
        subprocess.run(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"], check=True)  # no link-local
        m = LinkMonitor()
        def events():
            return [sorted(e) if isinstance(e, set) else e for e in m.events()]
        def ip(*a):
            subprocess.run(["ip", *a], check=True)
            time.sleep(0.1)
            return events()
        print(json.dumps([
            events(),
            ip("link", "add", "d0", "type", "veth", "peer", "name", "p0"),
            ip("link", "set", "d0", "up"),
            ip("addr", "add", "192.0.2.1/24", "dev", "d0"),
            ip("link", "del", "d0"),
            events(),
        ]))
    """)
    empty = [[], [], False]
    assert got[0] == empty
    assert got[1] == [["d0", "p0"], [], False]
    assert got[2] == [["d0"], [], False]
    assert got[3] == [[], [], True]
    assert got[4] == [[], ["d0", "p0"], True]  # gone (the pair), and the address with it
    assert got[5] == empty


def test_parsers_stop_at_truncated_or_bogus_lengths() -> None:
    good = bytes.fromhex("0800030064300000")  # IFLA_IFNAME "d0\0"
    assert list(_attrs(good, 0, len(good))) == [(3, b"d0\0\0")]
    for bad in (bytes.fromhex("0300030064300000"), bytes.fromhex("ff00030064300000"), good[:3]):
        assert list(_attrs(bad, 0, len(bad))) == []
    header = (16).to_bytes(4, sys.byteorder) + bytes(12)
    assert list(_messages(header)) == [(0, 0, 16, 16)]
    assert list(_messages(header[:15])) == [] and list(_messages(bytes(16))) == []
