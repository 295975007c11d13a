"""ISMRMRD v1 stream messages, read defensively and written with ismrmrd's serializers.

Every length in a message is checked against :class:`Limits` *before*
anything is allocated, so a hostile or corrupted length field costs a
clear error, not gigabytes. Payloads are then parsed by ismrmrd's own
deserializers (``Acquisition.deserialize_from`` and friends) over the
exact bytes read, and written back by :class:`ismrmrd.ProtocolSerializer`.
"""
from __future__ import annotations

import ctypes
import io
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

import ismrmrd
from ismrmrd.image import get_dtype_from_data_type
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolSerializer

from gadgets.wire import (ACQUISITION, CLOSE, CONFIG_FILE, CONFIG_TEXT, ERROR, HEADER, IMAGE, MESSAGE_NAMES, TEXT,
                         WAVEFORM)

# The <version> of the ISMRMRD XML header that ISMRMRD 1.14 (Gadgetron 4.7)
# writes and demands: its C++ serialiser refuses any other value when
# Gadgetron hands the header to <external> nodes. Scanners and older tools
# send other versions (or none); the embedded host accepts them all and says
# so in its log, since nothing it does depends on the number.
ISMRMRD_HEADER_VERSION = 14

_ACQ_HEADER_SIZE = ctypes.sizeof(ismrmrd.AcquisitionHeader)
_IMAGE_HEADER_SIZE = ctypes.sizeof(ismrmrd.ImageHeader)
_WAVEFORM_HEADER_SIZE = ctypes.sizeof(ismrmrd.WaveformHeader)
_CONFIG_FILE_SIZE = 1024


class ProtocolError(Exception):
    """The peer sent something that is not a valid ISMRMRD stream message."""


class TruncatedMessage(ProtocolError):
    """The stream ended (or the peer went away) in the middle of a message."""


class StreamEnded(Exception):
    """The stream ended cleanly between messages without a CLOSE."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one message may claim, checked before allocation."""

    max_payload_bytes: int = 256 * 2**20   # one acquisition, image or waveform
    max_text_bytes: int = 16 * 2**20       # config, header and text messages
    max_channels: int = 1024
    max_samples: int = 1 << 16


@dataclass
class Header:
    """A parsed HEADER message: the xsd object and the XML it came from."""

    header: Any
    xml: bytes


def _strip_nul(data: bytes) -> bytes:
    # python-ismrmrd-server's client pads text with a trailing NUL (C strings).
    return data.rstrip(b"\x00")


class MessageReader:
    """Reads one message at a time from a blocking byte source.

    ``read`` is a ``read(n) -> bytes`` callable that may return fewer bytes
    (a socket file returns what it has at EOF); short reads mid-message are
    a :class:`TruncatedMessage`.
    """

    def __init__(self, read: Callable[[int], bytes], limits: Limits | None = None,
                 message_clock: Callable[[bool], None] | None = None) -> None:
        self._read = read
        self.limits = limits or Limits()
        # Told True when a message's first byte has arrived and False when it is
        # complete: the host's per-message deadline runs in between.
        self._clock = message_clock or (lambda started: None)
        self.bytes_read = 0
        self.last: str = "nothing yet"

    def _exactly(self, n: int, what: str) -> bytes:
        chunks = []
        remaining = n
        while remaining > 0:
            chunk = self._read(remaining)
            if not chunk:
                got = n - remaining
                raise TruncatedMessage(f"stream ended inside {what}: expected {n} bytes, got {got}")
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        self.bytes_read += n
        return data

    def _length(self, fmt: str, what: str, limit: int) -> int:
        size = struct.calcsize(fmt)
        (length,) = struct.unpack(fmt, self._exactly(size, f"{what} length"))
        if length > limit:
            raise ProtocolError(f"{what} length {length} bytes exceeds the limit of {limit} bytes")
        return length

    def read_message(self) -> tuple[int, Any]:
        """The next ``(message id, item)``; raises :class:`StreamEnded` at a clean EOF."""
        first = self._read(2)
        if not first:
            raise StreamEnded()
        self._clock(True)
        if len(first) < 2:
            first += self._exactly(2 - len(first), "message id")
        else:
            self.bytes_read += 2
        (mid,) = struct.unpack("<H", first)
        handler = _READERS.get(mid)
        if handler is None:
            raise ProtocolError(f"unknown message id {mid} (after {self.last})")
        item = handler(self)
        self._clock(False)
        self.last = _describe(mid, item)
        return mid, item

    # -- payload readers -------------------------------------------------
    def _config_file(self) -> ConfigFile:
        raw = self._exactly(_CONFIG_FILE_SIZE, "CONFIG_FILE")
        return ConfigFile(_strip_nul(raw.split(b"\x00", 1)[0]).decode("utf-8", errors="replace").strip())

    def _text(self, what: str) -> bytes:
        length = self._length("<I", what, self.limits.max_text_bytes)
        return _strip_nul(self._exactly(length, what))

    def _config_text(self) -> ConfigText:
        return ConfigText(self._text("CONFIG_TEXT").decode("utf-8", errors="replace"))

    def _header(self) -> Header:
        xml = self._text("HEADER")
        try:
            parsed = ismrmrd.xsd.CreateFromDocument(xml)
        except Exception as exc:  # xsdata raises several parser exception types
            raise ProtocolError(f"HEADER is not a valid ISMRMRD XML header: {exc}") from None
        if parsed is None or not getattr(parsed, "encoding", None):
            raise ProtocolError("HEADER is not a valid ISMRMRD XML header: it has no <encoding> section")
        return Header(parsed, xml)

    def _plain_text(self) -> str:
        return self._text("TEXT").decode("utf-8", errors="replace")

    def _error(self) -> str:
        length = self._length("<Q", "ERROR", self.limits.max_text_bytes)
        return _strip_nul(self._exactly(length, "ERROR")).decode("utf-8", errors="replace")

    def _acquisition(self) -> ismrmrd.Acquisition:
        head_bytes = self._exactly(_ACQ_HEADER_SIZE, "ACQUISITION header")
        head = ismrmrd.AcquisitionHeader.from_buffer_copy(head_bytes)
        lim = self.limits
        if head.active_channels == 0 or head.active_channels > lim.max_channels:
            raise ProtocolError(f"ACQUISITION claims {head.active_channels} active channels (allowed 1..{lim.max_channels})")
        if head.available_channels and head.active_channels > head.available_channels:
            raise ProtocolError(
                f"ACQUISITION claims {head.active_channels} active channels but only {head.available_channels} available")
        if head.number_of_samples == 0 or head.number_of_samples > lim.max_samples:
            raise ProtocolError(f"ACQUISITION claims {head.number_of_samples} samples (allowed 1..{lim.max_samples})")
        if head.trajectory_dimensions > 3:
            raise ProtocolError(f"ACQUISITION claims {head.trajectory_dimensions} trajectory dimensions (at most 3)")
        nbytes = head.number_of_samples * (head.trajectory_dimensions * 4 + head.active_channels * 8)
        if nbytes > lim.max_payload_bytes:
            raise ProtocolError(f"ACQUISITION payload of {nbytes} bytes exceeds the limit of {lim.max_payload_bytes}")
        payload = self._exactly(nbytes, f"ACQUISITION data ({head.active_channels} channels x {head.number_of_samples} samples)")
        return ismrmrd.Acquisition.deserialize_from(io.BytesIO(head_bytes + payload).read)

    def _image(self) -> ismrmrd.Image:
        head_bytes = self._exactly(_IMAGE_HEADER_SIZE, "IMAGE header")
        head = ismrmrd.ImageHeader.from_buffer_copy(head_bytes)
        try:
            dtype = get_dtype_from_data_type(head.data_type)
        except Exception:
            raise ProtocolError(f"IMAGE has unknown data type {head.data_type}") from None
        attr_len = self._length("<Q", "IMAGE attribute string", self.limits.max_text_bytes)
        attributes = self._exactly(attr_len, "IMAGE attribute string")
        n = int(head.channels) * int(head.matrix_size[0]) * int(head.matrix_size[1]) * int(head.matrix_size[2])
        nbytes = n * dtype.itemsize
        if nbytes > self.limits.max_payload_bytes:
            raise ProtocolError(f"IMAGE payload of {nbytes} bytes exceeds the limit of {self.limits.max_payload_bytes}")
        data = self._exactly(nbytes, "IMAGE data")
        stream = io.BytesIO(struct.pack("<Q", attr_len) + attributes + data)
        try:
            return ismrmrd.Image.deserialize_from_with_header(head_bytes, stream.read)
        except Exception as exc:
            raise ProtocolError(f"IMAGE could not be parsed: {exc}") from None

    def _waveform(self) -> ismrmrd.Waveform:
        head_bytes = self._exactly(_WAVEFORM_HEADER_SIZE, "WAVEFORM header")
        head = ismrmrd.WaveformHeader.from_buffer_copy(head_bytes)
        nbytes = int(head.channels) * int(head.number_of_samples) * 4
        if nbytes > self.limits.max_payload_bytes:
            raise ProtocolError(f"WAVEFORM payload of {nbytes} bytes exceeds the limit of {self.limits.max_payload_bytes}")
        data = self._exactly(nbytes, "WAVEFORM data")
        return ismrmrd.Waveform.deserialize_from(io.BytesIO(head_bytes + data).read)


_READERS: dict[int, Callable[[MessageReader], Any]] = {
    CONFIG_FILE: MessageReader._config_file,
    CONFIG_TEXT: MessageReader._config_text,
    HEADER: MessageReader._header,
    CLOSE: lambda reader: None,
    TEXT: MessageReader._plain_text,
    ERROR: MessageReader._error,
    ACQUISITION: MessageReader._acquisition,
    IMAGE: MessageReader._image,
    WAVEFORM: MessageReader._waveform,
}


def _describe(mid: int, item: Any) -> str:
    if mid == ACQUISITION:
        return f"ACQUISITION with {item.number_of_samples} samples x {item.active_channels} channels"
    return MESSAGE_NAMES.get(mid, str(mid))


class MessageWriter:
    """Writes result messages to a binary stream with ismrmrd's serializer."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._serializer = ProtocolSerializer(stream)

    def write(self, item: Any) -> None:
        """An ``ismrmrd.Image``/``Acquisition``/``Waveform``/header, or a ``str`` as TEXT."""
        self._serializer.serialize(item)
        self._stream.flush()

    def text(self, message: str) -> None:
        self._serializer.serialize(str(message))
        self._stream.flush()

    def close(self) -> None:
        self._serializer.close()


__all__ = [
    "Limits", "MessageReader", "MessageWriter", "ProtocolError", "TruncatedMessage", "StreamEnded", "Header",
]
