"""`espmeter collect`: a small IPFIX collector that knows espmeter's IEs, for checks and debugging.

It decodes with python-ipfix's reader; templates are re-typed from templates/espmeter.iespec (and
python-ipfix's IANA lists for everything else) after they are read, so enterprise IEs get names and
types without touching python-ipfix's global registry.
"""

from __future__ import annotations

import ipaddress
import json
import os
import selectors
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from ipfix import ie as ipfix_ie
from ipfix import message as ipfix_message
from ipfix import types as ipfix_types

from .infomodel import DOC_PEN, InfoModel
from .message import SEQ_MODULO
from .transport import parse_collector

RCVBUF = 32 << 20  # bytes asked for the UDP socket; the kernel caps it at net.core.rmem_max unless root
SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>; the socket module does not export it

_IPFIX_DIR = os.path.dirname(ipfix_ie.__file__)


def _python_ipfix_specs() -> dict[tuple[int, int], ipfix_ie.InformationElement]:
    """python-ipfix's IANA and RFC 5103 lists, parsed without registering them globally."""
    out = {}
    for name in ("iana.iespec", "rfc5103.iespec"):
        with open(os.path.join(_IPFIX_DIR, name), encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                n, pen, num, typename, length = ipfix_ie.parse_spec(line.strip())
                if n and typename:
                    out[(pen, num)] = ipfix_ie.InformationElement(n, pen, num, ipfix_types.for_name(typename),
                                                                  length or None)
    return out


class Decoder:
    """Decodes IPFIX messages of one transport session into dicts keyed by IE name."""

    def __init__(self, pen: int = DOC_PEN):
        self._known = _python_ipfix_specs()
        self._known.update(InfoModel.load(pen).by_number())
        self._buf = ipfix_message.MessageBuffer()
        self._buf.template_record_hook = self._retype
        self._options: set[tuple[int, int]] = set()  # (observation domain, template id) of options templates

    def _retype(self, msg: ipfix_message.MessageBuffer, tmpl: Any) -> None:
        """Give the template's IEs our names and types (same lengths, so the layout is unchanged)."""
        ies = []
        for e in tmpl.ies:
            known = self._known.get((e.pen, e.num))
            ies.append(known.for_length(e.length) if known is not None else e)
        tmpl.ies = ies
        tmpl.finalize()
        key = (msg.odid, tmpl.tid)
        if tmpl.scopecount:
            self._options.add(key)
        else:
            self._options.discard(key)

    def is_flow(self, rec: dict[str, Any]) -> bool:
        """A flow record (data record of a template without scope), not an options record."""
        return (rec["_odid"], rec["_template_id"]) not in self._options

    def decode(self, data: bytes) -> list[dict[str, Any]]:
        """Decode one message. Each record also gets `_odid`, `_sequence`, `_export_time`, `_template_id`."""
        buf = self._buf
        buf.from_bytes(data)
        header = {"_odid": buf.odid, "_sequence": buf.sequence, "_export_time": buf.export_epoch}
        return [dict(header, **rec) for rec in buf.record_iterator(decode_fn=_decode_record)]


def _decode_record(tmpl: Any, buf: memoryview, offset: int, recinf: Any = None) -> tuple[dict[str, Any], int]:
    """python-ipfix decode_fn keeping the template ID and repeated IEs (`name#2`)."""
    values, offset = tmpl.decode_from(buf, offset)
    rec: dict[str, Any] = {"_template_id": tmpl.tid}
    for e, v in zip(tmpl.ies, values, strict=True):
        name, n = e.name, 1
        while name in rec:
            n += 1
            name = f"{e.name}#{n}"
        rec[name] = v
    return rec, offset


def iter_messages(data: bytes) -> Iterator[bytes]:
    """Split a byte stream (RFC 5655 file or TCP stream) into IPFIX messages."""
    offset = 0
    while offset + 16 <= len(data):
        version, length = struct.unpack_from("!HH", data, offset)
        if version != 10 or length < 16 or offset + length > len(data):
            raise ValueError(f"bad IPFIX message header at offset {offset}")
        yield data[offset:offset + length]
        offset += length


def decode_messages(data: bytes, pen: int = DOC_PEN) -> list[dict[str, Any]]:
    """Decode the content of an IPFIX file (or a captured TCP stream) into records."""
    decoder = Decoder(pen)
    return [rec for msg in iter_messages(data) for rec in decoder.decode(msg)]


def jsonable(value: Any) -> Any:
    """JSON form of a decoded value: datetimes as ISO 8601 UTC, addresses as text, bytes as hex."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


@dataclass(slots=True)
class _Stream:
    expected: int  # sequence number the next message must carry
    messages: int = 1
    gaps: int = 0
    lost: int = 0  # data records missing in the gaps


class SequenceCheck:
    """RFC 7011 sequence numbers per (exporter's transport session, observation domain).

    A message's number is the count of data records sent before it in its domain, so a message whose
    number is ahead of the previous one's plus its records means the records between were lost.
    A number that goes back is an exporter restart or a reordered datagram: followed, not counted."""

    def __init__(self) -> None:
        self.streams: dict[tuple[Any, int], _Stream] = {}

    def message(self, session: Any, odid: int, sequence: int, records: int) -> int:
        """Records missing right before this message (0: in sequence)."""
        stream = self.streams.get((session, odid))
        nxt = (sequence + records) % SEQ_MODULO
        if stream is None:
            self.streams[(session, odid)] = _Stream(nxt)
            return 0
        stream.messages += 1
        ahead = (sequence - stream.expected) % SEQ_MODULO
        stream.expected = nxt
        if ahead == 0 or ahead >= SEQ_MODULO // 2:
            return 0
        stream.gaps += 1
        stream.lost += ahead
        return ahead

    def summary(self) -> str:
        lost = sum(s.lost for s in self.streams.values())
        gaps = sum(s.gaps for s in self.streams.values())
        return f"{gaps} sequence gap{'s' if gaps != 1 else ''}, {lost} records lost"


_END_REASONS = {1: "idle", 2: "active", 3: "end", 4: "forced", 5: "resources"}
_SPI_FIELDS = frozenset({"IPSecSPI", "reverseIPSecSPI", "espPeerSPI", "reverseEspPeerSPI"})
_FLOW_LINE = (  # (label, IE names) of an espmeter SA record, in `espmeter read` order
    ("packets", ("packetDeltaCount",)),
    ("bytes", ("octetDeltaCount",)),
    ("loss", ("espLostPacketDeltaCount", "espExpectedPacketDeltaCount")),
    ("reordered", ("espReorderedPacketDeltaCount",)),
    ("dup", ("espDuplicatePacketDeltaCount",)),
    ("late", ("espLatePacketDeltaCount",)),
    ("loss events", ("espLossEventDeltaCount",)),
    ("longest", ("espLongestLossRun",)),
)


def _text(name: str, value: Any) -> str:
    """A value as `espmeter read` shows it: SPIs in hex, times in UTC, addresses as text."""
    if name in _SPI_FIELDS and isinstance(value, int):
        return f"0x{value:08x}"
    return str(jsonable(value))


def _endpoint(rec: dict[str, Any], side: str) -> str:
    addr = rec.get(f"{side}IPv4Address") or rec.get(f"{side}IPv6Address")
    port = rec.get(f"{side}TransportPort")
    return f"{addr}:{port}" if port is not None else str(addr)


def _counts(rec: dict[str, Any], prefix: str) -> list[str]:
    out = []
    for label, names in _FLOW_LINE:
        names = tuple(prefix + n[0].upper() + n[1:] if prefix else n for n in names)
        if all(n in rec for n in names):
            out.append(f"{label} {'/'.join(str(rec[n]) for n in names)}")
    return out


def _flow_line(rec: dict[str, Any]) -> str:
    """An espmeter SA (or biflow) record in the shape of `espmeter read`'s table."""
    parts = [f"{_endpoint(rec, 'source')} -> {_endpoint(rec, 'destination')}",
             f"spi {_text('IPSecSPI', rec['IPSecSPI'])}", *_counts(rec, "")]
    if "reverseIPSecSPI" in rec:
        parts += [f"| reverse spi {_text('IPSecSPI', rec['reverseIPSecSPI'])}", *_counts(rec, "reverse")]
    if "flowEndReason" in rec:
        parts.append(f"end {_END_REASONS.get(rec['flowEndReason'], rec['flowEndReason'])}")
    for label, name in (("peer", "espPeerSPI"), ("tunnel", "espTunnelId"), ("name", "espTunnelName")):
        if rec.get(name) not in (None, ""):
            parts.append(f"{label} {_text(name, rec[name])}")
    start, end = rec.get("flowStartMilliseconds"), rec.get("flowEndMilliseconds")
    when = f"{_text('', start)} .. {_text('', end)}  " if start is not None and end is not None else ""
    return when + "  ".join(parts)


def is_loss_event(rec: dict[str, Any]) -> bool:
    """A loss-event record (templates/records.yaml `loss_event`), not an SA's counters."""
    return "espLossEventFirstSequenceNumber" in rec


def _loss_event_line(rec: dict[str, Any]) -> str:
    first, last = rec["espLossEventFirstSequenceNumber"], rec["espLossEventLastSequenceNumber"]
    numbers = f"{first}" if first == last else f"{first}..{last}"
    return (f"loss event {_endpoint(rec, 'source')} -> {_endpoint(rec, 'destination')}"
            f" spi {_text('IPSecSPI', rec['IPSecSPI'])}: numbers {numbers} ({rec['espLossEventPacketCount']} lost)"
            f" between {_text('', rec['espLossEventAfterMilliseconds'])}"
            f" and {_text('', rec['espLossEventBeforeMilliseconds'])}")


def format_record(rec: dict[str, Any], json_lines: bool) -> str:
    """JSON with every field (loss events marked `"_record": "loss_event"`), or one readable line: SA
    records as in `espmeter read`, loss events as such, RFC 5610 type records by name (not their
    descriptions), other records as name=value."""
    if json_lines:
        out = {k: jsonable(v) for k, v in rec.items()}
        if is_loss_event(rec):
            out["_record"] = "loss_event"
        return json.dumps(out, separators=(",", ":"))
    if is_loss_event(rec):
        return _loss_event_line(rec)
    if "IPSecSPI" in rec:
        return _flow_line(rec)
    if "informationElementName" in rec:
        return (f"information element {rec.get('privateEnterpriseNumber', 0)}/{rec.get('informationElementId')}"
                f" {rec['informationElementName']}")
    return "  ".join(f"{k}={_text(k, v)}" for k, v in rec.items() if not k.startswith("_"))


def _bind(target: Any, socktype: int) -> socket.socket:
    family, addr = socket.getaddrinfo(target.host, target.port, type=socktype)[0][::4]
    server = socket.socket(family, socktype)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if socktype == socket.SOCK_DGRAM:  # a burst of exports must not overflow the socket between reads
        try:
            server.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)  # beyond rmem_max (root)
        except OSError:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    server.bind(addr)
    if socktype == socket.SOCK_STREAM:
        server.listen(8)
    return server


def _where(scheme: str, sockname: tuple) -> str:
    host = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
    return f"{scheme}://{host}:{sockname[1]}"


def run_collector(listen: str, json_lines: bool, out: TextIO, stop: Callable[[], bool] | None = None,
                  count: int | None = None, pen: int = DOC_PEN, ready: Callable[[tuple], None] | None = None,
                  log: TextIO | None = None) -> int:
    """Receive IPFIX on `udp://ADDR:PORT` or `tcp://ADDR:PORT` and print each record.

    Returns the number of flow records received; ends after `count` flow records (options records
    are printed but not counted) or when `stop()` is true (checked every 0.2 s). `ready` gets the bound
    address (useful with port 0). `log` gets the banner, each sequence gap and a summary at the end.
    """
    target = parse_collector(listen, listen=True)
    if target.scheme not in ("udp", "tcp"):
        raise ValueError("collect listens on udp:// or tcp:// only")
    socktype = socket.SOCK_DGRAM if target.scheme == "udp" else socket.SOCK_STREAM
    server = _bind(target, socktype)
    if ready:
        ready(server.getsockname())
    where = _where(target.scheme, server.getsockname())
    if log:
        rcvbuf = server.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        print(f"espmeter collect: listening on {where} (receive buffer {rcvbuf >> 10} KiB)", file=log, flush=True)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    decoders: dict[Any, Decoder] = {}
    streams: dict[socket.socket, bytearray] = {}
    sequences = SequenceCheck()
    printed = flows = messages = 0

    def emit(key: Any, message: bytes) -> bool:
        nonlocal printed, flows, messages
        decoder = decoders.setdefault(key, Decoder(pen))
        try:
            records = decoder.decode(message)
        except Exception as exc:  # a bad message must not end the collector
            print(f"# undecodable message from {key}: {exc}", file=out, flush=True)
            return False
        messages += 1
        odid, seq = struct.unpack_from("!II", message, 8)[::-1]
        missing = sequences.message(key, odid, seq, len(records))
        if missing and log:
            print(f"espmeter collect: {key} domain {odid}: sequence number {seq}, expected "
                  f"{(seq - missing) % SEQ_MODULO}: {missing} records lost", file=log, flush=True)
        for rec in records:
            print(format_record(rec, json_lines), file=out, flush=True)
            printed += 1
            if decoder.is_flow(rec):
                flows += 1
                if count is not None and flows >= count:
                    return True
        return False

    try:
        while not (stop and stop()):
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                if sock is server and socktype == socket.SOCK_DGRAM:
                    data, peer = server.recvfrom(65535)
                    if emit(peer, data):
                        return flows
                elif sock is server:
                    conn, _peer = server.accept()
                    streams[conn] = bytearray()
                    sel.register(conn, selectors.EVENT_READ)
                else:
                    chunk = sock.recv(65536)
                    if not chunk:
                        sel.unregister(sock)
                        sock.close()
                        streams.pop(sock, None)
                        decoders.pop(sock, None)
                        continue
                    buf = streams[sock]
                    buf += chunk
                    while len(buf) >= 4:
                        length = struct.unpack_from("!H", buf, 2)[0]
                        if length < 16:  # not IPFIX: the stream cannot be resynchronised, drop it
                            sel.unregister(sock)
                            sock.close()
                            streams.pop(sock, None)
                            decoders.pop(sock, None)
                            break
                        if len(buf) < length:
                            break
                        message = bytes(buf[:length])
                        del buf[:length]
                        if emit(sock, message):
                            return flows
        return flows
    finally:
        for conn in list(streams):
            conn.close()
        sel.close()
        server.close()
        if log:
            print(f"espmeter collect: {where}: {messages} messages, {flows} flow records, "
                  f"{printed - flows} options records; {sequences.summary()}", file=log, flush=True)


def read_file(path: str, pen: int = DOC_PEN) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return decode_messages(f.read(), pen)


__all__ = ["Decoder", "SequenceCheck", "decode_messages", "format_record", "iter_messages", "jsonable", "read_file",
           "run_collector"]
