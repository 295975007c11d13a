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
  :mod:`models.inference`), or, if inference fails or is late, or no coil
  maps exist yet, the best classical image the stream has at that moment:
  the frame's view-sharing SENSE image (the network's own target input,
  with frame t+1's lines in centred mode), view-sharing RSS before coil
  maps exist, the zero-filled image when even that is missing, with
  ``Fallback`` (why) and ``ReconMethod`` (which image) in its meta.

The zero-filled window images are combined with the coil maps current when
the window is reconstructed, so all three frames share the maps the model's
DC uses. Memory per real-time series: at most four frames, whatever the
scan's length; per gated series: its phases until all are out.

Properties: ``mode`` ("centered" | "causal", default centered),
``series_index`` (1), ``conventional_series_index`` (0), ``emit_conventional``
(true), ``time_dimension`` (default from the header), ``max_calibration_lines``
(32), ``max_batch`` (8: most windows run as one batch), ``model_thread``
(true: the model runs on its own thread, :mod:`gadgets.realtime_scheduler`,
so conventional images never wait for it; false: inline),
``inputs`` ("auto": what the model's weights take; "view-shared";
"zero-filled"), ``max_pending`` (64: without a real-time bound, windows
queued for the model before the frame path waits), ``max_lag_ms`` (real
time 2000, gated 0 = off: the latest a model-series image may leave after
its window was released, waiting for coil maps included; the scheduler
works on the newest windows and drops the ones it cannot finish in time),
``map_wait_frames`` (8: windows of a slice that may wait for its coil maps
before falling back), ``model`` (a :mod:`models.registry` cine model, default
KGMgT's entry), and the inference properties of
:func:`gadgets.inference.backend_from_config`. The model worker, fallback
plumbing, settings, coil-map cache and meta are the model-gadget base's
(:mod:`gadgets.model_gadget`); this module is the sliding window.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import ismrmrd
import numpy as np

from models.coils import rss, sense_combine
from models.fft import ifft2c
from models.view_sharing import LineHistory, SharedFrame, add_lookahead

from . import host_settings, model_gadget, properties
from .conventional import conventional_image
from .frames import Frame
from .header import time_dimension
from .image_headers import image_from_frame
from .inference import InferenceError
from .model_gadget import ModelStream, pixels_of, recon_kspace
from .model_windows import GroupKey, SlidingWindows, Window
from .realtime_scheduler import Job as ScheduledJob
from .realtime_scheduler import WALL_CLOCK, RealtimeScheduler, Timebase

log = logging.getLogger(__name__)

MODES = ("centered", "causal")
__all__ = ["KGMgTStream", "SlidingWindows", "Window", "attach_scheduler", "reconstruct", "preload", "recon_kspace"]


# ---------------------------------------------------------------------------- the gadget
@dataclass
class _Held:
    frame: Frame
    kspace: np.ndarray        # (coils, ny, nx) on the recon matrix
    mask: np.ndarray          # (ny,)
    conventional: np.ndarray  # (ny, nx) complex zero-filled SENSE/RSS
    conventional_meta: dict
    shared: SharedFrame | None = None  # causal view sharing, taken when the frame arrived


class KGMgTStream(ModelStream):
    """The gadget's state; :func:`reconstruct` drives it from a connection (kept separate for tests)."""

    OPERATION = "cine"

    def __init__(self, header: Any, config: Any, backend=None, settings: host_settings.OperatorSettings | None = None) -> None:
        self.mode = properties.get(config, "mode", "centered").lower()
        if self.mode not in MODES:
            raise ValueError(f"property 'mode' must be one of {MODES}, not {self.mode!r}")
        self.inputs = properties.get(config, "inputs", "auto").lower()
        if self.inputs not in ("auto", "zero-filled", "view-shared"):
            raise ValueError(f"property 'inputs' must be auto, zero-filled or view-shared, not {self.inputs!r}")
        super().__init__(header, config, backend, settings)
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
        # (slice, contrast, set) groups held at once: a stream inventing a new slice with every frame must
        # not grow memory; beyond this the oldest group is ended (its frames go out with the neighbours
        # they have) and forgotten.
        self.max_groups = max(1, self.settings.max_cache_entries)
        self.meta["Mode"] = self.mode
        self.held: dict[GroupKey, dict[int, _Held]] = {}
        self.map_wait_frames = max(0, properties.get(config, "map_wait_frames", 8))
        self._waiting: dict[int, list[_Job]] = {}  # per slice: jobs waiting for coil maps
        self._reasons: set[str] = set()
        self.histories: dict[GroupKey, LineHistory] = {}  # per group: the latest measurement of every line
        log.info("%s %s over %s (period %s), inference %s", self.entry.label, self.mode, self.time_dim,
                 self.windows.period, self.backend.label)

    def default_max_lag_ms(self) -> float:
        """Real time: 2 s; gated cine (reviewed after the scan): off."""
        return 0.0 if self.time_dim == "phase" else 2000.0

    def _key(self, frame: Frame) -> tuple[GroupKey, int]:
        s, c, st, t = frame.key(self.time_dim)
        return (s, c, st), t

    def add(self, frame: Frame) -> Iterator[ismrmrd.Image]:
        """One completed frame in; the images it releases out, as they are made.

        A generator, so the frame's conventional image leaves before the
        model runs. With a scheduler attached (``self.scheduler``), the
        model-series images leave from its threads instead and only the
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
        if k is not None:  # also for zero-filled models: the fallback image is view-shared
            shared = self.histories.setdefault(g, LineHistory()).share(k, m, t)
        self.held.setdefault(g, {})[t] = _Held(frame, k, m, pixels_of(conv), dict(conv.meta), shared)
        jobs = [self._job(w) for w in self.windows.add(g, t)]
        self._prune(g)
        while len(self.held) > self.max_groups:
            jobs += self._end_group(next(iter(self.held)))
        yield from self._release(jobs)

    def _end_group(self, g: GroupKey) -> list["_Job"]:
        """Release group ``g``'s frames now and forget it (see ``max_groups``)."""
        log.warning("%s: more than %d slices at once: ending slice group %s early", self.entry.label, self.max_groups, g)
        jobs = [self._job(w) for w in self.windows.end_group(g)]
        for job in jobs:  # its maps may never come: these cannot wait for them
            if job.reason is None and self.cache.get(g[0])[0] is None:
                job.reason = "slice group ended early (too many slices at once) before its coil maps"
        self.held.pop(g, None)
        self.histories.pop(g, None)
        self.windows.forget(g)
        return jobs

    def flush(self) -> list[ismrmrd.Image]:
        """The stream ended: the frames still waiting, with the best neighbours available."""
        jobs = [self._job(w) for w in self.windows.flush()]
        for g in list(self.held):
            self._prune(g)
        out = list(self._release(jobs, final=True))
        if self.scheduler is not None:
            self.scheduler.finish()
            log.info("%s scheduler: %s", self.entry.label, dict(self.scheduler.stats))
        return out

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

    def _release(self, jobs: list["_Job"], final: bool = False) -> Iterator[ismrmrd.Image]:
        """Windows just released: to the scheduler now (their deadline runs from here), maps or not.

        Real-time cine often has no separate calibration scan: the maps come
        from the time-averaged centre of the first frames (TSENSE-like), so
        the first windows of a slice wait for them (at most
        ``map_wait_frames`` windows, never past the end of the stream, and
        under a real-time bound never past their deadline) instead of
        falling back at once.
        """
        for job in jobs:
            if self.scheduler is not None:
                job.handle = self.scheduler.submit(job, runnable=False, waiting_for="coil maps")
            self._waiting.setdefault(job.window.group[0], []).append(job)
        ready = self._resolve_maps(final)
        if self.scheduler is not None:
            for job in ready:
                if job.reason is not None:
                    self.scheduler.give_up(job.handle, job.reason)
            self.scheduler.make_runnable(*[job.handle for job in ready if job.reason is None])
            return
        for i in range(0, len(ready), self.max_batch):
            yield from self.execute(ready[i:i + self.max_batch])

    def _resolve_maps(self, final: bool = False) -> list["_Job"]:
        """Waiting jobs that can go now, in order: with their slice's maps, or with the reason they cannot have them."""
        out = []
        for key in list(self._waiting):
            # a job whose deadline passed while it waited has had its fallback: forget it (and its arrays)
            queue_ = [j for j in self._waiting[key] if j.handle is None or not j.handle.delivered]
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
            if queue_:
                self._waiting[key] = queue_
            else:
                del self._waiting[key]
        return out

    def fallback_image(self, job: "_Job") -> tuple[np.ndarray, str, str]:
        """The best classical image of ``job``'s frame the stream has now: ``(pixels, ReconMethod, CoilMaps)``.

        View-sharing SENSE of the target (exactly the network's target
        input: its own lines, the rest from the latest frames that measured
        them, frame t+1's too when centred) is several dB above the
        zero-filled image at high acceleration and costs one FFT per coil.
        """
        shared = job.window_shared
        target = None if shared is None else shared[2 if self.windows.causal else 1]
        if target is None:
            return (job.conventional, job.conventional_meta.get("ReconMethod", "zero-filled"),
                    job.conventional_meta.get("CoilMaps", "none"))
        maps, source = (job.maps, job.coil_source) if job.maps is not None else self.cache.get(job.window.group[0])
        coil_images = ifft2c(target)
        if maps is None:
            return rss(coil_images).astype(np.complex64), "view-sharing RSS", "none"
        return sense_combine(coil_images, maps).astype(np.complex64), "view-sharing SENSE", source

    def _fallback(self, job: "_Job", reason: str) -> ismrmrd.Image:
        w = job.window
        with self._count_lock:
            if reason not in self._reasons:
                log.warning("%s fallback to the classical image (frame %s %d): %s", self.entry.label, w.group, w.t, reason)
                self._reasons.add(reason)
            self.counts["fallback"] += 1
        pixels, method, coil_source = self.fallback_image(job)
        meta = {**self.meta, "ReconMethod": method, "CoilMaps": coil_source, "Fallback": reason,
                "Window": ",".join(map(str, w.times))}
        return image_from_frame(job.frame, pixels, self.header, series_index=self.series, meta=meta)

    fallback_for = _fallback

    def on_model_meta(self) -> None:
        if self.inputs == "auto":
            # what the weights were trained on; a model that cannot say predates view sharing
            self.inputs = self.meta.get("ModelInputs", "zero-filled")
        self.meta["ModelInputs"] = self.inputs

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
                                                 self.mode == "causal", model=self.model)
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
                self.count("model")
                meta = {**self.meta, "ReconMethod": self.recon_method, "CoilMaps": job.coil_source,
                        "Window": ",".join(map(str, job.window.times)), "InferenceMs": f"{ms:.1f}",
                        "Batch": str(len(todo))}
                results[i] = image_from_frame(job.frame, images[j], self.header, series_index=self.series, meta=meta)
        return [results[i] for i in range(len(jobs))]

    run_jobs = execute


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
    handle: ScheduledJob | None = None  # its place in the scheduler (deadline, delivered)


def attach_scheduler(stream: KGMgTStream, send: Callable[[ismrmrd.Image], None], max_pending: int = 64,
                     max_lag_ms: float = 0.0, clock: Timebase = WALL_CLOCK) -> RealtimeScheduler:
    """Run ``stream``'s model beside its frame path (:meth:`gadgets.model_gadget.ModelStream.attach_scheduler`)."""
    return stream.attach_scheduler(send, max_pending, max_lag_ms, clock)


reconstruct = model_gadget.gadget(KGMgTStream)


def preload(config: Any, settings: Any = None) -> str:
    """Host hook: load the cine model this configuration uses before the first scan arrives."""
    return model_gadget.preload(config, KGMgTStream.OPERATION, settings)
