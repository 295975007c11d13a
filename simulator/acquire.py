"""Turn a :class:`~simulator.scan.Scan` into the readouts a scanner would send.

Two steps: :func:`schedule` decides which lines go out, in which order and
at what (nominal) time; :func:`acquisitions` builds one
``ismrmrd.Acquisition`` per scheduled line with counters, flags, geometry
and time stamps. Only sampled lines are sent, as on an accelerated scanner.

Orders
------
``"realtime"``
    frame after frame; within a frame the slices are interleaved (each
    (slice, frame) block takes ``frame_ms``).
``"slice"``
    real time, but slice after slice (all frames of slice 0, then slice 1...).
``"segmented"``
    ECG-gated segmented cine, one breath-hold per slice: each frame's lines
    are split into ``segments`` contiguous chunks; heartbeat ``h`` acquires
    chunk ``h`` of every cardiac phase in turn, each phase taking
    ``frame_ms``. A frame is complete only in the last heartbeat.

Time stamps: ``acquisition_time_stamp`` in 2.5 ms ticks (Siemens
convention) from a clock starting at 10:00 of the scan day, advancing by
each readout's nominal duration (a block's ``frame_ms`` spread over its
lines); ``physiology_time_stamp[0]`` in milliseconds since the R wave for
gated scans (0 for real time).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import ismrmrd
import numpy as np

from .scan import Scan

TICK_MS = 2.5
CLOCK_START_MS = 10 * 3600 * 1000.0  # 10:00:00, as a scanner clock of the day
ORDERS = ("realtime", "slice", "segmented")
PIXEL_BANDWIDTH_HZ = 930.0  # typical bSSFP readout bandwidth per pixel

# One row per readout, in send order.
SCHEDULE_DTYPE = np.dtype([
    ("slice", np.int32), ("frame", np.int32), ("line", np.int32), ("segment", np.int32),
    ("calib_only", np.bool_), ("time_ms", np.float64), ("phys_ms", np.float64),
])


def frame_key(acq: ismrmrd.Acquisition | ismrmrd.Image) -> tuple[int, int, int]:
    """``(slice, contrast, frame)`` of a readout or image.

    The frame is the phase counter for gated cine and the repetition counter
    for real time; a scan uses only one of them, so the larger is the frame.
    Works for acquisitions (``idx``) and images (header fields) alike.
    """
    if isinstance(acq, ismrmrd.Acquisition):
        idx = acq.idx
        return int(idx.slice), int(idx.contrast), int(max(idx.phase, idx.repetition))
    return int(acq.slice), int(acq.contrast), int(max(acq.phase, acq.repetition))


def normalise_mask(scan: Scan, mask: np.ndarray | None) -> np.ndarray:
    """A ``(slices, frames, ky)`` bool mask for ``scan``; ``None`` means fully sampled.

    Lines outside the scan's encoded range (zero-padded columns of fastMRI
    data) are removed: they were never acquired.
    """
    shape = (scan.slices, scan.frames, scan.ny)
    if mask is None:
        m = np.ones(shape, dtype=bool)
    else:
        m = np.asarray(mask).astype(bool)
        if m.ndim == 1:
            m = np.broadcast_to(m, shape)
        elif m.ndim == 2:
            if m.shape != shape[1:]:
                raise ValueError(f"mask {m.shape} does not match (frames, ky) = {shape[1:]}")
            m = np.broadcast_to(m[None], shape)
        elif m.shape != shape:
            raise ValueError(f"mask {m.shape} does not match (slices, frames, ky) = {shape}")
        m = m.copy()
    if scan.encoded_lines is not None:
        lo, hi = scan.encoded_lines
        m[..., :lo] = False
        m[..., hi:] = False
    return m


def _frame_lines(m: np.ndarray, s: int, t: int, calib: tuple[int, int] | None) -> list[tuple[int, bool]]:
    """Lines sent for (slice, frame): calibration-only lines first (frame 0), then sampled lines ascending."""
    lines = np.flatnonzero(m[s, t])
    out: list[tuple[int, bool]] = []
    if calib is not None and t == 0:
        out += [(int(k), True) for k in range(calib[0], calib[1]) if not m[s, t, k]]
    out += [(int(k), False) for k in lines]
    return out


def schedule(scan: Scan, mask: np.ndarray | None = None, *, order: str = "realtime",
             calib_lines: tuple[int, int] | None = None, segments: int = 8, start_ms: float = 0.0) -> np.ndarray:
    """The send order and nominal timing of every readout, a structured array (:data:`SCHEDULE_DTYPE`).

    ``calib_lines`` ``(start, stop)``: calibration region; lines in it that a
    frame's mask lacks are sent once per slice, before frame 0's imaging
    lines, as calibration-only readouts (a separate reference scan).
    ``time_ms`` starts at ``start_ms``.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    m = normalise_mask(scan, mask)
    S, T = scan.slices, scan.frames
    rows: list[tuple] = []
    clock = float(start_ms)

    def block(s: int, t: int, lines: Sequence[tuple[int, bool]], seg: int, phys0: float | None) -> None:
        nonlocal clock
        if not lines:
            clock += scan.frame_ms
            return
        dt = scan.frame_ms / len(lines)
        for i, (k, calib_only) in enumerate(lines):
            phys = 0.0 if phys0 is None else phys0 + i * dt
            rows.append((s, t, k, seg, calib_only, clock + i * dt, phys))
        clock += scan.frame_ms

    if order == "realtime":
        for t in range(T):
            for s in range(S):
                block(s, t, _frame_lines(m, s, t, calib_lines), 0, None)
    elif order == "slice":
        for s in range(S):
            for t in range(T):
                block(s, t, _frame_lines(m, s, t, calib_lines), 0, None)
    else:
        if segments < 1:
            raise ValueError("segments must be at least 1")
        for s in range(S):
            per_frame = [_frame_lines(m, s, t, calib_lines) for t in range(T)]
            chunks = [np.array_split(np.arange(len(fl)), segments) for fl in per_frame]
            for h in range(segments):
                for t in range(T):
                    lines = [per_frame[t][i] for i in chunks[t][h]]
                    block(s, t, lines, h, t * scan.frame_ms)
    return np.array(rows, dtype=SCHEDULE_DTYPE)


def completion_index(sched: np.ndarray) -> dict[tuple[int, int], int]:
    """For each (slice, frame): the schedule row of its last readout (the one that completes it)."""
    out: dict[tuple[int, int], int] = {}
    for i, (s, t) in enumerate(zip(sched["slice"], sched["frame"])):
        out[(int(s), int(t))] = i
    return out


def acquisitions(
    scan: Scan,
    mask: np.ndarray | None = None,
    *,
    order: str = "realtime",
    calib_lines: tuple[int, int] | None = None,
    segments: int = 8,
    first_scan_counter: int = 1,
    start_ms: float = 0.0,
    last_in_measurement: bool = True,
) -> Iterator[ismrmrd.Acquisition]:
    """The scan's readouts as ``ismrmrd.Acquisition`` objects, in send order.

    ``mask``: bool ``(frames, ky)`` or ``(slices, frames, ky)``; ``None`` =
    fully sampled. Each acquisition holds ``(coils, kx_encoded)`` complex64
    data and: ``idx.kspace_encode_step_1`` (line), ``idx.slice``,
    ``idx.phase`` (gated) or ``idx.repetition`` (real time),
    ``idx.contrast``; ``center_sample = kx_encoded // 2``; slice position
    and direction cosines; time stamps (module docstring); scan counter
    from ``first_scan_counter``; ``measurement_uid``; dwell time; flags
    FIRST/LAST_IN_SLICE and FIRST/LAST_IN_PHASE or _REPETITION on the
    first/last readout of every (slice, frame) in send order,
    FIRST/LAST_IN_CONTRAST on the scan's first/last readout,
    LAST_IN_MEASUREMENT on the very last (unless ``last_in_measurement`` is
    False, for a scan followed by another in the same stream),
    IS_PARALLEL_CALIBRATION_AND_IMAGING on sampled lines inside
    ``calib_lines`` and IS_PARALLEL_CALIBRATION on calibration-only lines.
    Use :func:`frame_key` to map a readout to its (slice, contrast, frame).
    """
    sched = schedule(scan, mask, order=order, calib_lines=calib_lines, segments=segments, start_ms=start_ms)
    n = len(sched)
    first: dict[tuple[int, int], int] = {}
    last: dict[tuple[int, int], int] = {}
    for i, (s, t) in enumerate(zip(sched["slice"].tolist(), sched["frame"].tolist())):
        first.setdefault((s, t), i)
        last[(s, t)] = i
    gated = scan.time_dimension == "phase"
    f_first = ismrmrd.ACQ_FIRST_IN_PHASE if gated else ismrmrd.ACQ_FIRST_IN_REPETITION
    f_last = ismrmrd.ACQ_LAST_IN_PHASE if gated else ismrmrd.ACQ_LAST_IN_REPETITION
    kx = scan.kx_encoded
    dwell_us = 1e6 / (PIXEL_BANDWIDTH_HZ * kx)
    uid = scan.measurement_uid
    for i, row in enumerate(sched):
        s, t, k = int(row["slice"]), int(row["frame"]), int(row["line"])
        data = np.ascontiguousarray(scan.kspace[s, t, :, k, :], dtype=np.complex64)
        acq = ismrmrd.Acquisition.from_array(data)
        acq.version = 1
        acq.measurement_uid = uid
        acq.scan_counter = first_scan_counter + i
        acq.acquisition_time_stamp = int((CLOCK_START_MS + row["time_ms"]) / TICK_MS) & 0xFFFFFFFF
        if gated:
            acq.physiology_time_stamp[0] = int(round(row["phys_ms"]))
        acq.center_sample = kx // 2
        acq.sample_time_us = dwell_us
        acq.position[:] = [float(v) for v in scan.slice_positions_mm[s]]
        acq.read_dir[:] = scan.read_dir
        acq.phase_dir[:] = scan.phase_dir
        acq.slice_dir[:] = scan.slice_dir
        for c in range(scan.coils):
            acq.setChannelActive(c)
        acq.idx.kspace_encode_step_1 = k
        acq.idx.slice = s
        acq.idx.contrast = scan.contrast
        if gated:
            acq.idx.phase = t
        else:
            acq.idx.repetition = t
        if first[(s, t)] == i:
            acq.set_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
            acq.set_flag(f_first)
        if last[(s, t)] == i:
            acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
            acq.set_flag(f_last)
        if i == 0:
            acq.set_flag(ismrmrd.ACQ_FIRST_IN_CONTRAST)
        if i == n - 1:
            acq.set_flag(ismrmrd.ACQ_LAST_IN_CONTRAST)
            if last_in_measurement:
                acq.set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
        if calib_lines is not None and calib_lines[0] <= k < calib_lines[1]:
            acq.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION if row["calib_only"] else ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
        yield acq


def exam_acquisitions(
    scans: Sequence[Scan],
    masks: Sequence[np.ndarray | None] | None = None,
    *,
    order: str = "realtime",
    calib_lines: tuple[int, int] | None = None,
    segments: int = 8,
) -> Iterator[ismrmrd.Acquisition]:
    """Several scans (e.g. reference contrast then target) as one measurement.

    Counters and clocks continue from one scan to the next; only the very
    last readout carries LAST_IN_MEASUREMENT. Each scan keeps its own
    ``contrast``.
    """
    masks = list(masks) if masks is not None else [None] * len(scans)
    counter, clock = 1, 0.0
    for j, (scan, mask) in enumerate(zip(scans, masks)):
        sched_len = len(schedule(scan, mask, order=order, calib_lines=calib_lines, segments=segments))
        yield from acquisitions(scan, mask, order=order, calib_lines=calib_lines, segments=segments,
                                first_scan_counter=counter, start_ms=clock, last_in_measurement=j == len(scans) - 1)
        counter += sched_len
        clock += scan.frame_ms * scan.frames * scan.slices * (segments if order == "segmented" else 1)


def iter_kspace(acqs: Iterable[ismrmrd.Acquisition], scan_shape: tuple[int, int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Re-grid received readouts into ``(slices, frames, coils, ky, kx)`` k-space and a sampled mask.

    The inverse of :func:`acquisitions` for checking what was sent;
    calibration-only readouts are skipped (they are not imaging data).
    Returns ``(kspace, mask)`` with mask ``(slices, frames, ky)``.
    """
    S, T, C, KY, KX = scan_shape
    k = np.zeros(scan_shape, dtype=np.complex64)
    m = np.zeros((S, T, KY), dtype=bool)
    for a in acqs:
        if a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION):
            continue
        s, _, t = frame_key(a)
        line = a.idx.kspace_encode_step_1
        k[s, t, :, line, :] = a.data
        m[s, t, line] = True
    return k, m


__all__ = ["acquisitions", "exam_acquisitions", "schedule", "completion_index", "frame_key", "normalise_mask",
           "iter_kspace", "ORDERS", "TICK_MS", "SCHEDULE_DTYPE"]
