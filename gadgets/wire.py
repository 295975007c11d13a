"""Message ids on the wire: the one home, as gadgetron-python's ``gadgetron/external/constants.py`` is its.

Every message of the ISMRMRD v1 stream protocol (and of Gadgetron's external
Python link, which uses the same framing) starts with a little-endian uint16
id. The ids are those of :class:`ismrmrd.serialization.ISMRMRDMessageID`,
plus Gadgetron's ERROR (8), which ISMRMRD does not define: an external
module that fails sends it (uint64 length + text) so Gadgetron can show the
scanner why. They live in :mod:`gadgets` because gadgets are the lowest
layer that writes to the wire (:mod:`gadgets.errors`,
:mod:`gadgets.external_link`); the host, the simulator and the tests import
them from here.
"""
from __future__ import annotations

import struct

from ismrmrd.serialization import ISMRMRDMessageID

CONFIG_FILE = int(ISMRMRDMessageID.CONFIG_FILE)    # 1: 1024-byte NUL-padded pipeline name
CONFIG_TEXT = int(ISMRMRDMessageID.CONFIG_TEXT)    # 2: uint32 length + pipeline XML
HEADER = int(ISMRMRDMessageID.HEADER)              # 3: uint32 length + ISMRMRD XML header
CLOSE = int(ISMRMRDMessageID.CLOSE)                # 4: no payload
TEXT = int(ISMRMRDMessageID.TEXT)                  # 5: uint32 length + text
ERROR = 8                                          # Gadgetron's external-module error: uint64 length + text
ACQUISITION = int(ISMRMRDMessageID.ACQUISITION)    # 1008
IMAGE = int(ISMRMRDMessageID.IMAGE)                # 1022
WAVEFORM = int(ISMRMRDMessageID.WAVEFORM)          # 1026

MESSAGE_NAMES: dict[int, str] = {
    CONFIG_FILE: "CONFIG_FILE", CONFIG_TEXT: "CONFIG_TEXT", HEADER: "HEADER", CLOSE: "CLOSE", TEXT: "TEXT",
    ERROR: "ERROR", ACQUISITION: "ACQUISITION", IMAGE: "IMAGE", WAVEFORM: "WAVEFORM",
}

MESSAGE_ID = struct.Struct("<H")


def message_id(mid: int) -> bytes:
    """The two bytes that open a message with id ``mid`` (CLOSE is nothing more)."""
    return MESSAGE_ID.pack(mid)


def error_bytes(text: str) -> bytes:
    """Gadgetron's ERROR message: uint16 id 8, uint64 length, UTF-8 text."""
    data = text.encode("utf-8")
    return struct.pack("<HQ", ERROR, len(data)) + data


def length_prefixed(mid: int, payload: bytes) -> bytes:
    """A message whose payload follows a uint32 length: CONFIG_TEXT, HEADER, TEXT."""
    return struct.pack("<HI", mid, len(payload)) + payload


def text_bytes(text: str) -> bytes:
    """A TEXT message (uint16 id 5, uint32 length, UTF-8)."""
    return length_prefixed(TEXT, text.encode("utf-8"))


__all__ = ["CONFIG_FILE", "CONFIG_TEXT", "HEADER", "CLOSE", "TEXT", "ERROR", "ACQUISITION", "IMAGE", "WAVEFORM",
           "MESSAGE_NAMES", "MESSAGE_ID", "message_id", "error_bytes", "length_prefixed", "text_bytes"]
