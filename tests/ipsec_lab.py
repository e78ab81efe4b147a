"""A real strongSwan IPsec tunnel in network namespaces, for end-to-end tests of the passive meter.

Topology (one lab = three namespaces with a random suffix, so parallel runs never clash)::

    left (198.18.1.2, inner 10.99.1.1) --veth-- router --veth-- right (198.18.2.2, inner 10.99.2.1)

Each end runs its own charon with kernel-libipsec (userspace ESP over a TUN device, ESP in UDP 4500),
because the test kernel has no xfrm ESP. The router only forwards: that is where espmeter captures.
nftables in each *sender* drops a known share of outgoing ESP (never IKE), with counters, so tests know
exactly how many ESP packets of each direction reached the router.

    with IPsecLab(drop_percent=5) as lab:
        lab.traffic(200, 0.002)
        sas = lab.list_sas()            # {"left": [ChildSA...], "right": [...]}
        sent, dropped = lab.drop_counters()["left"]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

CHARON = "/usr/lib/ipsec/charon"
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")
# Order matters: kernel-libipsec must register its kernel-ipsec interface before kernel-netlink's xfrm one;
# kernel-netlink is still needed for addresses, routes and interface events. Missing optional plugins
# (openssl, curve25519, ...) are skipped so the same list works on other builds.
PLUGINS = ("random", "nonce", "aes", "sha1", "sha2", "hmac", "kdf", "gmp", "openssl", "curve25519", "pem", "pkcs1",
           "x509", "revocation", "constraints", "pubkey", "socket-default", "kernel-libipsec", "kernel-netlink", "vici")
SWANCTL_PLUGINS = ("random", "nonce", "pem", "pkcs1", "pkcs8", "x509", "pubkey", "openssl")
IKE_PROPOSAL = "aes128-sha256-modp2048"  # modp via gmp: this build has neither openssl nor curve25519
ESP_PROPOSAL = "aes128-sha256"  # AES-CBC + HMAC: what libipsec implements with the plain crypto plugins
CHILD = "net"
CONN = "lab"

LEFT_ADDR, RIGHT_ADDR = "198.18.1.2", "198.18.2.2"
ROUTER_LEFT_ADDR, ROUTER_RIGHT_ADDR = "198.18.1.1", "198.18.2.1"
LEFT_INNER, RIGHT_INNER = "10.99.1.1", "10.99.2.1"
LEFT_NET, RIGHT_NET = "10.99.1.0/24", "10.99.2.0/24"
IKE_PORT, NATT_PORT = 500, 4500


class LabError(RuntimeError):
    """The lab could not be built or a lab operation failed; the message carries the relevant logs."""


class EspCounters(NamedTuple):
    """nft counters of one sender: ESP-in-UDP packets that left the stack, and how many of them were dropped."""

    sent: int
    dropped: int

    @property
    def passed(self) -> int:
        """What reached the wire, i.e. what a capture on the router must see."""
        return self.sent - self.dropped


@dataclass(frozen=True)
class ChildSA:
    """One CHILD_SA as one end sees it (SPIs as ints, counters as reported by charon)."""

    name: str
    state: str
    spi_in: int
    spi_out: int
    encap: bool
    packets_in: int
    packets_out: int
    bytes_in: int
    bytes_out: int
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()
    ike: str = ""  # name of the IKE_SA (its connection) the CHILD_SA belongs to
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class EspPacket:
    """One ESP-in-UDP packet of a capture: who sent it and its ESP header."""

    src: str
    dst: str
    spi: int
    seq: int


def _run(cmd: Sequence[str], *, timeout: float = 30, check: bool = True,
         input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text output, a timeout and an error that shows stderr (why it failed)."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input, env=env)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timeout after {timeout}s: {shlex.join(cmd)}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{shlex.join(cmd)} -> rc {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


# --- swanctl --raw parser -------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\})|([^\s{}=\[\]]+)\s*(?:(\{)|=\s*(\[)|=([^\s{}\[\]]*)))")


def parse_vici_raw(text: str) -> list[dict[str, Any]]:
    """Parse `swanctl --raw` output (``name {k=v l=[a b] sec {..}}`` per message) into dicts.

    Why not a vici binding: none is installed, and the raw format is a direct dump of the vici message.
    """
    messages: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or "{" not in line:
            continue
        _, _, body = line.partition("{")  # "list-sa event {...}" -> body of the outer section
        stack: list[dict[str, Any]] = [{}]
        pos = 0
        while pos < len(body):
            if body[pos:].strip() == "":
                break
            m = _TOKEN.match(body, pos)
            if m is None:
                raise ValueError(f"cannot parse swanctl --raw at {body[pos:pos + 40]!r}")
            close, key, open_sec, open_list, value = m.groups()
            pos = m.end()
            if close:
                if len(stack) == 1:
                    break
                stack.pop()
            elif open_sec:
                section: dict[str, Any] = {}
                stack[-1][key] = section
                stack.append(section)
            elif open_list:
                end = body.index("]", pos)
                stack[-1][key] = body[pos:end].split()
                pos = end + 1
            else:
                stack[-1][key] = value
        messages.append(stack[0])
    return messages


def _int(value: Any, base: int = 10) -> int:
    return int(value, base) if value else 0


def child_sas_from_raw(text: str) -> list[ChildSA]:
    """All CHILD_SAs of all IKE_SAs in `swanctl --list-sas --raw` output."""
    result = []
    for message in parse_vici_raw(text):
        for ike_name, ike in message.items():
            if not isinstance(ike, dict):
                continue
            for child in ike.get("child-sas", {}).values():
                result.append(ChildSA(
                    name=child.get("name", ""), state=child.get("state", ""),
                    spi_in=_int(child.get("spi-in"), 16), spi_out=_int(child.get("spi-out"), 16),
                    encap=child.get("encap") == "yes",
                    packets_in=_int(child.get("packets-in")), packets_out=_int(child.get("packets-out")),
                    bytes_in=_int(child.get("bytes-in")), bytes_out=_int(child.get("bytes-out")),
                    local_ts=tuple(child.get("local-ts", ())), remote_ts=tuple(child.get("remote-ts", ())),
                    ike=ike_name, raw=child))
    return result


# --- pcap reading ----------------------------------------------------------------------------------------

def esp_packets(path: Path | str, port: int = NATT_PORT) -> list[EspPacket]:
    """ESP-in-UDP packets (non-zero SPI, >= 8 payload bytes) of a classic pcap from tcpdump on an Ethernet veth.

    A 40-line reader instead of tshark: the test must not depend on dissector names or preferences.
    """
    data = Path(path).read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet")
    out: list[EspPacket] = []
    pos = 24
    while pos + 16 <= len(data):
        caplen = struct.unpack(endian + "I", data[pos + 8:pos + 12])[0]
        frame = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        off, ethertype = 14, struct.unpack("!H", frame[12:14])[0] if len(frame) >= 14 else 0
        while ethertype == 0x8100 and len(frame) >= off + 4:
            ethertype = struct.unpack("!H", frame[off + 2:off + 4])[0]
            off += 4
        if ethertype != 0x0800 or len(frame) < off + 20:
            continue
        ihl = (frame[off] & 0x0F) * 4
        if frame[off + 9] != 17 or struct.unpack("!H", frame[off + 6:off + 8])[0] & 0x3FFF:
            continue  # not UDP, or a fragment
        src = ".".join(str(b) for b in frame[off + 12:off + 16])
        dst = ".".join(str(b) for b in frame[off + 16:off + 20])
        udp = off + ihl
        if len(frame) < udp + 16:
            continue
        sport, dport = struct.unpack("!HH", frame[udp:udp + 4])
        if port not in (sport, dport):
            continue
        spi, seq = struct.unpack("!II", frame[udp + 8:udp + 16])
        if spi:
            out.append(EspPacket(src, dst, spi, seq))
    return out


# --- the lab ------------------------------------------------------------------------------------------------

@dataclass
class _Charon:
    side: str
    ns: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def vici(self) -> str:
        return f"unix://{self.workdir / 'charon.vici'}"

    @property
    def log(self) -> Path:
        return self.workdir / "charon.log"

    def log_tail(self, lines: int = 60) -> str:
        text = ""
        for path in (self.log, self.workdir / "charon.stderr"):
            with contextlib.suppress(OSError):
                text += f"--- {path} (last {lines} lines) ---\n"
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text


class Capture:
    """tcpdump running in a namespace; `stop()` flushes the file and checks the kernel dropped nothing."""

    def __init__(self, lab: IPsecLab, ns: str, iface: str, path: Path, bpf: str, timeout: float) -> None:
        self.path = path
        self._proc = lab.popen_in(ns, ["tcpdump", "-i", iface, "-n", "-U", "-B", "16384", "-s", "128",
                                       "-Z", "root", "-w", str(path), bpf],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.stderr = ""
        # tcpdump prints "listening on" once the socket is bound: before that, packets would be missed.
        deadline = time.monotonic() + timeout
        assert self._proc.stderr is not None
        os.set_blocking(self._proc.stderr.fileno(), False)
        while "listening on" not in self.stderr:
            chunk = self._proc.stderr.read()
            if chunk:
                self.stderr += chunk.decode(errors="replace")
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._proc.kill()
                raise LabError(f"tcpdump did not start on {ns}/{iface}: {self.stderr}")
            time.sleep(0.02)

    def stop(self) -> list[EspPacket]:
        """Stop tcpdump (SIGINT flushes), fail on kernel drops, return the ESP packets."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        assert self._proc.stderr is not None
        os.set_blocking(self._proc.stderr.fileno(), True)
        self.stderr += self._proc.stderr.read().decode(errors="replace")
        self._proc.stderr.close()
        m = re.search(r"(\d+) packets? dropped by kernel", self.stderr)
        if m is None or int(m.group(1)):
            raise LabError(f"tcpdump lost packets or did not report: {self.stderr}")
        return esp_packets(self.path)


class IPsecLab:
    """Context manager: namespaces, veths, routing, two charons, an established CHILD_SA, nft loss injection.

    Everything is torn down on exit, even after a failure half-way through setup.
    """

    def __init__(self, drop_percent: float = 0.0, *, drop_sides: Sequence[str] = ("left", "right"),
                 setup_timeout: float = 20.0, keep_workdir: bool = False) -> None:
        suffix = secrets.token_hex(3)
        self.left_ns, self.router_ns, self.right_ns = (f"espm-{x}-{suffix}" for x in ("l", "rt", "r"))
        self.router_ifaces = ("to-left", "to-right")  # names only inside the router namespace
        self.left_addr, self.right_addr = LEFT_ADDR, RIGHT_ADDR
        self.left_inner, self.right_inner = LEFT_INNER, RIGHT_INNER
        self.drop_percent = drop_percent
        self.drop_sides = tuple(drop_sides)
        self.setup_timeout = setup_timeout
        self.keep_workdir = keep_workdir
        self.workdir = Path(tempfile.mkdtemp(prefix=f"espm-lab-{suffix}-"))
        self._charons = {side: _Charon(side, ns, self.workdir / side)
                         for side, ns in (("left", self.left_ns), ("right", self.right_ns))}
        self._procs: list[subprocess.Popen[Any]] = []
        self._created_ns: list[str] = []
        self.timings: dict[str, float] = {}
        self.psk = f"espmeter-lab-{secrets.token_hex(8)}"  # both ends share it

    # -- context manager ------------------------------------------------------------------------------------

    def __enter__(self) -> IPsecLab:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def setup(self) -> None:
        """Build the network, start both charons, load configs, initiate and wait for the CHILD_SA."""
        t0 = time.monotonic()
        self._network()
        self._nft()
        t1 = time.monotonic()
        for charon in self._charons.values():
            self._start_charon(charon)
        for charon in self._charons.values():
            self._wait_vici(charon)
            self.swanctl(charon.side, "--load-all", "--file", str(charon.workdir / "swanctl.conf"))
        t2 = time.monotonic()
        self.swanctl("left", "--initiate", "--child", CHILD, "--timeout", str(int(self.setup_timeout)),
                     timeout=self.setup_timeout + 5)
        self.wait_installed()
        self._start_echo()
        self.timings.update(network=t1 - t0, charon_start=t2 - t1, tunnel_up=time.monotonic() - t2)

    def teardown(self) -> None:
        """Stop every process we started, delete our namespaces and temp dir; never raises."""
        for proc in reversed(self._procs):
            self._stop(proc)
        for charon in self._charons.values():
            if charon.proc is not None:
                self._stop(charon.proc)
        for ns in reversed(self._created_ns):
            _run(["ip", "netns", "del", ns], check=False)
        self._created_ns.clear()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @staticmethod
    def _stop(proc: subprocess.Popen[Any]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    # -- helpers ----------------------------------------------------------------------------------------------

    def ns(self, name: str) -> str:
        """Map 'left'/'router'/'right' to the real namespace name (real names pass through)."""
        return {"left": self.left_ns, "router": self.router_ns, "right": self.right_ns}.get(name, name)

    def run_in(self, ns: str, cmd: Sequence[str] | str, *, timeout: float = 30, check: bool = True,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run CMD (argv, or a string split with shlex) in namespace NS and wait for it."""
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        return _run(["ip", "netns", "exec", self.ns(ns), *argv], timeout=timeout, check=check, input=input)

    def popen_in(self, ns: str, cmd: Sequence[str] | str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start CMD in the background in namespace NS; the lab stops it on exit (SIGTERM, then SIGKILL)."""
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", self.ns(ns), *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def capture(self, iface: str, path: Path | str, *, ns: str = "router", bpf: str = f"udp port {NATT_PORT}",
                timeout: float = 10) -> Capture:
        """Start tcpdump on IFACE in NS (router by default) and return once it is listening."""
        return Capture(self, self.ns(ns), iface, Path(path), bpf, timeout)

    def swanctl(self, side: str, *args: str, timeout: float = 15) -> str:
        """swanctl against SIDE's charon (via its private vici socket); raises with charon's log on failure."""
        charon = self._charons[side]
        proc = _run(["swanctl", *args, "--uri", charon.vici], timeout=timeout, check=False, env=self._swanctl_env())
        if proc.returncode != 0:
            raise LabError(f"swanctl {' '.join(args)} on {side} failed (rc {proc.returncode}):\n"
                           f"{proc.stdout}{proc.stderr}\n{self.charon_logs()}")
        return proc.stdout

    def _swanctl_env(self) -> dict[str, str]:
        """swanctl with its own minimal plugin list: the system default spams 'failed to load' lines."""
        conf = self.workdir / "swanctl-strongswan.conf"
        if not conf.exists():
            plugins = " ".join(p for p in SWANCTL_PLUGINS if (PLUGIN_DIR / f"libstrongswan-{p}.so").exists())
            conf.write_text(f"swanctl {{\n    load = {plugins}\n}}\n")
        return dict(os.environ, STRONGSWAN_CONF=str(conf))

    def charon_logs(self, lines: int = 60) -> str:
        """The tail of both charons' logs: what a failing test should print."""
        return "".join(c.log_tail(lines) for c in self._charons.values())

    # -- network ----------------------------------------------------------------------------------------------

    def _network(self) -> None:
        for ns in (self.left_ns, self.router_ns, self.right_ns):
            _run(["ip", "netns", "add", ns])
            self._created_ns.append(ns)
            self.run_in(ns, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                             "net.ipv6.conf.default.accept_dad=0"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        r = self.router_ns
        # veths are created inside the router namespace, so their names cannot clash with other labs.
        _run(["ip", "-n", r, "link", "add", "to-left", "type", "veth", "peer", "name", "eth0", "netns", self.left_ns])
        _run(["ip", "-n", r, "link", "add", "to-right", "type", "veth", "peer", "name", "eth0",
              "netns", self.right_ns])
        self.run_in(r, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for ns, dev, addr in ((r, "to-left", ROUTER_LEFT_ADDR), (r, "to-right", ROUTER_RIGHT_ADDR),
                              (self.left_ns, "eth0", LEFT_ADDR), (self.right_ns, "eth0", RIGHT_ADDR)):
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        _run(["ip", "-n", self.left_ns, "route", "add", "198.18.2.0/24", "via", ROUTER_LEFT_ADDR])
        _run(["ip", "-n", self.right_ns, "route", "add", "198.18.1.0/24", "via", ROUTER_RIGHT_ADDR])
        # Inner hosts: addresses inside the local traffic selector, so charon picks them as route source.
        # On lo, because the test kernel has no dummy driver.
        for ns, inner in ((self.left_ns, LEFT_INNER), (self.right_ns, RIGHT_INNER)):
            _run(["ip", "-n", ns, "addr", "add", f"{inner}/32", "dev", "lo"])

    def _nft(self) -> None:
        """Per sender: count all outgoing ESP-in-UDP, then drop a random share of it.

        ESP-in-UDP = UDP to 4500 whose first 4 payload bytes (the SPI) are non-zero; IKE on 4500 carries the
        zero non-ESP marker and NAT keepalives are 1 byte (the payload read fails, the rule does not match).
        """
        scale = 10000  # numgen works on integers: basis points allow fractional percents
        esp = f"udp dport {NATT_PORT} @th,64,32 != 0"
        for side in ("left", "right"):
            threshold = min(round(self.drop_percent * scale / 100), scale) if side in self.drop_sides else 0
            sample = "" if threshold == scale else f"numgen random mod {scale} < {threshold} "
            drop_rule = f"{esp} {sample}counter name esp_dropped drop" if threshold else ""
            rules = f"""
table inet espm {{
    counter esp_sent {{ }}
    counter esp_dropped {{ }}
    chain output {{
        type filter hook output priority 0; policy accept;
        {esp} counter name esp_sent
        {drop_rule}
    }}
}}
"""
            self.run_in(side, ["nft", "-f", "-"], input=rules)

    def drop_counters(self) -> dict[str, EspCounters]:
        """{'left': (sent, dropped), 'right': ...}: ESP-in-UDP each side sent, and how much nft dropped."""
        result = {}
        for side in ("left", "right"):
            out = json.loads(self.run_in(side, ["nft", "-j", "list", "counters", "table", "inet", "espm"]).stdout)
            counters = {o["counter"]["name"]: o["counter"]["packets"] for o in out["nftables"] if "counter" in o}
            result[side] = EspCounters(counters["esp_sent"], counters["esp_dropped"])
        return result

    # -- strongSwan --------------------------------------------------------------------------------------------

    def _start_charon(self, charon: _Charon) -> None:
        charon.workdir.mkdir(parents=True)
        plugins = " ".join(p for p in PLUGINS if (PLUGIN_DIR / f"libstrongswan-{p}.so").exists())
        (charon.workdir / "strongswan.conf").write_text(f"""
charon {{
    load = {plugins}
    port = {IKE_PORT}
    port_nat_t = {NATT_PORT}
    install_routes = yes
    install_virtual_ip = no
    retransmit_tries = 3
    retransmit_timeout = 1.0
    retransmit_base = 1.4
    filelog {{
        lab {{
            path = {charon.log}
            time_format = %H:%M:%S
            ike_name = yes
            default = 1
            ike = 2
            cfg = 2
            knl = 2
            esp = 1
            flush_line = yes
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
    }}
    plugins {{
        vici {{
            socket = {charon.vici}
        }}
    }}
}}
""")
        local, remote = ((LEFT_ADDR, RIGHT_ADDR) if charon.side == "left" else (RIGHT_ADDR, LEFT_ADDR))
        lts, rts = ((LEFT_NET, RIGHT_NET) if charon.side == "left" else (RIGHT_NET, LEFT_NET))
        (charon.workdir / "swanctl.conf").write_text(f"""
connections {{
    {CONN} {{
        version = 2
        local_addrs = {local}
        remote_addrs = {remote}
        proposals = {IKE_PROPOSAL}
        encap = yes
        dpd_delay = 0
        rekey_time = 0
        local {{
            auth = psk
            id = {local}
        }}
        remote {{
            auth = psk
            id = {remote}
        }}
        children {{
            {CHILD} {{
                local_ts = {lts}
                remote_ts = {rts}
                esp_proposals = {ESP_PROPOSAL}
                mode = tunnel
                start_action = none
                rekey_time = 0
                life_time = 0
            }}
        }}
    }}
}}
secrets {{
    ike-lab {{
        id-1 = {LEFT_ADDR}
        id-2 = {RIGHT_ADDR}
        secret = "{self.psk}"
    }}
}}
""")
        self._spawn_charon(charon)

    @staticmethod
    def _spawn_charon(charon: _Charon) -> None:
        # Private /run (pid file, default sockets are compiled-in paths) via a mount namespace of its own.
        script = f"mount -t tmpfs -o size=4m,mode=755 espm-run /run && exec {CHARON}"
        env = dict(os.environ, STRONGSWAN_CONF=str(charon.workdir / "strongswan.conf"))
        with open(charon.workdir / "charon.stderr", "ab") as err:
            charon.proc = subprocess.Popen(
                ["ip", "netns", "exec", charon.ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT, env=env)

    def _wait_vici(self, charon: _Charon) -> None:
        """The socket file appears before charon serves it: poll `swanctl --stats` until it answers."""
        deadline = time.monotonic() + self.setup_timeout
        while True:
            if charon.proc is not None and charon.proc.poll() is not None:
                raise LabError(f"charon in {charon.ns} exited with {charon.proc.returncode}\n{charon.log_tail()}")
            proc = _run(["swanctl", "--stats", "--uri", charon.vici], check=False, timeout=5, env=self._swanctl_env())
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise LabError(f"charon vici in {charon.ns} not answering: {proc.stderr}\n{charon.log_tail()}")
            time.sleep(0.05)

    def vici_uri(self, side: str) -> str:
        """unix://PATH of SIDE's charon vici socket (in the lab's temp dir, reachable from every namespace)."""
        return self._charons[side].vici

    def restart_charon(self, side: str, *, down_s: float = 0.0) -> dict[str, ChildSA]:
        """Stop SIDE's charon (SIGTERM: it deletes its IKE_SAs at the peer), keep it down DOWN_S seconds
        with its socket file removed, start it again and re-establish the CHILD_SA from left.
        Returns the new CHILD_SAs (new SPIs on both ends)."""
        charon = self._charons[side]
        old = self.installed()
        old_spis = {spi for sa in old.values() for spi in (sa.spi_in, sa.spi_out)}
        assert charon.proc is not None
        self._stop(charon.proc)
        Path(charon.vici.removeprefix("unix://")).unlink(missing_ok=True)
        time.sleep(down_s)
        self._spawn_charon(charon)
        self._wait_vici(charon)
        self.swanctl(side, "--load-all", "--file", str(charon.workdir / "swanctl.conf"))
        self.swanctl("left", "--initiate", "--child", CHILD, "--timeout", str(int(self.setup_timeout)),
                     timeout=self.setup_timeout + 5)
        return self.wait_installed(exclude_spis=old_spis, only=True)

    def list_sas(self) -> dict[str, list[ChildSA]]:
        """{'left': [...], 'right': [...]}: CHILD_SAs as each end reports them (`swanctl --list-sas --raw`)."""
        return {side: child_sas_from_raw(self.swanctl(side, "--list-sas", "--raw")) for side in ("left", "right")}

    def installed(self, sas: dict[str, list[ChildSA]] | None = None) -> dict[str, ChildSA]:
        """The INSTALLED CHILD_SA per side (the newest if a rekey left an old one around)."""
        result = {}
        for side, side_sas in (sas or self.list_sas()).items():
            inst = [sa for sa in side_sas if sa.state == "INSTALLED"]
            if inst:
                result[side] = max(inst, key=lambda sa: int(sa.raw.get("uniqueid", 0)))
        return result

    def wait_installed(self, *, exclude_spis: AbstractSet[int] = frozenset(), only: bool = False,
                       timeout: float | None = None) -> dict[str, ChildSA]:
        """Wait until both ends have an INSTALLED CHILD_SA with SPIs not in EXCLUDE_SPIS that match each other.

        With ONLY, also wait until that is the sole CHILD_SA on both ends (old SAs of a rekey deleted).
        """
        deadline = time.monotonic() + (timeout or self.setup_timeout)
        while True:
            sas = self.list_sas()
            inst = self.installed(sas)
            left, right = inst.get("left"), inst.get("right")
            if (left and right and left.spi_out == right.spi_in and left.spi_in == right.spi_out
                    and not {left.spi_in, left.spi_out} & exclude_spis
                    and (not only or all(len(v) == 1 for v in sas.values()))):
                return inst
            if time.monotonic() > deadline:
                raise LabError(f"no matching INSTALLED CHILD_SA within timeout: {sas}\n{self.charon_logs()}")
            time.sleep(0.1)

    def rekey(self, *, wait_deleted: bool = False, timeout: float | None = None) -> dict[str, ChildSA]:
        """Rekey the CHILD_SA from left (new SPIs both ways); return the new SAs once both ends installed them.

        The old inbound SAs linger for charon's delete_rekeyed_delay (5 s) like on a real gateway;
        WAIT_DELETED waits for them to go.
        """
        old = self.installed()
        old_spis = {spi for sa in old.values() for spi in (sa.spi_in, sa.spi_out)}
        self.swanctl("left", "--rekey", "--child", CHILD)
        return self.wait_installed(exclude_spis=old_spis, only=wait_deleted, timeout=timeout)

    # -- traffic -----------------------------------------------------------------------------------------------

    def _start_echo(self) -> None:
        """A UDP echo server on each inner address (there is no ping binary on the test image)."""
        for side, addr in (("left", LEFT_INNER), ("right", RIGHT_INNER)):
            proc = self.popen_in(side, [sys.executable, "-c", _ECHO_SERVER, addr, str(ECHO_PORT)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise LabError(f"echo server in {side} failed: {proc.stderr.read() if proc.stderr else ''}")

    def traffic(self, count: int, interval: float = 0.002, *, size: int = 64,
                reverse: bool = False) -> tuple[int, int]:
        """COUNT UDP datagrams inner-to-inner, each echoed back (so ESP flows both ways); (sent, echoed)."""
        src_ns, src, dst = ("right", RIGHT_INNER, LEFT_INNER) if reverse else ("left", LEFT_INNER, RIGHT_INNER)
        proc = self.run_in(src_ns, [sys.executable, "-c", _ECHO_CLIENT, src, dst, str(ECHO_PORT), str(count),
                                    str(interval), str(size)], timeout=count * interval * 3 + 15)
        sent, received = proc.stdout.split()
        return int(sent), int(received)


ECHO_PORT = 7777
_ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
"""
# Paced sender with a deadline-based schedule (no drift); echoes are read while sending and for 1 s after.
_ECHO_CLIENT = """
import select, socket, sys, time
src, dst, port, count, interval, size = sys.argv[1:]
count, interval, size = int(count), float(interval), int(size)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.setblocking(False)
seen = set()
def drain(timeout):
    while select.select([s], [], [], max(timeout, 0))[0]:
        try:
            data = s.recv(65535)
        except BlockingIOError:
            break
        seen.add(data[:8])
        timeout = 0
start = time.monotonic()
for i in range(count):
    while True:
        try:
            s.sendto(i.to_bytes(8, "big") + bytes(max(size - 8, 0)), (dst, int(port)))
            break
        except BlockingIOError:
            drain(0.001)
    drain(start + (i + 1) * interval - time.monotonic())
end = time.monotonic() + 1.0
while len(seen) < count and time.monotonic() < end:
    drain(end - time.monotonic())
print(count, len(seen))
"""


def esp_by_spi(packets: Sequence[EspPacket]) -> Counter[int]:
    """Packets per SPI: what the router saw of each SA."""
    return Counter(p.spi for p in packets)
