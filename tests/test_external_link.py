"""The gadgets' link under gadgetron.external.Connection: end of file, a stalled peer, draining."""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from gadgets.external_link import PeerClosed, PeerGone, PeerStalled, SafeLink, drain


def test_a_peer_that_stops_reading_stalls_the_writer_within_the_bound_and_nothing_more_is_written():
    a, b = socket.socketpair()
    link = SafeLink(a, stall_s=0.3)
    start = time.monotonic()
    with pytest.raises(PeerStalled):
        for _ in range(4096):  # 256 MB: far more than the socket buffers hold
            link.write(b"\0" * (1 << 16))
    assert time.monotonic() - start < 5
    with pytest.raises(PeerGone):
        link.write(b"more")
    link.close()  # no CLOSE after a cut message; must not block either
    b.close()


def test_end_of_file_raises_instead_of_spinning():
    a, b = socket.socketpair()
    link = SafeLink(a, stall_s=1)
    b.sendall(b"\x01")
    b.close()
    start = time.monotonic()
    with pytest.raises(PeerClosed):
        link.read(2)
    assert time.monotonic() - start < 1
    link.close()


class _Conn:
    """Just what drain() uses of gadgetron.external.Connection: its link, filters and next()."""

    def __init__(self, link: SafeLink) -> None:
        self.socket = link
        self.filters = [lambda item: False]

    def next(self):
        (mid,) = struct.unpack("<H", self.socket.read(2))
        if mid == 4:
            raise StopIteration
        return mid, self.socket.read(4)


def test_drain_reads_to_the_peers_close_and_gives_up_on_silence():
    a, b = socket.socketpair()
    conn = _Conn(SafeLink(a, stall_s=1))
    b.sendall(b"".join(struct.pack("<H", 1008) + b"data" for _ in range(100)) + struct.pack("<H", 4))
    assert drain(conn) == 100 and conn.filters == []
    start = time.monotonic()
    threading.Timer(5, b.close).start()
    assert drain(conn, idle_s=0.3) == 0  # silence: gives up after idle_s, not at the peer's close
    assert time.monotonic() - start < 3
    a.close()
