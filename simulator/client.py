"""The scanner side of an ISMRMRD stream session.

:func:`run_session` connects to any ISMRMRD stream host (ours, or a real
Gadgetron on port 9002), sends the configuration, the header and the
readouts, then CLOSE, while a second thread receives what comes back
(IMAGE, TEXT, CLOSE and Gadgetron's ERROR message) and time-stamps every
image on arrival. Every socket operation has a timeout, so a silent or
dead host never hangs the simulator.

Messages are framed with ``ismrmrd.ProtocolSerializer`` /
``ProtocolDeserializer``; only two things are written by hand: CONFIG_TEXT
with a trailing NUL (as python-ismrmrd-server's client sends it) and the
wire faults of :mod:`simulator.faults`. Gadgetron's ERROR (id 8: uint64
length + text) is unknown to ismrmrd's deserializer, so the receiver peeks
each message id itself.
"""
from __future__ import annotations

import io
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import ismrmrd
import ismrmrd.xsd
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolDeserializer, ProtocolSerializer

from gadgets import wire

from .acquire import TICK_MS, frame_key
from .faults import StreamFault, corrupt_xml

log = logging.getLogger(__name__)

# Readouts that belong to no image frame: their send time is no frame's.
_NOT_IMAGING = (ismrmrd.ACQ_IS_NOISE_MEASUREMENT, ismrmrd.ACQ_IS_NAVIGATION_DATA, ismrmrd.ACQ_IS_PHASECORR_DATA,
                ismrmrd.ACQ_IS_DUMMYSCAN_DATA)
PACING_MODES = ("asap", "timestamps", "frame")


@dataclass
class Pacing:
    """How fast readouts go out.

    ``"asap"``: as fast as the socket takes them.
    ``"timestamps"``: in real time from each readout's
    ``acquisition_time_stamp`` (2.5 ms ticks), divided by ``speed``.
    ``"frame"``: each block of readouts sharing one (slice, contrast, frame)
    in send order (one frame in real time, one cardiac phase's segment when
    gated) starts ``frame_ms`` after the previous block; readouts inside a
    block go out back to back.
    Deadlines are absolute from the session start, so pacing errors do not
    accumulate: the duration holds over the run, not per message.
    """

    mode: str = "asap"
    frame_ms: float | None = None
    speed: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in PACING_MODES:
            raise ValueError(f"pacing mode must be one of {PACING_MODES}, got {self.mode!r}")
        if self.mode == "frame" and not (self.frame_ms and self.frame_ms > 0):
            raise ValueError("frame pacing needs frame_ms > 0")

    @classmethod
    def per_frame(cls, frame_ms: float) -> "Pacing":
        return cls("frame", frame_ms=frame_ms)


class _Pacer:
    """Sleeps until each readout's deadline; records when each block started."""

    def __init__(self, pacing: Pacing | None):
        self.pacing = pacing or Pacing()
        self.t0: float | None = None
        self.ts0: int | None = None
        self.block = -1
        self.prev_key: tuple | None = None
        self.block_starts: list[float] = []

    def wait(self, item: object) -> None:
        if not isinstance(item, ismrmrd.Acquisition):
            return
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now
        key = frame_key(item)
        new_block = key != self.prev_key
        self.prev_key = key
        deadline = None
        mode = self.pacing.mode
        if mode == "timestamps":
            ts = int(item.acquisition_time_stamp)
            if self.ts0 is None:
                self.ts0 = ts
            deadline = self.t0 + (ts - self.ts0) * TICK_MS / 1000.0 / self.pacing.speed
        elif mode == "frame" and new_block:
            deadline = self.t0 + (self.block + 1) * self.pacing.frame_ms / 1000.0
        if deadline is not None:
            delay = deadline - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        if new_block:
            self.block += 1
            self.block_starts.append(time.perf_counter())

    def measured_block_ms(self) -> float | None:
        """Mean interval between block starts over the whole run, in ms."""
        b = self.block_starts
        if len(b) < 2:
            return None
        return (b[-1] - b[0]) / (len(b) - 1) * 1000.0


@dataclass
class StreamResult:
    """What one session sent and received.

    ``images``/``image_times``: received images and ``time.perf_counter()``
    at the arrival of each. ``texts``: TEXT messages (hosts report errors this
    way). ``errors``: Gadgetron ERROR (id 8) messages. ``closed``: the host
    sent CLOSE. ``send_times``: ``(slice, contrast, frame)`` ->
    ``perf_counter()`` when that frame's last readout (in send order) had
    been written to the socket.
    """

    images: list[ismrmrd.Image] = field(default_factory=list)
    image_times: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    closed: bool = False
    send_times: dict[tuple[int, int, int], float] = field(default_factory=dict)
    other: list[object] = field(default_factory=list)
    send_error: str | None = None
    receive_error: str | None = None
    timed_out: bool = False
    interrupted: bool = False
    readouts_sent: int = 0
    bytes_sent: int = 0
    t_start: float = 0.0
    t_send_done: float = 0.0
    t_end: float = 0.0
    paced_block_ms: float | None = None
    stopped_early: bool = False


class _PushbackReader:
    """A binary reader with a one-shot pushback, so a peeked message id can be handed on."""

    def __init__(self, raw):
        self.raw = raw
        self.pending = b""

    def read(self, n: int = -1) -> bytes:
        if self.pending:
            head, self.pending = self.pending[:n], self.pending[n:]
            if len(head) < n:
                head += self.raw.read(n - len(head))
            return head
        return self.raw.read(n)


def _read_exactly(reader, n: int) -> bytes:
    data = reader.read(n)
    if data is None or len(data) < n:
        raise EOFError(f"stream ended inside a message ({0 if data is None else len(data)} of {n} bytes)")
    return data


def _receive(sock: socket.socket, result: StreamResult, on_image: Callable[[ismrmrd.Image], None] | None) -> None:
    reader = _PushbackReader(sock.makefile("rb"))
    try:
        while True:
            head = reader.read(2)
            if not head:
                log.info("host closed the connection without CLOSE")
                return
            if len(head) < 2:
                raise EOFError("stream ended inside a message id")
            (msg_id,) = wire.MESSAGE_ID.unpack(head)
            if msg_id == wire.ERROR:
                (length,) = struct.unpack("<Q", _read_exactly(reader, 8))
                result.errors.append(_read_exactly(reader, length).decode("utf-8", "replace").rstrip("\0"))
                continue
            if msg_id == wire.CLOSE:
                result.closed = True
                return
            reader.pending = head
            item = next(ProtocolDeserializer(reader).deserialize())
            if isinstance(item, ismrmrd.Image):
                result.image_times.append(time.perf_counter())
                result.images.append(item)
                if on_image is not None:
                    on_image(item)
            elif isinstance(item, str):
                result.texts.append(item.rstrip("\0"))
            else:
                result.other.append(item)
    except (OSError, EOFError, ValueError, StopIteration) as exc:
        result.receive_error = f"{type(exc).__name__}: {exc}"


class Interrupt:
    """A person's Ctrl-C, seen by every session of a replay.

    ``stop()``: send no more readouts (each session then sends CLOSE and
    keeps receiving the images of what it had sent). ``abort()``: stop
    waiting too (the sockets are shut, each session returns what it has).
    """

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def stop(self) -> None:
        self.stopped.set()

    def abort(self) -> None:
        self.stopped.set()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _message_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    ProtocolSerializer(buf).serialize(obj)
    return buf.getvalue()


def config_text_bytes(text: str, trailing_nul: bool = False) -> bytes:
    """CONFIG_TEXT message; with ``trailing_nul`` the text carries a NUL the length counts."""
    if not trailing_nul:
        return _message_bytes(ConfigText(text))
    payload = text.encode("utf-8") + b"\0"
    return wire.length_prefixed(wire.CONFIG_TEXT, payload)


def run_session(
    host: str,
    port: int,
    *,
    header: ismrmrd.xsd.ismrmrdHeader | str,
    items: Iterable,
    config_file: str | None = None,
    config_text: str | None = None,
    trailing_nul: bool = False,
    pacing: Pacing | None = None,
    timeout: float = 120.0,
    fault: StreamFault | None = None,
    on_image: Callable[[ismrmrd.Image], None] | None = None,
    on_sent: Callable[[object], None] | None = None,
    interrupt: Interrupt | None = None,
) -> StreamResult:
    """Play one scan to a stream host and collect its answer.

    Sends CONFIG_FILE (``config_file``, a pipeline name) or CONFIG_TEXT
    (``config_text``, pipeline XML), the HEADER (a parsed header, or a
    file's own XML text sent byte for byte), every item of ``items``
    (Acquisition, Waveform or Image) paced by ``pacing``, then CLOSE, while
    a receiver thread collects the answer until the host's CLOSE, end of
    stream, or ``timeout`` seconds of silence. ``fault`` injects a wire
    fault (:class:`simulator.faults.StreamFault`). ``on_image`` is called
    (on the receiver thread) for every image, ``on_sent`` after each item.
    ``interrupt`` (:class:`Interrupt`) stops the sending early (``result.interrupted``).
    """
    if (config_file is None) == (config_text is None):
        raise ValueError("give exactly one of config_file and config_text")
    result = StreamResult()
    pacer = _Pacer(pacing)
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if interrupt is not None:
        interrupt.register(sock)
    receiver = threading.Thread(target=_receive, args=(sock, result, on_image), name="stream-receiver", daemon=True)
    result.t_start = time.perf_counter()
    receiver.start()
    cut = False

    def send(data: bytes) -> None:
        sock.sendall(data)
        result.bytes_sent += len(data)

    try:
        send(_message_bytes(ConfigFile(config_file)) if config_file is not None else config_text_bytes(config_text, trailing_nul))
        xml = header if isinstance(header, str) else None
        if fault is not None and fault.kind == "corrupt-header":
            bad = corrupt_xml(xml if xml is not None else header.toXML())
            send(wire.length_prefixed(wire.HEADER, bad))
        elif xml is not None:
            raw = xml.encode("utf-8")
            send(wire.length_prefixed(wire.HEADER, raw))
        else:
            send(_message_bytes(header))
        for i, item in enumerate(items):
            if result.closed or result.errors:
                # The host has ended the session (a refused pipeline, a failed
                # gadget): the rest of the scan would only fill a dead socket.
                result.stopped_early = True
                break
            if interrupt is not None and interrupt.stopped.is_set():
                result.interrupted = True
                break
            if fault is not None and fault.kind == "cut" and i == fault.at:
                cut = True
                break
            pacer.wait(item)
            data = _message_bytes(item)
            if fault is not None and fault.kind == "truncate" and i == fault.at:
                send(data[: max(1, int(len(data) * fault.fraction))])
                cut = True
                break
            send(data)
            if isinstance(item, ismrmrd.Acquisition):
                result.readouts_sent += 1
                if not any(item.is_flag_set(f) for f in _NOT_IMAGING):
                    result.send_times[frame_key(item)] = time.perf_counter()
            if on_sent is not None:
                on_sent(item)
        if cut:
            if fault is not None and fault.kind == "cut" and fault.reset:
                # SO_LINGER 0: close() sends RST, like a scanner losing the link.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                result.t_send_done = time.perf_counter()
                try:
                    sock.shutdown(socket.SHUT_RD)  # wakes the receiver; no FIN goes out
                except OSError:
                    pass
                sock.close()
                receiver.join(timeout=5.0)
                result.t_end = time.perf_counter()
                result.paced_block_ms = pacer.measured_block_ms()
                return result
            sock.shutdown(socket.SHUT_WR)
        else:
            send(wire.message_id(wire.CLOSE))
    except OSError as exc:
        result.send_error = f"{type(exc).__name__}: {exc}"
        log.warning("sending stopped: %s", result.send_error)
    result.t_send_done = time.perf_counter()
    result.paced_block_ms = pacer.measured_block_ms()
    receiver.join(timeout=timeout)
    if receiver.is_alive():
        result.timed_out = True
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        receiver.join(timeout=5.0)
    sock.close()
    result.t_end = time.perf_counter()
    return result


def run_sessions_at_once(host: str, port: int, scanners: int, **session) -> tuple[list[StreamResult], float]:
    """``scanners`` copies of :func:`run_session` (same keyword arguments) at the same time, each on its
    own thread, like several scanners sharing one host; returns their results and the wall time."""
    results: list[StreamResult | None] = [None] * scanners

    def one(i: int) -> None:
        results[i] = run_session(host, port, **session)

    threads = [threading.Thread(target=one, args=(i,), name=f"scanner-{i}") for i in range(scanners)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


__all__ = ["Pacing", "StreamResult", "Interrupt", "run_session", "run_sessions_at_once", "config_text_bytes"]
