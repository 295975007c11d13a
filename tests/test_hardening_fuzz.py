"""A bounded, seeded fuzz of the stream host: mutated sessions never hang it, leak threads or break later scans."""
from __future__ import annotations

import io
import socket
import struct
import threading
import time

import ismrmrd
import numpy as np
from ismrmrd.serialization import ConfigFile, ProtocolSerializer

from simulator.acquire import acquisitions
from simulator.header import make_header
from tests.streams import small_cine
from tests.test_host_refusals import _good_session_still_works

SESSIONS = 300
SEED = 11


def _exchange(port: int, payload: bytes, timeout: float) -> tuple[list[str], bool, list]:
    """Send a session's bytes, half-close, read every answer: (texts, closed, images); waveforms pass through."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the host may refuse and close before it has read everything
            pass
        f = sock.makefile("rb")
        texts, images, closed = [], [], False
        while True:
            head = f.read(2)
            if len(head) < 2:
                break
            (mid,) = struct.unpack("<H", head)
            if mid == 5:
                (n,) = struct.unpack("<I", f.read(4))
                texts.append(f.read(n).decode())
            elif mid == 4:
                closed = True
                break
            elif mid == 1022:
                images.append(ismrmrd.Image.deserialize_from(f.read))
            elif mid == 1026:
                ismrmrd.Waveform.deserialize_from(f.read)
            elif mid == 1008:
                ismrmrd.Acquisition.deserialize_from(f.read)
            else:
                raise AssertionError(f"unexpected message id {mid} from the host")
        return texts, closed, images
    finally:
        sock.close()


def _valid_session(scan) -> tuple[bytes, list[int]]:
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


def _mutate(data: bytes, starts: list[int], rng: np.random.Generator) -> bytes:
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
        b[i:i + 2] = struct.pack("<H", int(rng.choice([0, 2, 3, 4, 5, 8, 1008, 1022, 1026, 65535])))
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


def test_seeded_fuzz_of_the_stream_host(stream_host):
    scan = small_cine(slices=1, frames=2, coils=2, ny=8, nx=8)
    data, starts = _valid_session(scan)
    rng = np.random.default_rng(SEED)
    threads_before = threading.active_count()
    start = time.perf_counter()
    outcomes = {"closed": 0, "images": 0, "texts": 0}
    for n in range(SESSIONS):
        payload = _mutate(data, starts, rng)
        t0 = time.perf_counter()
        texts, closed, images = _exchange(stream_host.port, payload, timeout=30)
        # every session ends promptly: EOF after our half-close ends it even when the bytes make no sense
        assert time.perf_counter() - t0 < 20, f"session {n} took {time.perf_counter() - t0:.1f} s"
        outcomes["closed"] += closed
        outcomes["images"] += bool(images)
        outcomes["texts"] += bool(texts)
        for im in images:
            assert np.all(np.isfinite(np.asarray(im.data))), f"session {n}: non-finite pixels reached the client"
    assert outcomes["closed"] == SESSIONS, outcomes  # the host always said goodbye
    assert outcomes["images"] > 0 and outcomes["texts"] > 0, outcomes  # both kinds of outcome were exercised
    _good_session_still_works(stream_host.port, scan)
    deadline = time.monotonic() + 10
    while threading.active_count() > threads_before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= threads_before + 2, "session threads left behind"
    assert time.perf_counter() - start < 120
