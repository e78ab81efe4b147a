"""Transport behaviour: TCP reconnect and buffering, UDP port unreachable, the `collect` receiver."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time

from exporter import Exporter, ExportSettings
from exporter.collect import Decoder, run_collector
from tests.collectors import free_port, make_sa


class TcpSink:
    """A minimal IPFIX-over-TCP listener that keeps every received message (nfcapd has no TCP)."""

    def __init__(self, port: int):
        self.port = port
        self.messages: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._server.settimeout(0.1)
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        bufs: dict[socket.socket, bytearray] = {}
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
                conn.settimeout(0.05)
                self._conns.append(conn)
                bufs[conn] = bytearray()
                self.connections += 1
            except TimeoutError:
                pass
            for conn in list(self._conns):
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    self._conns.remove(conn)
                    conn.close()
                    continue
                buf = bufs[conn]
                buf += chunk
                while len(buf) >= 4 and len(buf) >= struct.unpack_from("!H", buf, 2)[0]:
                    n = struct.unpack_from("!H", buf, 2)[0]
                    self.messages.append(bytes(buf[:n]))
                    del buf[:n]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self._conns:
            conn.close()
        self._server.close()


def _data_records(messages: list[bytes]) -> list[dict]:
    decoder, out = Decoder(), []
    for m in messages:
        out += [r for r in decoder.decode(m) if "IPSecSPI" in r]
    return out


def _pump(exp: Exporter, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        exp.tick()
        time.sleep(0.02)


def test_tcp_listener_restart_reconnects_and_delivers_buffered(tmp_path):
    port = free_port(socket.SOCK_STREAM)
    sink = TcpSink(port)
    exp = Exporter(ExportSettings(collectors=[f"tcp://127.0.0.1:{port}"], tcp_reconnect_max_s=0.5,
                                  tcp_reconnect_min_s=0.1))
    _pump(exp, 0.3)
    exp.export([make_sa(i) for i in range(10)])
    _pump(exp, 0.3)
    first = sink.messages[:]
    sink.close()  # collector goes away mid-stream
    time.sleep(0.2)
    _pump(exp, 0.2)  # notices EOF, starts backing off
    exp.export([make_sa(100 + i) for i in range(10)])  # buffered while disconnected
    exp.export([make_sa(200 + i) for i in range(10)])
    counters = exp.counters[f"tcp://127.0.0.1:{port}"]
    sink2 = TcpSink(port)  # collector back
    try:
        _pump(exp, 2.0)
        exp.close(timeout=2.0)
        time.sleep(0.2)
        second = sink2.messages[:]
    finally:
        sink2.close()
    assert len(_data_records(first)) == 10
    got = {r["IPSecSPI"] for r in _data_records(second)}  # new session: templates come first again
    assert got == {make_sa(100 + i).spi for i in range(10)} | {make_sa(200 + i).spi for i in range(10)}
    assert counters.connects == 2 and counters.not_sent_records == 0
    # sequence numbers continue: the records of the first connection are counted
    seqs = [struct.unpack_from("!I", m, 8)[0] for m in second]
    assert seqs == sorted(seqs) and seqs[-1] > 10


def test_tcp_buffer_bound_counts_not_sent():
    port = free_port(socket.SOCK_STREAM)  # nobody listens
    exp = Exporter(ExportSettings(collectors=[f"tcp://127.0.0.1:{port}"], tcp_buffer_messages=3))
    for i in range(10):
        exp.export([make_sa(i)])
    c = exp.counters[f"tcp://127.0.0.1:{port}"]
    assert c.not_sent_messages >= 7 and c.not_sent_records >= 7
    assert c.not_sent_packets >= sum(make_sa(i).packets for i in range(3, 10))
    exp.close(timeout=0.2)


def test_udp_port_unreachable_is_counted_not_fatal():
    port = free_port()  # nothing listens: ICMP port unreachable
    url = f"udp://127.0.0.1:{port}"
    exp = Exporter(ExportSettings(collectors=[url]))
    for i in range(20):
        exp.export([make_sa(i)])
        time.sleep(0.01)
    exp.close()
    c = exp.counters[url]
    assert c.send_errors > 0 and c.messages > 0
    assert c.send_errors == c.not_sent_messages  # each refused datagram is one message not sent


def test_collect_udp_json_and_ipv6():
    out = io.StringIO()
    bound: list[tuple] = []
    ready = threading.Event()
    result: list[int] = []

    def run() -> None:
        result.append(run_collector("udp://[::1]:0", True, out, None, 3, ready=lambda a: (bound.append(a),
                                                                                          ready.set())))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(5)
    exp = Exporter(ExportSettings(collectors=[f"udp://[::1]:{bound[0][1]}"]))
    exp.export([make_sa(i, peer_spi=9, tunnel_id=1) for i in range(3)])
    t.join(5)
    exp.close()
    assert result == [3]
    lines = out.getvalue().splitlines()
    types = len(exp.encoder.type_elements())  # one RFC 5610 record per enterprise IE
    assert len(lines) == types + 3 and '"informationElementName":"espLostPacketDeltaCount"' in lines[0]
    assert all('"IPSecSPI"' in line for line in lines[types:])  # --count: flow records, options not counted
