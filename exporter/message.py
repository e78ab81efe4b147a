"""IPFIX message building on python-ipfix's MessageBuffer, with its known problems worked around.

Worked around here (python-ipfix 0.9.7 is not forked): sequence numbers are kept by us per session
and observation domain and wrapped modulo 2^32 (python-ipfix neither wraps nor keeps them per domain
correctly in `begin_export`); the MTU check counts the template record header and the set header
that python-ipfix forgets; a data set left empty by a record that did not fit is rolled back; the
export time comes from the injectable clock. Withdrawals are never built (`delete_template` raises
in python-ipfix, and withdrawals are forbidden over UDP anyway).
"""

from __future__ import annotations

import struct

from ipfix import message as ipfix_message
from ipfix import template as ipfix_template

from .encoding import EncodedRecord

HEADER_LEN = 16
SET_HEADER_LEN = 4
SEQ_MODULO = 2**32
MIN_MTU = 512  # the smallest `mtu:` the configuration accepts (templates and options records fit)


class ExportMessage(bytes):
    """The bytes of one IPFIX message, plus what it carries (for counters and notSent* totals)."""

    records: int
    packets: int
    octets: int
    template_ids: frozenset[int]

    @property
    def sequence(self) -> int:
        return struct.unpack_from("!I", self, 8)[0]


def make_message(data: bytes, records: int = 0, packets: int = 0, octets: int = 0,
                 template_ids: frozenset[int] = frozenset()) -> ExportMessage:
    msg = ExportMessage(data)
    msg.records, msg.packets, msg.octets, msg.template_ids = records, packets, octets, template_ids
    return msg


def restamp(message: bytes, export_time: int, sequence: int | None = None) -> bytes:
    """Rewrite the export time (and optionally the sequence number) of an encoded message."""
    buf = bytearray(message)
    struct.pack_into("!I", buf, 4, export_time & 0xFFFFFFFF)
    if sequence is not None:
        struct.pack_into("!I", buf, 8, sequence % SEQ_MODULO)
    if isinstance(message, ExportMessage):
        return make_message(bytes(buf), message.records, message.packets, message.octets, message.template_ids)
    return bytes(buf)


class MessageBuilder:
    """Builds messages for one transport session and observation domain, never above the MTU."""

    def __init__(self, odid: int, mtu: int):
        self.odid = odid
        self.mtu = mtu
        self.sequence = 0  # data records before the current message, modulo 2^32
        self._buf = ipfix_message.MessageBuffer()
        self._buf.mtu = mtu
        self._open = False
        self._reset_content()

    def _reset_content(self) -> None:
        self._records = self._packets = self._octets = 0
        self._tids: set[int] = set()

    @property
    def empty(self) -> bool:
        return not self._open or self._buf.length <= HEADER_LEN

    @property
    def length(self) -> int:
        return self._buf.length if self._open else 0

    def begin(self) -> None:
        buf = self._buf
        buf.odid = self.odid  # before begin_export: it reads the sequence of the *previous* domain
        buf.sequences[(self.odid, 0)] = self.sequence
        buf.begin_export(self.odid)
        self._open = True
        self._reset_content()

    def _ensure_open(self) -> None:
        if not self._open:
            self.begin()

    def add_template(self, tmpl: ipfix_template.Template) -> bool:
        """Add a (options) template record; False if it does not fit in this message."""
        self._ensure_open()
        buf = self._buf
        setid = tmpl.native_setid()
        need = tmpl.enclength + (6 if setid == ipfix_template.OPTIONS_SET_ID else 4)
        if buf.cursetid != setid:
            need += SET_HEADER_LEN
        if buf.length + need > self.mtu:
            return False
        buf.add_template(tmpl, export=False)
        buf.export_template(tmpl.tid)
        self._tids.add(tmpl.tid)
        return True

    def add_record(self, rec: EncodedRecord) -> bool:
        """Add a data record (its template must be known to the collector); False if it does not fit."""
        self._ensure_open()
        buf = self._buf
        tid = rec.template.tid
        if (self.odid, tid) not in buf.templates:
            buf.add_template(rec.template, export=False)
        new_set = buf.cursetid != tid
        if new_set:
            if buf.length + SET_HEADER_LEN + rec.template.minlength > self.mtu:
                return False
            buf.export_new_set(tid)
        try:
            buf.export_tuple(rec.values)
        except ipfix_message.EndOfMessage:
            if new_set:  # drop the set header again rather than send an empty set
                buf.length = buf.cursetoff
                buf.cursetid = None
                buf.curtmpl = None
            return False
        self._records += 1
        self._packets += rec.packets
        self._octets += rec.octets
        return True

    def finish(self, export_time: int) -> ExportMessage:
        """Close the message; the sequence number of the next message is advanced modulo 2^32."""
        buf = self._buf
        buf.export_epoch = int(export_time) & 0xFFFFFFFF
        buf.auto_export_time = False
        data = buf.to_bytes()
        assert len(data) <= self.mtu, (len(data), self.mtu)
        self.sequence = (self.sequence + self._records) % SEQ_MODULO
        msg = make_message(data, self._records, self._packets, self._octets, frozenset(self._tids))
        self._open = False
        self._reset_content()
        return msg
