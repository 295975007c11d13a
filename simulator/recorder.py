"""A minimal ISMRMRD stream host that records what a scanner sends.

For checking the simulator's traffic on the wire (tests, debugging a
stream) without the real reconstruction host. Each connection's messages
are parsed with ``ismrmrd.ProtocolDeserializer`` and kept with their
arrival times. Optionally it answers like a conventional reconstruction:
``answer="zero-filled"`` sends, for every frame that completes (a readout
flagged LAST_IN_SLICE), the root-sum-of-squares zero-filled image on the
header's recon matrix; that is a real (if naive) reconstruction, not a
replay of the truth. On a malformed stream it answers TEXT with the reason,
then CLOSE, as docs/design.md asks of any host, and keeps serving.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field

import ismrmrd
import ismrmrd.xsd
import numpy as np
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolDeserializer, ProtocolSerializer

from models.coils import rss
from models.fft import ifft2c

from .acquire import frame_key

log = logging.getLogger(__name__)


@dataclass
class SessionRecord:
    """Everything one connection delivered, in arrival order."""

    config: str | None = None
    config_kind: str | None = None  # "file" or "text"
    header: ismrmrd.xsd.ismrmrdHeader | None = None
    acquisitions: list[ismrmrd.Acquisition] = field(default_factory=list)
    arrival_times: list[float] = field(default_factory=list)
    other: list[object] = field(default_factory=list)
    close_received: bool = False
    error: str | None = None
    images_sent: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class _Writer:
    def __init__(self, sock: socket.socket):
        self.sock = sock

    def write(self, b: bytes) -> None:
        self.sock.sendall(b)

    def flush(self) -> None:
        pass


class RecordingHost:
    """Threaded TCP server on ``host:port`` (port 0 picks a free one); use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, answer: str = "none", timeout: float = 30.0):
        if answer not in ("none", "zero-filled"):
            raise ValueError("answer must be 'none' or 'zero-filled'")
        self.answer = answer
        self.timeout = timeout
        self._srv = socket.create_server((host, port))
        self._srv.settimeout(0.2)
        self.host, self.port = self._srv.getsockname()[:2]
        self.sessions: list[SessionRecord] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="recording-host", daemon=True)

    def __enter__(self) -> "RecordingHost":
        self._acceptor.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._acceptor.join(timeout=2.0)
        self._srv.close()
        for t in self._threads:
            t.join(timeout=2.0)

    def wait_sessions(self, n: int, timeout: float = 10.0) -> list[SessionRecord]:
        """Block until ``n`` sessions have finished (or ``timeout``); returns the sessions."""
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            done = [s for s in self.sessions if s.done.is_set()]
            if len(done) >= n:
                return done
            time.sleep(0.01)
        return [s for s in self.sessions if s.done.is_set()]

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except (socket.timeout, OSError):
                continue
            rec = SessionRecord()
            self.sessions.append(rec)
            t = threading.Thread(target=self._serve, args=(conn, rec), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, rec: SessionRecord) -> None:
        conn.settimeout(self.timeout)
        out = ProtocolSerializer(_Writer(conn))
        frames: dict[tuple[int, int, int], np.ndarray] = {}
        try:
            reader = conn.makefile("rb")
            for item in ProtocolDeserializer(reader).deserialize():
                now = time.perf_counter()
                if isinstance(item, ConfigFile):
                    rec.config, rec.config_kind = str(item), "file"
                elif isinstance(item, ConfigText):
                    rec.config, rec.config_kind = str(item).rstrip("\0"), "text"
                elif isinstance(item, ismrmrd.xsd.ismrmrdHeader):
                    rec.header = item
                elif isinstance(item, ismrmrd.Acquisition):
                    rec.acquisitions.append(item)
                    rec.arrival_times.append(now)
                    if self.answer == "zero-filled":
                        self._accumulate(item, rec, frames, out)
                else:
                    rec.other.append(item)
            rec.close_received = True
            out.close()
        except Exception as exc:  # a host must answer every failure, never die
            rec.error = f"{type(exc).__name__}: {exc}"
            try:
                out.serialize(f"recording host: stream failed: {rec.error}")
                out.close()
            except OSError:
                pass
        finally:
            conn.close()
            rec.done.set()

    def _accumulate(self, acq: ismrmrd.Acquisition, rec: SessionRecord, frames: dict, out: ProtocolSerializer) -> None:
        if rec.header is None:
            raise ValueError("acquisition before header")
        if acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION):
            return
        enc = rec.header.encoding[0]
        ny = enc.encodedSpace.matrixSize.y
        key = frame_key(acq)
        buf = frames.get(key)
        if buf is None:
            buf = frames[key] = np.zeros((acq.active_channels, ny, acq.number_of_samples), dtype=np.complex64)
        buf[:, acq.idx.kspace_encode_step_1, :] = acq.data
        if not acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
            return
        kspace = frames.pop(key)
        coil = ifft2c(kspace)
        nx = enc.reconSpace.matrixSize.x
        c0 = coil.shape[-1] // 2 - nx // 2
        img = rss(coil[..., c0:c0 + nx]).astype(np.float32)
        image = ismrmrd.Image.from_array(img, acquisition=acq)
        image.image_type = ismrmrd.IMTYPE_MAGNITUDE
        image.image_index = rec.images_sent + 1
        image.image_series_index = 0
        image.field_of_view[:] = (enc.reconSpace.fieldOfView_mm.x, enc.reconSpace.fieldOfView_mm.y, enc.reconSpace.fieldOfView_mm.z)
        image.meta = ismrmrd.Meta({"ImageComment": "recording host zero-filled RSS"})
        out.serialize(image)
        rec.images_sent += 1


__all__ = ["RecordingHost", "SessionRecord"]
