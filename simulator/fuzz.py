"""Hostile ISMRMRD sessions for the fuzz test and the soak benchmark: seeded mutations of a valid session."""
from __future__ import annotations

import io
import socket
import struct
from typing import BinaryIO

import ismrmrd
import numpy as np
from ismrmrd.serialization import ConfigFile, ProtocolSerializer

from gadgets import wire
from simulator.acquire import acquisitions
from simulator.header import make_header


def read_answer(f: BinaryIO) -> tuple[list[str], bool, list]:
    """Read a host's answer to its end, byte by byte as sent: (texts, closed, images).

    Raw on purpose (no ``ProtocolDeserializer``): a hostile session's test must see
    exactly what the host wrote. Waveforms and acquisitions pass through unread.
    """
    texts, images, closed = [], [], False
    while True:
        head = f.read(2)
        if len(head) < 2:
            break
        (mid,) = wire.MESSAGE_ID.unpack(head)
        if mid == wire.TEXT:
            (n,) = struct.unpack("<I", f.read(4))
            texts.append(f.read(n).decode())
        elif mid == wire.CLOSE:
            closed = True
            break
        elif mid == wire.IMAGE:
            images.append(ismrmrd.Image.deserialize_from(f.read))
        elif mid == wire.WAVEFORM:
            ismrmrd.Waveform.deserialize_from(f.read)
        elif mid == wire.ACQUISITION:
            ismrmrd.Acquisition.deserialize_from(f.read)
        else:
            raise AssertionError(f"unexpected message id {mid} from the host")
    return texts, closed, images


def exchange(port: int, payload: bytes, timeout: float, half_close: bool = True) -> tuple[list[str], bool, list]:
    """Send a session's bytes, half-close (unless told not to), read every answer (:func:`read_answer`)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the host may refuse and close before it has read everything
            pass
        return read_answer(sock.makefile("rb"))
    finally:
        sock.close()


def valid_session(scan) -> tuple[bytes, list[int]]:
    """A whole session's bytes, and the offsets where messages start (mutations aim there too)."""
    buf = io.BytesIO()
    ser = ProtocolSerializer(buf)
    starts = []
    for item in [ConfigFile("cine_conventional"), make_header(scan), *acquisitions(scan, calib_lines=(2, 6))]:
        starts.append(buf.tell())
        ser.serialize(item)
    starts.append(buf.tell())
    ser.close()
    return buf.getvalue(), starts


def mutate(data: bytes, starts: list[int], rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = rng.integers(8)
    if kind == 0:  # flip bits anywhere
        for _ in range(rng.integers(1, 16)):
            i = rng.integers(len(b))
            b[i] ^= 1 << rng.integers(8)
    elif kind == 1:  # truncate
        b = b[:rng.integers(len(b))]
    elif kind == 2:  # overwrite a message id
        i = starts[rng.integers(len(starts) - 1)]
        b[i:i + 2] = struct.pack("<H", int(rng.choice([0, wire.CONFIG_TEXT, wire.HEADER, wire.CLOSE, wire.TEXT, wire.ERROR,
                                                    wire.ACQUISITION, wire.IMAGE, wire.WAVEFORM, 65535])))
    elif kind == 3:  # huge or zero lengths / counts right after a message id
        i = starts[rng.integers(len(starts) - 1)] + 2
        b[i:i + 4] = struct.pack("<I", int(rng.choice([0, 1, 2**31, 2**32 - 1, int(rng.integers(2**20))])))
    elif kind == 4:  # duplicate a random chunk
        i, j = sorted(rng.integers(len(b), size=2))
        b[i:i] = b[i:j][:4096]
    elif kind == 5:  # random bytes spliced in
        i = rng.integers(len(b))
        b[i:i] = rng.integers(256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == 6:  # NaN / Inf floats written over sample data
        for _ in range(rng.integers(1, 8)):
            i = int(rng.integers(starts[2], len(b) - 4))
            b[i:i + 4] = struct.pack("<f", float(rng.choice([np.nan, np.inf, -np.inf, 3e38])))
    else:  # drop a whole message
        k = rng.integers(len(starts) - 1)
        b = b[:starts[k]] + b[starts[k + 1]:]
    return bytes(b)
