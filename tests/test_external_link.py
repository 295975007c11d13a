"""The gadgets' link under gadgetron.external.Connection: end of file, a stalled peer, draining."""
from __future__ import annotations

import socket
import struct

import pytest

from gadgets import wire
from gadgets.external_link import PeerClosed, PeerGone, PeerStalled, SafeLink, drain


def test_a_peer_that_stops_reading_stalls_the_writer_within_the_bound_and_nothing_more_is_written():
    a, b = socket.socketpair()
    link = SafeLink(a, stall_s=0.3)
    # A writer that blocked instead would hang here until pytest's timeout fails the test: no seconds
    # are asserted (they depend on the machine's load), only that the stall is raised.
    with pytest.raises(PeerStalled):
        for _ in range(4096):  # 256 MB: far more than the socket buffers hold
            link.write(b"\0" * (1 << 16))
    with pytest.raises(PeerGone):
        link.write(b"more")
    link.close()  # no CLOSE after a cut message; must not block either
    b.close()


def test_end_of_file_raises_instead_of_spinning():
    a, b = socket.socketpair()
    link = SafeLink(a, stall_s=1)
    b.sendall(b"\x01")
    b.close()
    with pytest.raises(PeerClosed):  # spinning instead would hang until pytest's timeout
        link.read(2)
    link.close()


class _Conn:
    """Just what drain() uses of gadgetron.external.Connection: its link, filters and next()."""

    def __init__(self, link: SafeLink) -> None:
        self.socket = link
        self.filters = [lambda item: False]

    def next(self):
        (mid,) = struct.unpack("<H", self.socket.read(2))
        if mid == wire.CLOSE:
            raise StopIteration
        return mid, self.socket.read(4)


def test_drain_reads_to_the_peers_close_and_gives_up_on_silence():
    a, b = socket.socketpair()
    conn = _Conn(SafeLink(a, stall_s=1))
    b.sendall(b"".join(wire.message_id(wire.ACQUISITION) + b"data" for _ in range(100)) + wire.message_id(wire.CLOSE))
    assert drain(conn) == 100 and conn.filters == []
    # Silence with the peer still connected: drain gives up after idle_s by itself (the peer closes
    # only after drain returned; waiting for that close would hang until pytest's timeout).
    assert drain(conn, idle_s=0.3) == 0
    b.close()
    a.close()
