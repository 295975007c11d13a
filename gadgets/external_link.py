"""The byte link under ``gadgetron.external.Connection``, made safe for a chain.

Under a real Gadgetron every gadget is a Python process talking to
Gadgetron over one TCP connection, and ``gadgetron.external.Connection``
(gadgetron 1.4.1) reads and writes it with plain blocking calls. Two of its
habits turn one failing gadget into a session that never ends:

- its reader loops forever on a closed connection (``recv`` returns no
  bytes, it asks again): the process spins at full CPU and outlives the
  session;
- its writer blocks for ever once Gadgetron stops reading, which Gadgetron
  does to the gadget *upstream* of a failed one; that gadget then stops
  reading too, and Gadgetron blocks writing to it: the chain deadlocks.

:func:`harden` swaps the connection's link for :class:`SafeLink`, which
raises :class:`PeerClosed` at end of file, and :class:`PeerStalled` when
the peer has taken no byte for ``stall_s`` seconds (Gadgetron reads every
external's output into an unbounded queue, so a healthy peer never stalls a
writer for more than moments). After either, the link writes nothing more:
a message may have been cut in the middle, and more bytes would only be read
as garbage. :func:`drain` discards the input until the peer's CLOSE, so
Gadgetron's writer to this gadget finishes and the session can end.

This is the only module of the gadgets that touches a socket, and only the
one Gadgetron's launcher handed over: ``python -m gadgetron`` runs nothing
but the gadget module, so the gadget is the one place to fix it.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import Any

from . import host_settings, wire

log = logging.getLogger(__name__)

DEFAULT_STALL_S = float(host_settings.BY_NAME["peer_stall_s"].default)
DEFAULT_DRAIN_IDLE_S = 60.0


class PeerGone(Exception):
    """The peer cannot be talked to any more; nothing more is written."""


class PeerClosed(PeerGone, EOFError):
    """The peer closed the connection."""


class PeerStalled(PeerGone):
    """The peer stopped reading what this gadget writes."""


def stall_seconds() -> float:
    """The stall bound: the operator setting ``peer_stall_s`` of this process (``STREAMRECON_PEER_STALL_S``
    or the config file), else 5 s; an unreadable or non-positive value is logged and replaced by 5 s."""
    try:
        value = float(host_settings.load().peer_stall_s)
    except ValueError as exc:
        log.warning("%s; using %.0f s", exc, DEFAULT_STALL_S)
        return DEFAULT_STALL_S
    return value if value > 0 else DEFAULT_STALL_S


class SafeLink:
    """``read``/``write``/``close`` over a connected socket, as gadgetron's Connection expects."""

    def __init__(self, sock: socket.socket, stall_s: float | None = None) -> None:
        self.socket = sock
        sock.settimeout(None)  # blocking; waits are bounded with poll below
        self.stall_s = stall_seconds() if stall_s is None else stall_s
        self.broken: str | None = None  # why nothing more may be written
        self.read_deadline: float | None = None  # monotonic time; set while draining
        self._write_lock = threading.Lock()

    # -- reading ---------------------------------------------------------
    def _wait_readable(self) -> None:
        if self.read_deadline is None:
            return
        left = self.read_deadline - time.monotonic()
        poller = select.poll()
        poller.register(self.socket.fileno(), select.POLLIN)
        if left <= 0 or not poller.poll(left * 1000):
            raise PeerStalled("the peer sent nothing more while this gadget waited for the end of its stream")

    def read(self, nbytes: int) -> bytes:
        data = bytearray()
        while len(data) < nbytes:
            self._wait_readable()
            try:
                chunk = self.socket.recv(nbytes - len(data))
            except (ConnectionResetError, OSError) as exc:
                raise PeerClosed(f"connection lost while reading: {exc}") from None
            if not chunk:
                raise PeerClosed(f"the peer closed the connection ({len(data)} of {nbytes} bytes read)")
            data += chunk
        return bytes(data)

    # -- writing ---------------------------------------------------------
    def write(self, data: Any) -> None:
        with self._write_lock:
            if self.broken:
                raise PeerGone(self.broken)
            view = memoryview(bytes(data) if not isinstance(data, (bytes, bytearray)) else data)
            poller = select.poll()
            poller.register(self.socket.fileno(), select.POLLOUT)
            while view:
                if not poller.poll(self.stall_s * 1000):
                    self.broken = f"the peer read nothing for {self.stall_s:g} s"
                    raise PeerStalled(self.broken)
                try:
                    sent = self.socket.send(view, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError as exc:  # EPIPE, ECONNRESET: the peer is gone
                    self.broken = f"connection lost while writing: {exc}"
                    raise PeerClosed(self.broken) from None
                view = view[sent:]

    def close(self) -> None:
        """Send CLOSE (unless the link is broken), then close the socket."""
        try:
            if not self.broken:
                self.write(wire.message_id(wire.CLOSE))
        except PeerGone:
            pass
        finally:
            self.socket.close()


def harden(connection: Any) -> bool:
    """Give a ``gadgetron.external.Connection`` a :class:`SafeLink` and a locked ``send``.

    Returns False (and changes nothing) for connections that are not
    gadgetron's, such as the embedded host's. The lock keeps a message whole
    when a gadget's worker thread and its main thread (reporting an error)
    send at once.
    """
    if getattr(connection, "hardened", False):
        return True
    link = getattr(connection, "socket", None)
    if not isinstance(link, SafeLink):
        sock = getattr(link, "socket", None)
        if not isinstance(sock, socket.socket):
            return False
        connection.socket = SafeLink(sock)
    lock = threading.RLock()
    unlocked_send = connection.send

    def send(item: Any) -> Any:
        with lock:
            return unlocked_send(item)

    connection.send = send
    connection.hardened = True
    return True


def drain(connection: Any, idle_s: float = DEFAULT_DRAIN_IDLE_S) -> int:
    """Read and discard ``connection``'s input until the peer ends it; returns the items discarded.

    Gives up when the peer sends nothing for ``idle_s`` seconds or closes
    the connection, so a failed gadget never outlives its session.
    """
    link = getattr(connection, "socket", None)
    if not isinstance(link, SafeLink):
        return 0
    connection.filters = []  # a filter would send items back to the peer
    count = 0
    try:
        while True:
            link.read_deadline = time.monotonic() + idle_s
            try:
                connection.next()
            except StopIteration:
                break
            count += 1
    except PeerGone as exc:
        log.warning("stopped draining after %d items: %s", count, exc)
    finally:
        link.read_deadline = None
    return count


__all__ = ["PeerGone", "PeerClosed", "PeerStalled", "SafeLink", "harden", "drain", "stall_seconds"]
