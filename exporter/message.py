"""IPFIX message framing (RFC 7011 3): header, template sets and data sets, never above the MTU.

Records arrive encoded (data and template records from `TemplateCodec`), so a message is a
list of byte strings joined once. Sequence numbers are kept per session and observation domain and
wrap modulo 2^32; the export time comes from the injectable clock. The layout is the one python-ipfix's
MessageBuffer writes (consecutive records of one template share a set), with its MTU check corrected
(it forgot the template record and set headers). Withdrawals are never built (forbidden over UDP).
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Callable, Container

from .codec import TemplateCodec
from .encoding import EncodedRecords

HEADER_LEN = 16
SET_HEADER_LEN = 4
SEQ_MODULO = 2**32
MIN_MTU = 512  # the smallest `mtu:` the configuration accepts (templates and options records fit)
IPFIX_VERSION = 10
_HEADER = struct.Struct("!HHIII")  # version, length, export time, sequence, observation domain
_SET_HEADER = struct.Struct("!HH")  # set ID, length
_NO_TEMPLATES: frozenset[int] = frozenset()


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
                 template_ids: frozenset[int] = _NO_TEMPLATES) -> ExportMessage:
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
        self._parts: list[bytes] = []  # [header, set header, records..., set header, ...]
        self._length = 0
        self._set_id = 0  # set being written (0: none)
        self._set_at = 0  # its header's index in _parts
        self._set_start = 0  # its offset in the message
        self._records = self._packets = self._octets = 0
        self._tids: set[int] = set()

    @property
    def empty(self) -> bool:
        return self._length <= HEADER_LEN

    @property
    def length(self) -> int:
        return self._length

    def _close_set(self) -> None:
        if self._set_id:
            self._parts[self._set_at] = _SET_HEADER.pack(self._set_id, self._length - self._set_start)
            self._set_id = 0

    def _open_set(self, set_id: int) -> None:
        self._close_set()
        if not self._length:
            self._parts.append(b"")  # the header, written by finish()
            self._length = HEADER_LEN
        self._set_id, self._set_at, self._set_start = set_id, len(self._parts), self._length
        self._parts.append(b"")
        self._length += SET_HEADER_LEN

    def add_template(self, codec: TemplateCodec) -> bool:
        """Add a (options) template record; False if it does not fit in this message."""
        record = codec.template_record
        need = len(record) + (0 if self._set_id == codec.setid else SET_HEADER_LEN) + (self._length or HEADER_LEN)
        if need > self.mtu:
            return False
        if self._set_id != codec.setid:
            self._open_set(codec.setid)
        self._parts.append(record)
        self._length += len(record)
        self._tids.add(codec.tid)
        return True

    def add_record(self, codec: TemplateCodec, data: bytes, packets: int = 0, octets: int = 0) -> bool:
        """Add a data record (its template must be known to the collector); False if it does not fit.
        `packets` and `octets` are what the record counts, for notSent* if the message is lost."""
        tid = codec.tid
        need = len(data) + (0 if self._set_id == tid else SET_HEADER_LEN) + (self._length or HEADER_LEN)
        if need > self.mtu:
            if self._set_id != tid and self._length + SET_HEADER_LEN + codec.minlength <= self.mtu:
                self._close_set()  # python-ipfix's MessageBuffer did so; the stream stays the same
            return False
        if self._set_id != tid:
            self._open_set(tid)
        self._parts.append(data)
        self._length += len(data)
        self._records += 1
        self._packets += packets
        self._octets += octets
        return True

    def add_records(self, records: EncodedRecords, start: int, announced: Container[int],
                    flush: Callable[[], object]) -> int:
        """Add records from index `start` on while their templates are announced, calling `flush` (which
        finishes the message) whenever the next one does not fit; returns the index of the first record not
        added: its template is not announced, or it does not fit in an empty message (the builder is then as
        before it was tried). A run of one template goes in as one slice of the columns, its length by a
        bisection of the records' offsets."""
        codecs, datas, offsets, mtu = records.codecs, records.data, records.offsets(), self.mtu
        i, n = start, len(datas)
        while i < n:
            codec = codecs[i]
            if codec.tid not in announced:
                return i
            j = i
            if self._set_id == codec.tid or len(datas[i]) + SET_HEADER_LEN + (self._length or HEADER_LEN) <= mtu:
                if self._set_id != codec.tid:
                    self._open_set(codec.tid)
                room = mtu - self._length
                at_most = i + room // (codec.minlength or 1)  # no more records than that fit
                j = bisect_right(offsets, offsets[i] + room, i, at_most + 1 if at_most < n else n + 1) - 1
                if codecs[i:j].count(codec) != j - i:
                    j = next(k for k in range(i, j) if codecs[k] is not codec)
            if j == i:  # record i does not fit
                if self._length <= HEADER_LEN:
                    return i
                flush()
                continue
            self._parts += datas[i:j]
            self._length += offsets[j] - offsets[i]
            self._records += j - i
            self._packets += sum(records.packets[i:j])
            self._octets += sum(records.octets[i:j])
            i = j
        return i

    def finish(self, export_time: int) -> ExportMessage:
        """Close the message; the sequence number of the next message is advanced modulo 2^32."""
        self._close_set()
        if not self._length:
            self._parts.append(b"")
            self._length = HEADER_LEN
        self._parts[0] = _HEADER.pack(IPFIX_VERSION, self._length, int(export_time) & 0xFFFFFFFF, self.sequence,
                                      self.odid)
        data = b"".join(self._parts)
        assert len(data) == self._length <= self.mtu, (len(data), self._length, self.mtu)
        self.sequence = (self.sequence + self._records) % SEQ_MODULO
        msg = make_message(data, self._records, self._packets, self._octets,
                           frozenset(self._tids) if self._tids else _NO_TEMPLATES)
        self._parts = []
        self._length = 0
        self._records = self._packets = self._octets = 0
        self._tids.clear()
        return msg
