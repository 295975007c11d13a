"""KGMgT cine reconstruction as a streaming gadget: a sliding window of frames.

Frames (``ReconData`` from :func:`gadgets.frames.accumulate_frames`) arrive
one by one. For every (slice, contrast, set) the gadget keeps the frames a
window still needs: each frame's measured multi-coil k-space on the recon
matrix and its line mask, and its view-shared k-space (each line it did not
measure from the latest earlier frame that did, :mod:`models.view_sharing`).
Frame ``t`` is reconstructed from the SENSE images (view-shared or
zero-filled: whichever the model's weights were trained on) of

- ``(t-1, t, t+1)`` in ``centered`` mode, as soon as ``t+1`` is complete;
- ``(t-2, t-1, t)`` in ``causal`` mode, as soon as ``t`` is complete.

Gated cine (time dimension ``phase``) is periodic: phase ``N-1`` and phase 0
are neighbours, so in centered mode phase 0 waits for the last phase (and in
causal mode phases 0 and 1 wait for the last two). A real-time series
(``repetition``) never waits for a frame that cannot come: before the first
frame, after the last one the header announces, a frame skipped (a later one
already arrived), or the end of the stream. A missing neighbour is replaced
by the best one available (the other neighbour, else the frame itself), and
the image meta says which frames were used.

Every frame that received data yields, in this order of series:

- at its arrival, the conventional zero-filled SENSE image
  (``conventional_series_index``, default 0), exactly as
  :mod:`gadgets.conventional` makes it;
- when its window is ready, one KGMgT image (``series_index``, default 1)
  after data consistency with its own measured k-space (done by
  :mod:`models.inference`), or, if inference fails or times out, or no coil
  maps exist yet, the conventional image again with ``Fallback`` in its meta.

The zero-filled window images are combined with the coil maps current when
the window is reconstructed, so all three frames share the maps the model's
DC uses. Memory per real-time series: at most four frames, whatever the
scan's length; per gated series: its phases until all are out.

Properties: ``mode`` ("centered" | "causal", default centered),
``series_index`` (1), ``conventional_series_index`` (0), ``emit_conventional``
(true), ``time_dimension`` (default from the header), ``max_calibration_lines``
(32), ``max_batch`` (8: windows released together, or waiting while the
model was busy, run as one batch), ``model_thread`` (true: the model runs on
its own thread so conventional images never wait for it; false: inline),
``inputs`` ("auto": what the model's weights take; "view-shared";
"zero-filled"), ``max_pending`` (64 windows queued for the model before the frame path
waits), ``max_lag_ms`` (real time 2000, gated 0 = off: how far the model
series may fall behind before new windows fall back, see
:class:`ModelWorker`), ``map_wait_frames`` (8: windows of a slice that may wait for its
coil maps before falling back), and the inference properties of
:func:`gadgets.inference.backend_from_config`.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import ismrmrd
import numpy as np

from models.coils import sense_combine
from models.fft import fft1c, ifft1c, ifft2c
from models.view_sharing import LineHistory, SharedFrame, add_lookahead

from . import host_settings, properties
from .conventional import CoilMapCache, conventional_image
from .errors import reports_errors
from .frames import Frame, frames_from, time_dimension
from .image_headers import image_from_frame, recon_geometry
from .inference import InferenceError, backend_from_config, model_meta
from .sent_counts import SentImages

log = logging.getLogger(__name__)

MODES = ("centered", "causal")
GroupKey = tuple[int, int, int]  # slice, contrast, set


# ---------------------------------------------------------------------------- k-space on the recon grid
def recon_kspace(kspace: np.ndarray, sampled: np.ndarray, recon_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A frame's measured ``(coils, ny, nx)`` k-space and ``(ny,)`` line mask on the recon matrix.

    Smaller encodings are zero-padded (as :func:`gadgets.conventional.fit_kspace`);
    a readout longer than the recon matrix (oversampling still present) is
    cropped in image space along the readout only, which is exact because
    every sampled line is complete along the readout. A phase-encode axis
    longer than the recon matrix (phase oversampling) cannot be represented
    with a line mask on the recon grid and raises ``ValueError``.
    """
    coils, ny, nx = kspace.shape
    ry, rx = recon_shape
    if ny > ry:
        raise ValueError(f"{ny} phase-encode lines exceed the {ry}-line recon matrix (phase oversampling)")
    pad_y = ry - ny
    k = np.pad(kspace, ((0, 0), (pad_y // 2, pad_y - pad_y // 2), (0, 0))) if pad_y else kspace
    mask = np.pad(sampled, (pad_y // 2, pad_y - pad_y // 2)) if pad_y else sampled
    if nx < rx:
        k = np.pad(k, ((0, 0), (0, 0), ((rx - nx) // 2, rx - nx - (rx - nx) // 2)))
    elif nx > rx:
        x0 = (nx - rx) // 2
        k = fft1c(ifft1c(k, axis=-1)[..., x0:x0 + rx], axis=-1)
    return np.ascontiguousarray(k, dtype=np.complex64), np.asarray(mask, dtype=bool)


# ---------------------------------------------------------------------------- the window logic
@dataclass
class Window:
    """A frame ready to reconstruct: its group, its time and the three times to use, in model order."""

    group: GroupKey
    t: int
    times: tuple[int, int, int]


@dataclass
class SlidingWindows:
    """Which frames are ready, given the frames seen so far (no arrays, just times).

    ``period``: number of cardiac phases for gated (periodic) cine, else None.
    ``last_index``: the last real-time frame the header announces (None: unknown).
    """

    causal: bool = False
    period: int | None = None
    last_index: int | None = None
    present: dict = field(default_factory=dict)   # group -> set of times held
    emitted: dict = field(default_factory=dict)   # group -> set of times done
    newest: dict = field(default_factory=dict)    # group -> largest time seen (real time)
    ended: bool = False
    ended_groups: set = field(default_factory=set)

    def _wrap(self, t: int) -> int:
        return t % self.period if self.period else t

    def neighbours(self, t: int) -> tuple[int, int]:
        """The two other frames of ``t``'s window: (t-1, t+1) centered, (t-2, t-1) causal."""
        a, b = (t - 2, t - 1) if self.causal else (t - 1, t + 1)
        return self._wrap(a), self._wrap(b)

    def _state(self, g: GroupKey, n: int) -> str:
        if n in self.present[g]:
            return "present"
        if self.ended or g in self.ended_groups:
            return "never"
        if self.period:
            return "never" if not 0 <= n < self.period else "pending"
        if n < 0 or (self.last_index is not None and n > self.last_index) or n < self.newest[g]:
            return "never"  # real time: frames come in order, so a skipped one will not come
        return "pending"

    def _window(self, g: GroupKey, t: int) -> Window | None:
        if t in self.emitted[g] or t not in self.present[g]:
            return None
        a, b = self.neighbours(t)
        sa, sb = self._state(g, a), self._state(g, b)
        if "pending" in (sa, sb):
            return None
        if self.causal:  # (t-2, t-1, t)
            b2 = b if sb == "present" else t
            a2 = a if sa == "present" else b2
            return Window(g, t, (a2, b2, t))
        a2 = a if sa == "present" else (b if sb == "present" else t)
        b2 = b if sb == "present" else (a if sa == "present" else t)
        return Window(g, t, (a2, t, b2))

    def _ready(self, g: GroupKey) -> list[Window]:
        out = []
        for t in sorted(self.present[g] - self.emitted[g]):
            w = self._window(g, t)
            if w is not None:
                out.append(w)
        for w in out:
            self.emitted[g].add(w.t)
        return out

    def add(self, g: GroupKey, t: int) -> list[Window]:
        """Frame ``t`` of group ``g`` is complete; the windows now ready, in time order."""
        self.present.setdefault(g, set()).add(t)
        self.emitted.setdefault(g, set())
        self.newest[g] = max(self.newest.get(g, t), t)
        return self._ready(g)

    def end_group(self, g: GroupKey) -> list[Window]:
        """Group ``g`` will get no more frames: its frames not yet out, with the best neighbours there are."""
        self.ended_groups.add(g)
        return self._ready(g) if g in self.present else []

    def forget(self, g: GroupKey) -> None:
        for d in (self.present, self.emitted, self.newest):
            d.pop(g, None)

    def flush(self) -> list[Window]:
        """The stream ended: every frame not yet out, with the best neighbours there are."""
        self.ended = True
        out = []
        for g in sorted(self.present):
            out.extend(self._ready(g))
        return out

    def droppable(self, g: GroupKey) -> set[int]:
        """Frames of ``g`` no future window can use (so their arrays can go)."""
        held = self.present.get(g, set())
        if self.period:
            return set(held) if len(self.emitted[g]) >= self.period else set()
        waiting = held - self.emitted[g]
        oldest_needed = min(waiting, default=self.newest[g] + 1) - 2
        # A future frame u > newest uses at most u-2 >= newest-1.
        return {t for t in held if t < min(oldest_needed, self.newest[g] - 1)}

    def drop(self, g: GroupKey, times: set[int]) -> None:
        self.present[g] -= times
        if not self.period:
            self.emitted[g] = {t for t in self.emitted[g] if t >= self.newest[g] - 2}


# ---------------------------------------------------------------------------- the gadget
@dataclass
class _Held:
    frame: Frame
    kspace: np.ndarray        # (coils, ny, nx) on the recon matrix
    mask: np.ndarray          # (ny,)
    conventional: np.ndarray  # (ny, nx) complex zero-filled SENSE/RSS
    conventional_meta: dict
    shared: SharedFrame | None = None  # causal view sharing, taken when the frame arrived


def _pixels(image: ismrmrd.Image) -> np.ndarray:
    return np.asarray(image.data).reshape(image.data.shape[-2:])


class KGMgTStream:
    """The gadget's state; :func:`reconstruct` drives it from a connection (kept separate for tests)."""

    def __init__(self, header: Any, config: Any, backend=None, settings: host_settings.OperatorSettings | None = None) -> None:
        settings = settings if settings is not None else host_settings.load()
        host_settings.check_header(header, settings)
        self.header = header
        self.mode = properties.get(config, "mode", "centered").lower()
        if self.mode not in MODES:
            raise ValueError(f"property 'mode' must be one of {MODES}, not {self.mode!r}")
        self.series = properties.get(config, "series_index", 1)
        self.conv_series = properties.get(config, "conventional_series_index", 0)
        if self.series == self.conv_series:
            raise ValueError("series_index and conventional_series_index must differ")
        self.emit_conventional = properties.get(config, "emit_conventional", True)
        self.max_batch = max(1, properties.get(config, "max_batch", 8))
        self.time_dim = time_dimension(header, properties.get(config, "time_dimension", ""))
        limits = header.encoding[0].encodingLimits
        lim = getattr(limits, self.time_dim, None)
        maximum = int(lim.maximum) if lim is not None and lim.maximum is not None else None
        gated = self.time_dim == "phase"
        self.windows = SlidingWindows(causal=self.mode == "causal",
                                      period=(maximum + 1 if maximum is not None else None) if gated else None,
                                      last_index=None if gated else maximum)
        if gated and maximum is None:
            log.warning("gated cine without a phase limit in the header: phases wrap only at the end of the stream")
        self.recon_shape, _ = recon_geometry(header)
        self.cache = CoilMapCache(self.recon_shape, properties.get(config, "max_calibration_lines", 32),
                                  max_entries=settings.max_cache_entries)
        # (slice, contrast, set) groups held at once: a stream inventing a new slice with every frame must
        # not grow memory; beyond this the oldest group is ended (its frames go out with the neighbours
        # they have) and forgotten.
        self.max_groups = max(1, settings.max_cache_entries)
        self.backend = backend if backend is not None else backend_from_config(config, settings)
        # The model's name and version are asked for on the model path, at its
        # first call: a blocking call here (a model load, a dead service's
        # timeout) would hold back the conventional series.
        self.meta = {"Model": "KGMgT", "Mode": self.mode, "InferenceBackend": self.backend.label}
        self._model_meta_known = False
        self.held: dict[GroupKey, dict[int, _Held]] = {}
        self.worker: ModelWorker | None = None  # set by the gadget: model beside the frame path
        self.map_wait_frames = max(0, properties.get(config, "map_wait_frames", 8))
        self._waiting: dict[int, list[_Job]] = {}  # per slice: jobs waiting for coil maps
        self.counts = {"model": 0, "fallback": 0}
        self._reasons: set[str] = set()
        self.inputs = properties.get(config, "inputs", "auto").lower()
        if self.inputs not in ("auto", "zero-filled", "view-shared"):
            raise ValueError(f"property 'inputs' must be auto, zero-filled or view-shared, not {self.inputs!r}")
        self.histories: dict[GroupKey, LineHistory] = {}  # per group: the latest measurement of every line
        log.info("KGMgT %s over %s (period %s), inference %s", self.mode, self.time_dim,
                 self.windows.period, self.backend.label)

    def _key(self, frame: Frame) -> tuple[GroupKey, int]:
        s, c, st, t = frame.key(self.time_dim)
        return (s, c, st), t

    def add(self, frame: Frame) -> Iterator[ismrmrd.Image]:
        """One completed frame in; the images it releases out, as they are made.

        A generator, so the frame's conventional image leaves before the
        model runs. With a :class:`ModelWorker` attached (``self.worker``), the
        model-series images leave from the worker instead and only the
        conventional image comes out here.
        """
        conv = conventional_image(frame, self.header, self.cache, "sense", self.conv_series)
        if self.emit_conventional:
            yield conv
        g, t = self._key(frame)
        try:
            k, m = recon_kspace(frame.kspace, frame.sampled, self.recon_shape)
        except ValueError as exc:  # kept, so the frame still gets its (fallback) model-series image
            log.warning("frame %s %d: %s", g, t, exc)
            k, m = None, None
        shared = None
        if k is not None and self.inputs != "zero-filled":
            shared = self.histories.setdefault(g, LineHistory()).share(k, m, t)
        self.held.setdefault(g, {})[t] = _Held(frame, k, m, _pixels(conv), dict(conv.meta), shared)
        jobs = self._ready_for_maps([self._job(w) for w in self.windows.add(g, t)])
        self._prune(g)
        while len(self.held) > self.max_groups:
            jobs += self._end_group(next(iter(self.held)))
        yield from self._dispatch(jobs)

    def _end_group(self, g: GroupKey) -> list["_Job"]:
        """Release group ``g``'s frames now and forget it (see ``max_groups``)."""
        log.warning("KGMgT: more than %d slices at once: ending slice group %s early", self.max_groups, g)
        jobs = [self._job(w) for w in self.windows.end_group(g)]
        for job in jobs:  # its maps may never come: these cannot wait for them
            if job.reason is None and self.cache.get(g[0])[0] is None:
                job.reason = "slice group ended early (too many slices at once) before its coil maps"
        ready = self._ready_for_maps(jobs)
        self.held.pop(g, None)
        self.histories.pop(g, None)
        self.windows.forget(g)
        return ready

    def flush(self) -> list[ismrmrd.Image]:
        """The stream ended: the frames still waiting, with the best neighbours available."""
        jobs = self._ready_for_maps([self._job(w) for w in self.windows.flush()], final=True)
        for g in list(self.held):
            self._prune(g)
        out = list(self._dispatch(jobs))
        if self.worker is not None:
            self.worker.finish()
        return out

    def _dispatch(self, jobs: list["_Job"]) -> Iterator[ismrmrd.Image]:
        if self.worker is not None:
            for job in jobs:
                self.worker.put(job)
            return
        for i in range(0, len(jobs), self.max_batch):
            yield from self.execute(jobs[i:i + self.max_batch])

    def _prune(self, g: GroupKey) -> None:
        gone = self.windows.droppable(g)
        if gone:
            for t in gone:
                self.held[g].pop(t, None)
            self.windows.drop(g, gone)

    def _job(self, w: Window) -> "_Job":
        """Everything the model needs for window ``w``, taken now (the held frames may go afterwards)."""
        held = self.held[w.group]
        target = held[w.t]
        job = _Job(w, target.frame, target.conventional, target.conventional_meta)
        if any(held[t].kspace is None for t in w.times):
            job.reason = "k-space not representable on the recon matrix"
            return job
        job.kspace, job.mask = target.kspace, target.mask
        job.window_kspace = [held[t].kspace for t in w.times]
        if all(held[t].shared is not None for t in w.times):
            # View sharing: every frame as shared when it arrived; the target of a centred window may
            # also take frame t+1's lines (the look-ahead the window waited for). Same rule as training
            # (models.cine_windows.window_inputs). References to the held arrays, not copies.
            job.window_shared = [held[t].shared.kspace for t in w.times]
            nxt = held.get(w.t + 1)
            if not self.windows.causal and self.windows.period is None and nxt is not None and nxt.kspace is not None:
                job.window_shared[1] = add_lookahead(target.shared, nxt.kspace, nxt.mask)
        return job

    def _ready_for_maps(self, jobs: list["_Job"], final: bool = False) -> list["_Job"]:
        """Jobs that can go now, in order; jobs of a slice with no coil maps yet wait for them.

        Real-time cine often has no separate calibration scan: the maps come
        from the time-averaged centre of the first frames (TSENSE-like), so
        the first windows of a slice wait (at most ``map_wait_frames`` of
        them, and never past the end of the stream) instead of falling back
        at once. A job that cannot wait any longer falls back, flagged.
        """
        for job in jobs:
            self._waiting.setdefault(job.window.group[0], []).append(job)
        out = []
        for key in list(self._waiting):
            queue_ = self._waiting[key]
            maps, source = self.cache.get(key)
            while queue_:
                job = queue_[0]
                if job.reason is None and maps is not None:
                    job.maps, job.coil_source = maps, source  # window images are made on the model path
                elif job.reason is None and (final or len(queue_) > self.map_wait_frames):
                    job.reason = "no coil maps yet (too few calibration lines)"
                elif job.reason is None:
                    break  # wait for the maps
                out.append(queue_.pop(0))
            if not queue_:
                del self._waiting[key]
        return out

    def _fallback(self, job: "_Job", reason: str) -> ismrmrd.Image:
        w = job.window
        if reason not in self._reasons:
            log.warning("KGMgT fallback to the conventional image (frame %s %d): %s", w.group, w.t, reason)
            self._reasons.add(reason)
        self.counts["fallback"] += 1
        meta = {**self.meta, "ReconMethod": job.conventional_meta.get("ReconMethod", "zero-filled"),
                "CoilMaps": job.conventional_meta.get("CoilMaps", "none"), "Fallback": reason,
                "Window": ",".join(map(str, w.times))}
        return image_from_frame(job.frame, job.conventional, self.header, series_index=self.series, meta=meta)

    def model_ready(self) -> None:
        """Ask the backend for the model's name, version and inputs once (loading an in-process model)."""
        if not self._model_meta_known:
            self.meta.update(model_meta(self.backend, "kgmgt"))
            if self.inputs == "auto":
                # what the weights were trained on; a model that cannot say predates view sharing
                self.inputs = self.meta.get("ModelInputs", "zero-filled")
            self.meta["ModelInputs"] = self.inputs
            self._model_meta_known = True

    def window_images(self, job: "_Job") -> np.ndarray:
        """The window's three SENSE images ``(3, ny, nx)`` as the model takes them, with the maps its DC uses."""
        kspaces = job.window_kspace if self.inputs == "zero-filled" else job.window_shared
        if kspaces is None:
            raise InferenceError(f"the model takes {self.inputs} frames; this window has none")
        return np.stack([sense_combine(ifft2c(k), job.maps) for k in kspaces]).astype(np.complex64)

    def execute(self, jobs: list["_Job"]) -> list[ismrmrd.Image]:
        """The model-series images of ``jobs`` (one batched call), in order; never raises for a model failure."""
        results: dict[int, ismrmrd.Image] = {}
        todo = []
        for i, job in enumerate(jobs):
            if job.reason is not None:
                results[i] = self._fallback(job, job.reason)
            else:
                todo.append((i, job))
        if todo:
            self.model_ready()
            start = time.perf_counter()
            try:
                frames = np.stack([self.window_images(j) for _, j in todo])
                images = self.backend.cine_batch(frames, np.stack([j.kspace for _, j in todo]),
                                                 np.stack([j.mask for _, j in todo]), np.stack([j.maps for _, j in todo]),
                                                 self.mode == "causal")
                if images.shape != (len(todo),) + self.recon_shape:
                    raise InferenceError(f"model returned {images.shape}, expected {(len(todo),) + self.recon_shape}")
                if not np.all(np.isfinite(images)):
                    raise InferenceError("model returned non-finite pixels")
                error = None
            except InferenceError as exc:
                error = str(exc)
            except Exception as exc:  # never lose a frame to an unexpected backend error
                error = f"{type(exc).__name__}: {exc}"
            ms = (time.perf_counter() - start) * 1000.0
            for j, (i, job) in enumerate(todo):
                if error is not None:
                    results[i] = self._fallback(job, error)
                    continue
                self.counts["model"] += 1
                meta = {**self.meta, "ReconMethod": "KGMgT + k-space DC", "CoilMaps": job.coil_source,
                        "Window": ",".join(map(str, job.window.times)), "InferenceMs": f"{ms:.1f}",
                        "Batch": str(len(todo))}
                results[i] = image_from_frame(job.frame, images[j], self.header, series_index=self.series, meta=meta)
        return [results[i] for i in range(len(jobs))]


@dataclass
class _Job:
    window: Window
    frame: Frame
    conventional: np.ndarray
    conventional_meta: dict
    coil_source: str = "none"
    reason: str | None = None
    window_kspace: list | None = None  # the window's three measured k-spaces (coils, ny, nx)
    window_shared: list | None = None  # the same, view-shared (models.view_sharing)
    kspace: np.ndarray | None = None   # (coils, ny, nx) frame t's measured k-space
    mask: np.ndarray | None = None     # (ny,)
    maps: np.ndarray | None = None     # (coils, ny, nx)
    holds_slot: bool = False           # counted against ModelWorker.max_pending
    deadline: float = 0.0              # real time: when its image must have left (ModelWorker)
    delivered: bool = False            # its model-series image has left


class ModelWorker:
    """Runs the model beside the frame path, so conventional images never wait for the network.

    Jobs queue in release order. Two bounds keep a live scan live and its
    memory flat, however long it runs:

    - ``max_lag_ms`` (real time: 2000; gated: 0 = off): when the oldest
      window still waiting for the model was queued longer ago than that,
      a new window does not wait: it drops its k-space and becomes a
      flagged fallback (its conventional image, ``Fallback: model behind``).
      On a CPU slower than the frame rate, part of the frames then carry the
      model's image and the others say so, and the model series stays
      within about ``max_lag_ms`` of the scan instead of drifting further
      behind every second. Gated cine delivers its frames in one burst at
      the end of the breath-hold and every one should get the model.
    - ``max_pending`` (64): at most that many windows holding k-space wait;
      beyond it the frame path waits (a burst replayed as fast as possible).

    The worker takes every job waiting (up to ``max_batch``) as one batch,
    so a model slower than the frame rate catches up with bigger batches.

    In real time (``max_lag_ms`` > 0) every window's image leaves within
    ``max_lag_ms`` of its release: a fallback leaves at once (it never waits
    behind model work), and a deadline watch sends the flagged fallback of
    any window whose model image is not out by then (a late model result is
    then dropped). Exactly one model-series image per frame either way; they
    may leave out of release order. ``send`` is called from several threads.
    """

    _END = object()

    def __init__(self, stream: KGMgTStream, send: Callable[[ismrmrd.Image], None], max_pending: int = 64,
                 max_lag_ms: float = 0.0) -> None:
        self.stream, self.send = stream, send
        self.max_pending = max(1, max_pending)
        self.max_lag_s = max(0.0, max_lag_ms) / 1000.0
        # Heavy jobs (holding k-space) are counted by the semaphore and their
        # queueing times kept oldest first; light fallback jobs only hold a
        # conventional image and pass straight through.
        self.slots = threading.BoundedSemaphore(self.max_pending)
        self._waiting_since: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self._batch_s: float | None = None     # measured model time of one batch (moving average)
        self._batch_started: float | None = None
        self.ready = threading.Event()
        self._cond = threading.Condition()
        self._deadlines: collections.deque = collections.deque()  # real-time jobs, deadline order
        self._closing = False
        self.thread = threading.Thread(target=self._run, name="kgmgt-model", daemon=True)
        self.thread.start()
        self.watcher = threading.Thread(target=self._watch, name="kgmgt-deadlines", daemon=True)
        self.watcher.start()

    def expected_s(self) -> float:
        """When a window queued now would have its image: the batch running, then one more (measured)."""
        with self._lock:
            if self._batch_s is None:
                return 0.0
            left = max(0.0, self._batch_started + self._batch_s - time.perf_counter()) if self._batch_started else 0.0
            return left + self._batch_s

    def lag_s(self) -> float:
        """How long the oldest window still waiting for the model has waited."""
        with self._lock:
            return time.perf_counter() - self._waiting_since[0] if self._waiting_since else 0.0

    def put(self, job: _Job) -> None:
        if job.reason is None:
            lag, expected = self.lag_s(), self.expected_s()
            if self.max_lag_s and max(lag, expected) > self.max_lag_s:
                job.reason = (f"model behind by {lag * 1000:.0f} ms (real time: not waiting)" if lag > self.max_lag_s
                              else f"model busy: its image expected in {expected * 1000:.0f} ms > max_lag_ms")
                job.window_kspace = job.window_shared = job.kspace = job.mask = job.maps = None
            else:
                self.slots.acquire()
                job.holds_slot = True
                now = time.perf_counter()
                with self._lock:
                    self._waiting_since.append(now)
                if self.max_lag_s:
                    job.deadline = now + self.max_lag_s
                    with self._cond:
                        self._deadlines.append(job)
                        self._cond.notify()
        if job.reason is not None:
            # A fallback needs no model: it leaves now, never behind model work.
            self._deliver(job, lambda: self.stream._fallback(job, job.reason))
            return
        self.queue.put(job)

    def _deliver(self, job: _Job, make: Callable[[], ismrmrd.Image]) -> None:
        """Send ``job``'s one model-series image, unless the deadline watch already sent its fallback."""
        with self._cond:
            if job.delivered:
                return
            job.delivered = True
        self.send(make())

    def _watch(self) -> None:
        """Real time: a window still without its image at its deadline gets its flagged fallback now.

        Deadlines count from when the model is ready (loaded on the worker
        thread at session start; a long-lived host has preloaded it), so a
        fresh Gadgetron process's model load does not fail every early window.
        """
        self.ready.wait()
        ready_at = time.perf_counter()
        while True:
            with self._cond:
                while not self._deadlines and not self._closing:
                    self._cond.wait()
                if not self._deadlines:
                    return
                job = self._deadlines[0]
                left = max(job.deadline, ready_at + self.max_lag_s) - time.perf_counter()
                if not job.delivered and left > 0:
                    self._cond.wait(left)
                    continue
                self._deadlines.popleft()
                if job.delivered:
                    continue
            self._deliver(job, lambda: self.stream._fallback(
                job, f"no model image within max_lag_ms ({self.max_lag_s * 1000:.0f} ms; still waiting on "
                     f"{self.stream.backend.label})"))

    def finish(self) -> None:
        self.queue.put(self._END)
        self.thread.join()
        with self._cond:
            self._closing = True
            self._cond.notify()
        self.watcher.join()
        if self.error is not None:
            raise RuntimeError(f"KGMgT model worker failed: {self.error}") from self.error

    def _run(self) -> None:
        try:
            self.stream.model_ready()  # load / ask the model now, beside the frame path
        except Exception:
            log.exception("KGMgT model not ready")
        finally:
            self.ready.set()
        done = False
        while not done:
            batch = [self.queue.get()]
            while len(batch) < self.stream.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is self._END:
                batch.pop()
                done = True
            if not batch:
                continue
            live = [job for job in batch if not job.delivered]  # past their deadline: fallback already sent
            try:
                try:
                    started = time.perf_counter()
                    with self._lock:
                        self._batch_started = started
                    images = self.stream.execute(live) if live else []
                    if live:
                        took = time.perf_counter() - started
                        with self._lock:
                            self._batch_s = took if self._batch_s is None else 0.7 * self._batch_s + 0.3 * took
                finally:
                    with self._lock:
                        self._batch_started = None
                    for job in batch:
                        if job.holds_slot:
                            job.holds_slot = False
                            with self._lock:
                                self._waiting_since.popleft()
                            self.slots.release()
            except BaseException as exc:  # image building failed: still one (flagged) image per frame
                log.exception("KGMgT batch failed")
                self.error = self.error or exc
                try:
                    images = [self.stream._fallback(job, f"{type(exc).__name__}: {exc}") for job in live]
                except BaseException:
                    continue
            for job, image in zip(live, images):
                self._deliver(job, lambda image=image: image)


@reports_errors
def reconstruct(connection: Any) -> None:
    """Gadget: ``ReconData`` frames in; conventional and KGMgT images out (module docstring)."""
    stream = KGMgTStream(connection.header, connection.config, settings=host_settings.for_connection(connection))
    lock = threading.Lock()  # gadgetron.external.Connection.send is not thread-safe

    sent = SentImages(stream.series)  # the closing log counts what left, not what was computed

    def send(item: Any) -> None:
        with lock:
            connection.send(item)
            sent.note(item)

    if properties.get(connection.config, "model_thread", True):
        gated = stream.time_dim == "phase"
        stream.worker = ModelWorker(stream, send, properties.get(connection.config, "max_pending", 64),
                                    properties.get(connection.config, "max_lag_ms", 0.0 if gated else 2000.0))
    try:
        for item in connection:
            if not hasattr(item, "bits"):
                send(item)
                continue
            for frame in frames_from(item):
                for image in stream.add(frame):
                    send(image)
    finally:
        # Also on failure: frames still waiting for neighbours get their images.
        try:
            for image in stream.flush():
                send(image)
        finally:
            stream.backend.close()
            log.info("KGMgT: %s", sent.summary())


def preload(config: Any, settings: Any = None) -> str:
    """Host hook: load the kgmgt weights this configuration uses before the first scan arrives."""
    from .inference import preload as preload_model

    return preload_model(config, "kgmgt", settings)
