"""Readouts into k-space frames.

A frame is the k-space of one image: all readouts sharing (slice,
contrast, set, time), where time is the cardiac phase for gated cine or
the repetition for real-time imaging. Frames travel between gadgets as
Gadgetron's own ``ReconData`` (one ``ReconBit`` per frame, data laid out
``[RO, E1, E2, CHA, N, S, LOC]`` with one acquisition header per line and
the parallel-calibration lines as the reference buffer), so the same chain
also works when each gadget runs in its own Gadgetron external process and
frames must cross a socket.

:class:`Frame` is the convenient NumPy view the reconstruction gadgets use.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

import ismrmrd
import numpy as np
from gadgetron.types.recon_data import ReconBit, ReconBuffer, ReconData, SamplingDescription

from . import host_settings, properties
from .errors import reports_errors
from .header import time_dimension
from .header_checks import require_supported
from .samples import NonFiniteCounter, mark_late

log = logging.getLogger(__name__)

FrameKey = tuple[int, int, int, int]  # slice, contrast, set, time

_CALIBRATION_FLAGS = (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
# A readout carrying any of these is the last of its frame: each counter in the
# frame key (slice, contrast, time) ends there. Scanners and the
# python-ismrmrd-server generator flag a frame's end differently (last in
# slice, in repetition, in phase, in contrast), so every one closes it.
# LAST_IN_SET/AVERAGE/SEGMENT/ENCODE_STEP1 are not among them: sets, averages
# and segments interleave inside one frame, so they end a loop, not a frame.
_FRAME_END_FLAGS = (ismrmrd.ACQ_LAST_IN_SLICE, ismrmrd.ACQ_LAST_IN_PHASE, ismrmrd.ACQ_LAST_IN_REPETITION,
                    ismrmrd.ACQ_LAST_IN_CONTRAST)
_SKIPPED_FLAGS = (ismrmrd.ACQ_IS_NOISE_MEASUREMENT, ismrmrd.ACQ_IS_NAVIGATION_DATA, ismrmrd.ACQ_IS_PHASECORR_DATA,
                  ismrmrd.ACQ_IS_DUMMYSCAN_DATA, ismrmrd.ACQ_IS_RTFEEDBACK_DATA, ismrmrd.ACQ_IS_HPFEEDBACK_DATA)


@dataclass
class Frame:
    """One frame's k-space and what the scanner said about it.

    ``kspace``: ``(coils, ny, nx)`` complex64, zeros where not sampled;
    ``sampled``: ``(ny,)`` bool; ``calibration``: ``(coils, ny, nx)`` of the
    parallel-calibration lines or None; ``headers``: ``(ny,)`` object array
    of ``ismrmrd.AcquisitionHeader`` (blank where not sampled).
    """

    kspace: np.ndarray
    sampled: np.ndarray
    headers: np.ndarray
    sampling: SamplingDescription
    calibration: np.ndarray | None = None
    calibration_headers: np.ndarray | None = None

    @property
    def calibration_sampled(self) -> np.ndarray | None:
        if self.calibration_headers is None:
            return None
        return np.array([h.number_of_samples > 0 for h in self.calibration_headers], dtype=bool)

    @property
    def reference_header(self) -> ismrmrd.AcquisitionHeader:
        """The header of the sampled line nearest the k-space centre (timing, position, counters)."""
        lines = np.flatnonzero(self.sampled)
        if lines.size == 0:
            raise ValueError("frame has no sampled lines")
        centre = self.sampling.sampling_limits[1].center
        return self.headers[lines[np.argmin(np.abs(lines - centre))]]

    def key(self, time_dim: str) -> FrameKey:
        """(slice, contrast, set, time) with time the phase or repetition counter."""
        idx = self.reference_header.idx
        return (idx.slice, idx.contrast, idx.set, idx.phase if time_dim == "phase" else idx.repetition)

    @property
    def acceleration(self) -> float:
        """Phase-encode lines in the encoding range over lines sampled."""
        lim = self.sampling.sampling_limits[1]
        span = int(lim.max) - int(lim.min) + 1
        return float(span) / max(1, int(self.sampled.sum()))

    def last_arrival_header(self) -> ismrmrd.AcquisitionHeader:
        """Header of the line acquired last (largest time stamp)."""
        lines = np.flatnonzero(self.sampled)
        return self.headers[max(lines, key=lambda i: self.headers[i].acquisition_time_stamp)]


def _buffer(kspace: np.ndarray, headers: np.ndarray, sampling: SamplingDescription) -> ReconBuffer:
    coils, ny, nx = kspace.shape
    data = np.transpose(kspace, (2, 1, 0)).reshape(nx, ny, 1, coils, 1, 1, 1)
    return ReconBuffer(np.asfortranarray(data.astype(np.complex64)), None, None,
                       headers.reshape(ny, 1, 1, 1, 1), sampling)


def frame_to_recon_data(frame: Frame) -> ReconData:
    ref = None
    if frame.calibration is not None:
        ref = _buffer(frame.calibration, frame.calibration_headers, frame.sampling)
    return ReconData([ReconBit(_buffer(frame.kspace, frame.headers, frame.sampling), ref)])


def _unbuffer(buffer: ReconBuffer) -> Iterator[tuple[tuple[int, int, int], np.ndarray, np.ndarray, np.ndarray]]:
    """Each 2-D frame of a buffer: ``((n, s, loc), kspace, headers, sampled)``.

    Our accumulator puts one frame in a buffer; Gadgetron's C++
    ``BucketToBufferGadget`` stacks frames along N (e.g. phases), S and LOC,
    so both kinds of buffer are read here.
    """
    data = np.asarray(buffer.data)
    if data.ndim != 7:
        raise ValueError(f"ReconBuffer data must be [RO, E1, E2, CHA, N, S, LOC], got shape {data.shape}")
    nx, ny, ne2, coils, nn, ns, nloc = data.shape
    if ne2 != 1:
        raise ValueError(f"3-D encoding (E2 = {ne2}) is not supported by the 2-D cine gadgets")
    headers = np.asarray(buffer.headers, dtype=object).reshape(ny, 1, nn, ns, nloc)
    for loc in range(nloc):
        for s in range(ns):
            for n in range(nn):
                kspace = np.ascontiguousarray(np.transpose(data[:, :, 0, :, n, s, loc], (2, 1, 0))).astype(np.complex64)
                h = headers[:, 0, n, s, loc]
                sampled = np.array([x.number_of_samples > 0 for x in h], dtype=bool)
                yield (n, s, loc), kspace, h, sampled


def frames_from(item: Any) -> Iterator[Frame]:
    """Every 2-D frame in a ``ReconData``: one per bit and N/S/LOC index."""
    for bit in item:
        refs = {}
        if bit.ref is not None:
            refs = {index: (k, h) for index, k, h, _ in _unbuffer(bit.ref)}
        for index, kspace, headers, sampled in _unbuffer(bit.data):
            # A reference buffer usually has a single N; use the matching one if any.
            ref = refs.get(index) or refs.get((0,) + index[1:]) or (None, None)
            yield Frame(kspace, sampled, headers, bit.data.sampling, ref[0], ref[1])


def sampling_description(header: Any, nx: int, ny: int) -> SamplingDescription:
    enc = header.encoding[0]
    s = SamplingDescription()
    efov, rfov = enc.encodedSpace.fieldOfView_mm, enc.reconSpace.fieldOfView_mm
    rmat = enc.reconSpace.matrixSize
    # The readout may already be cropped to the recon FOV: describe what
    # this buffer holds, not what the scanner encoded.
    ratio = nx / float(enc.encodedSpace.matrixSize.x)
    s.encoded_FOV[:] = (efov.x * ratio, efov.y, efov.z)
    s.recon_FOV[:] = (rfov.x, rfov.y, rfov.z)
    s.encoded_matrix[:] = (nx, ny, 1)
    s.recon_matrix[:] = (rmat.x, rmat.y, 1)
    e1 = enc.encodingLimits.kspace_encoding_step_1
    s.sampling_limits[0].min, s.sampling_limits[0].center, s.sampling_limits[0].max = 0, nx // 2, nx - 1
    if e1 is not None and e1.maximum is not None:
        s.sampling_limits[1].min = int(e1.minimum or 0)
        s.sampling_limits[1].center = int(e1.center if e1.center is not None else ny // 2)
        s.sampling_limits[1].max = int(e1.maximum)
    else:
        s.sampling_limits[1].min, s.sampling_limits[1].center, s.sampling_limits[1].max = 0, ny // 2, ny - 1
    return s


class _OpenFrame:
    __slots__ = ("kspace", "headers", "sampled", "calibration", "calibration_headers")

    def __init__(self, coils: int, ny: int, nx: int) -> None:
        self.kspace = np.zeros((coils, ny, nx), np.complex64)
        self.headers = np.empty(ny, dtype=object)
        self.sampled = np.zeros(ny, bool)
        self.calibration: np.ndarray | None = None
        self.calibration_headers: np.ndarray | None = None


def _filled(headers: np.ndarray) -> np.ndarray:
    """Blank headers where no line arrived (Gadgetron's buffers look the same)."""
    out = np.empty(headers.shape, dtype=object)
    for i, h in enumerate(headers):
        out[i] = h if h is not None else ismrmrd.AcquisitionHeader()
    return out


@dataclass
class FrameAccumulator:
    """Collects readouts into frames; ``add`` returns the frames it completed.

    Triggers: any last-in flag of the frame key's counters (slice, phase,
    repetition, contrast: ``_FRAME_END_FLAGS``) closes the readout's own
    frame; with ``trigger_on_counter`` a change of the time counter within a
    (slice, contrast, set) in real-time mode, and a change of the contrast
    from one readout to the next, close the frames left behind (a reference
    contrast acquired before its target completes before the target starts,
    even when the scanner flagged nothing); and the end of the stream
    (``flush``). Contrasts interleaved line by line (multi-echo) need
    ``trigger_on_counter`` false and rely on the flags.
    """

    header: Any
    time_dim: str = "phase"
    trigger_on_counter: bool = True
    open: dict = field(default_factory=dict)
    # Keys of completed frames, oldest first, to recognise late readouts.
    # Bounded so a real-time scan of any length keeps flat memory: a readout
    # arriving thousands of frames late is not a scanner's behaviour.
    done: "OrderedDict[FrameKey, None]" = field(default_factory=OrderedDict)
    max_done: int = 4096
    shape: tuple[int, int] | None = None  # (coils, nx) fixed by the first readout
    dropped_late: int = 0
    late_by_group: dict = field(default_factory=dict)  # (slice, contrast, set) -> late readouts not yet reported
    count: int = 0
    # Frames open at once: readouts that never close a frame, each under a new
    # key, would otherwise grow memory without bound. Beyond it the oldest
    # open frame is closed (it still becomes an image: nothing is lost).
    max_open: int = 64
    closed_early: int = 0

    def __post_init__(self) -> None:
        enc = self.header.encoding[0]
        e1 = enc.encodingLimits.kspace_encoding_step_1
        limit_ny = int(e1.maximum) + 1 if e1 is not None and e1.maximum is not None else 0
        self.ny = max(int(enc.encodedSpace.matrixSize.y), limit_ny)
        self.last_time: dict[tuple[int, int, int], int] = {}
        self.last_contrast: int | None = None
        channels = getattr(getattr(self.header, "acquisitionSystemInformation", None), "receiverChannels", None)
        self.header_channels = int(channels) if channels else None

    def key_of(self, acq: ismrmrd.Acquisition) -> FrameKey:
        idx = acq.idx
        t = idx.phase if self.time_dim == "phase" else idx.repetition
        return (idx.slice, idx.contrast, idx.set, t)

    def _check(self, acq: ismrmrd.Acquisition) -> None:
        self.count += 1
        shape = (acq.active_channels, acq.number_of_samples)
        if self.shape is None:
            if self.header_channels and acq.active_channels != self.header_channels:
                raise ValueError(f"readout {self.count} has {acq.active_channels} channels but the header declares "
                                 f"{self.header_channels} receiver channels")
            self.shape = shape
        elif shape != self.shape:
            raise ValueError(f"readout {self.count} (slice {acq.idx.slice}, line {acq.idx.kspace_encode_step_1}) has "
                             f"{shape[1]} samples x {shape[0]} channels; this stream's readouts have "
                             f"{self.shape[1]} x {self.shape[0]}")
        line = acq.idx.kspace_encode_step_1
        if line >= self.ny:
            raise ValueError(f"readout {self.count} is phase-encode line {line}, outside the encoded matrix of {self.ny} lines")

    def add(self, acq: ismrmrd.Acquisition) -> list[Frame]:
        self._check(acq)
        key = self.key_of(acq)
        completed: list[Frame] = []
        if key in self.done:
            # A late or duplicated readout of a frame already reconstructed:
            # reopening it would make a second image of the same frame.
            self.dropped_late += 1
            group = key[:3]
            if len(self.late_by_group) < self.max_open or group in self.late_by_group:
                self.late_by_group[group] = self.late_by_group.get(group, 0) + 1
            log.warning("dropping a readout of frame %s which was already completed", key)
            return completed
        group = key[:3]
        if self.trigger_on_counter and self.time_dim == "repetition":
            previous = self.last_time.get(group)
            if previous is not None and previous != key[3]:
                old = group + (previous,)
                if old in self.open:
                    completed.append(self._close(old))
            self.last_time[group] = key[3]
        if self.trigger_on_counter:
            contrast = key[1]
            if self.last_contrast is not None and contrast != self.last_contrast:
                completed.extend(self._close(k) for k in sorted(self.open) if k[1] == self.last_contrast)
            self.last_contrast = contrast
        frame = self.open.get(key)
        if frame is None:
            completed.extend(self._make_room())
            coils, nx = self.shape
            frame = self.open[key] = _OpenFrame(coils, self.ny, nx)
        line = acq.idx.kspace_encode_step_1
        head = ismrmrd.AcquisitionHeader.from_buffer_copy(acq.getHead())
        if any(acq.is_flag_set(f) for f in _CALIBRATION_FLAGS):
            if frame.calibration is None:
                frame.calibration = np.zeros_like(frame.kspace)
                frame.calibration_headers = np.empty(self.ny, dtype=object)
            frame.calibration[:, line] = acq.data
            frame.calibration_headers[line] = head
        if not acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION):
            frame.kspace[:, line] = acq.data
            frame.sampled[line] = True
            frame.headers[line] = head
        if any(acq.is_flag_set(f) for f in _FRAME_END_FLAGS):
            completed.append(self._close(key))
        if acq.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT):
            completed.extend(self.flush())
        return completed

    def _make_room(self) -> list[Frame]:
        """Close the oldest open frames so one more fits under ``max_open``."""
        out = []
        while self.open and len(self.open) >= max(1, self.max_open):
            oldest = next(iter(self.open))
            if not self.closed_early:
                log.warning("%d frames open at once: closing the oldest, %s, before its last readout",
                            len(self.open), oldest)
            self.closed_early += 1
            out.append(self._close(oldest))
        return out

    def _close(self, key: FrameKey) -> Frame:
        frame = self.open.pop(key)
        self.done[key] = None
        while len(self.done) > self.max_done:
            self.done.popitem(last=False)
        headers = _filled(frame.headers)
        calib_headers = _filled(frame.calibration_headers) if frame.calibration_headers is not None else None
        late = self.late_by_group.pop(key[:3], 0)
        if late:  # readouts of earlier frames of this slice that came after their image: say so on this one
            mark_late(headers, late)
        if not frame.sampled.any() and frame.calibration is not None:
            # Calibration-only frame: its lines are the only data there is.
            frame.kspace, headers = frame.calibration.copy(), calib_headers
            frame.sampled = np.array([h.number_of_samples > 0 for h in headers], dtype=bool)
        sampling = sampling_description(self.header, frame.kspace.shape[2], self.ny)
        return Frame(frame.kspace, frame.sampled, headers, sampling, frame.calibration, calib_headers)

    def flush(self) -> list[Frame]:
        """Every frame still open, in order of key: the stream has ended."""
        return [self._close(key) for key in sorted(self.open)]


@reports_errors
def accumulate_frames(connection: Any) -> None:
    """Gadget: acquisitions in, one ``ReconData`` per completed frame out.

    Properties: ``time_dimension`` ("phase" or "repetition"; default from
    the header's encoding limits), ``trigger_on_counter`` (default true).
    """
    require_supported(connection.header)
    cfg = connection.config
    settings = host_settings.for_connection(connection)
    host_settings.check_header(connection.header, settings)
    acc = FrameAccumulator(
        connection.header,
        time_dim=time_dimension(connection.header, properties.get(cfg, "time_dimension", "")),
        trigger_on_counter=properties.get(cfg, "trigger_on_counter", True),
        max_open=settings.max_open_frames,
    )
    log.info("accumulating frames over %s, %d phase-encode lines", acc.time_dim, acc.ny)
    nonfinite = NonFiniteCounter("accumulate_frames")  # also when no earlier gadget did it
    try:
        for item in connection:
            if not isinstance(item, ismrmrd.Acquisition):
                connection.send(item)
                continue
            if any(item.is_flag_set(f) for f in _SKIPPED_FLAGS):
                continue
            host_settings.check_readout(item.number_of_samples, item.active_channels, connection.header, settings)
            nonfinite(item)
            for frame in acc.add(item):
                connection.send(frame_to_recon_data(frame))
    finally:
        # Also on failure: every frame that received data still goes on to
        # become an image before the error is reported.
        for frame in acc.flush():
            connection.send(frame_to_recon_data(frame))
