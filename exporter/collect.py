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
from datetime import datetime
from typing import Any, TextIO

from ipfix import ie as ipfix_ie
from ipfix import message as ipfix_message
from ipfix import types as ipfix_types

from .infomodel import DOC_PEN, InfoModel
from .transport import parse_collector

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

    def _retype(self, _msg: ipfix_message.MessageBuffer, tmpl: Any) -> None:
        """Give the template's IEs our names and types (same lengths, so the layout is unchanged)."""
        ies = []
        for e in tmpl.ies:
            known = self._known.get((e.pen, e.num))
            ies.append(known.for_length(e.length) if known is not None else e)
        tmpl.ies = ies
        tmpl.finalize()

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


def format_record(rec: dict[str, Any], json_lines: bool) -> str:
    if json_lines:
        return json.dumps({k: jsonable(v) for k, v in rec.items()}, separators=(",", ":"))
    head = f"odid={rec['_odid']} seq={rec['_sequence']} tid={rec['_template_id']}"
    body = " ".join(f"{k}={jsonable(v)}" for k, v in rec.items() if not k.startswith("_"))
    return f"{head} {body}"


def run_collector(listen: str, json_lines: bool, out: TextIO, stop: Callable[[], bool] | None = None,
                  count: int | None = None, pen: int = DOC_PEN, ready: Callable[[tuple], None] | None = None) -> int:
    """Receive IPFIX on `udp://ADDR:PORT` or `tcp://ADDR:PORT` and print each record.

    Returns the number of records printed; ends after `count` records or when `stop()` is true
    (checked every 0.2 s). `ready` gets the bound address (useful with port 0).
    """
    target = parse_collector(listen)
    if target.scheme not in ("udp", "tcp"):
        raise ValueError("collect listens on udp:// or tcp:// only")
    socktype = socket.SOCK_DGRAM if target.scheme == "udp" else socket.SOCK_STREAM
    family, addr = socket.getaddrinfo(target.host, target.port, type=socktype)[0][::4]
    server = socket.socket(family, socktype)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(addr)
    if socktype == socket.SOCK_STREAM:
        server.listen(8)
    if ready:
        ready(server.getsockname())
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    decoders: dict[Any, Decoder] = {}
    streams: dict[socket.socket, bytearray] = {}
    printed = 0

    def emit(key: Any, message: bytes) -> bool:
        nonlocal printed
        decoder = decoders.setdefault(key, Decoder(pen))
        try:
            records = decoder.decode(message)
        except Exception as exc:  # a bad message must not end the collector
            print(f"# undecodable message from {key}: {exc}", file=out, flush=True)
            return False
        for rec in records:
            print(format_record(rec, json_lines), file=out, flush=True)
            printed += 1
            if count is not None and printed >= count:
                return True
        return False

    try:
        while not (stop and stop()):
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                if sock is server and socktype == socket.SOCK_DGRAM:
                    data, peer = server.recvfrom(65535)
                    if emit(peer, data):
                        return printed
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
                            return printed
        return printed
    finally:
        for conn in list(streams):
            conn.close()
        sel.close()
        server.close()


def read_file(path: str, pen: int = DOC_PEN) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return decode_messages(f.read(), pen)


__all__ = ["Decoder", "decode_messages", "format_record", "iter_messages", "jsonable", "read_file", "run_collector"]
