"""KGMgT cine reconstruction as a streaming gadget: a sliding window of frames.

Frames (``ReconData`` from :func:`gadgets.frames.accumulate_frames`) arrive
one by one. For every (slice, contrast, set) the gadget keeps the frames a
window still needs: each frame's measured multi-coil k-space on the recon
matrix and its line mask. Frame ``t`` is reconstructed from the zero-filled
SENSE images of

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
(32), ``max_batch`` (8, windows released together run as one batch), and the
inference properties of :func:`gadgets.inference.backend_from_config`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ismrmrd
import numpy as np

from models.coils import sense_combine
from models.fft import fft1c, ifft1c, ifft2c

from . import properties
from .conventional import CoilMapCache, conventional_image
from .errors import reports_errors
from .frames import Frame, frames_from, time_dimension
from .image_headers import image_from_frame, recon_geometry
from .inference import InferenceError, backend_from_config, model_meta

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

    def _wrap(self, t: int) -> int:
        return t % self.period if self.period else t

    def neighbours(self, t: int) -> tuple[int, int]:
        """The two other frames of ``t``'s window: (t-1, t+1) centered, (t-2, t-1) causal."""
        a, b = (t - 2, t - 1) if self.causal else (t - 1, t + 1)
        return self._wrap(a), self._wrap(b)

    def _state(self, g: GroupKey, n: int) -> str:
        if n in self.present[g]:
            return "present"
        if self.ended:
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


def _pixels(image: ismrmrd.Image) -> np.ndarray:
    return np.asarray(image.data).reshape(image.data.shape[-2:])


class KGMgTStream:
    """The gadget's state; :func:`reconstruct` drives it from a connection (kept separate for tests)."""

    def __init__(self, header: Any, config: Any, backend=None) -> None:
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
        self.cache = CoilMapCache(self.recon_shape, properties.get(config, "max_calibration_lines", 32))
        self.backend = backend if backend is not None else backend_from_config(config)
        self.meta = {"Model": "KGMgT", "Mode": self.mode, "InferenceBackend": self.backend.label,
                     **model_meta(self.backend, "kgmgt")}
        self.held: dict[GroupKey, dict[int, _Held]] = {}
        self.counts = {"model": 0, "fallback": 0}
        self._reasons: set[str] = set()
        log.info("KGMgT %s over %s (period %s), inference %s, %s %s", self.mode, self.time_dim,
                 self.windows.period, self.backend.label, self.meta.get("Weights"), self.meta.get("ModelVersion"))

    def _key(self, frame: Frame) -> tuple[GroupKey, int]:
        s, c, st, t = frame.key(self.time_dim)
        return (s, c, st), t

    def add(self, frame: Frame) -> list[ismrmrd.Image]:
        """One completed frame in; the images it releases out (conventional first)."""
        out = []
        conv = conventional_image(frame, self.header, self.cache, "sense", self.conv_series)
        if self.emit_conventional:
            out.append(conv)
        g, t = self._key(frame)
        try:
            k, m = recon_kspace(frame.kspace, frame.sampled, self.recon_shape)
        except ValueError as exc:  # kept, so the frame still gets its (fallback) model-series image
            log.warning("frame %s %d: %s", g, t, exc)
            k, m = None, None
        self.held.setdefault(g, {})[t] = _Held(frame, k, m, _pixels(conv), dict(conv.meta))
        out.extend(self._run(self.windows.add(g, t)))
        self._prune(g)
        return out

    def flush(self) -> list[ismrmrd.Image]:
        out = self._run(self.windows.flush())
        for g in list(self.held):
            self._prune(g)
        log.info("KGMgT: %d model images, %d fallbacks%s", self.counts["model"], self.counts["fallback"],
                 f" ({'; '.join(sorted(self._reasons))})" if self._reasons else "")
        return out

    def _prune(self, g: GroupKey) -> None:
        gone = self.windows.droppable(g)
        if gone:
            for t in gone:
                self.held[g].pop(t, None)
            self.windows.drop(g, gone)

    def _run(self, windows: list[Window]) -> list[ismrmrd.Image]:
        out = []
        for i in range(0, len(windows), self.max_batch):
            out.extend(self._run_batch(windows[i:i + self.max_batch]))
        return out

    def _fallback(self, w: Window, reason: str) -> ismrmrd.Image:
        held = self.held[w.group][w.t]
        if reason not in self._reasons:
            log.warning("KGMgT fallback to the conventional image (frame %s %d): %s", w.group, w.t, reason)
            self._reasons.add(reason)
        self.counts["fallback"] += 1
        meta = {**self.meta, "ReconMethod": held.conventional_meta.get("ReconMethod", "zero-filled"),
                "CoilMaps": held.conventional_meta.get("CoilMaps", "none"), "Fallback": reason,
                "Window": ",".join(map(str, w.times))}
        return image_from_frame(held.frame, held.conventional, self.header, series_index=self.series, meta=meta)

    def _run_batch(self, windows: list[Window]) -> list[ismrmrd.Image]:
        results: dict[int, ismrmrd.Image] = {}
        todo = []
        for i, w in enumerate(windows):
            maps, source = self.cache.get(w.group[0])
            group = self.held[w.group]
            if maps is None:
                results[i] = self._fallback(w, "no coil maps yet (too few calibration lines)")
            elif any(group[t].kspace is None for t in w.times):
                results[i] = self._fallback(w, "k-space not representable on the recon matrix")
            else:
                todo.append((i, w, maps, source))
        if todo:
            frames = np.stack([np.stack([sense_combine(ifft2c(self.held[w.group][t].kspace), maps) for t in w.times])
                               for _, w, maps, _ in todo]).astype(np.complex64)
            target = [self.held[w.group][w.t] for _, w, _, _ in todo]
            kspace = np.stack([h.kspace for h in target])
            mask = np.stack([h.mask for h in target])
            maps = np.stack([m for _, _, m, _ in todo])
            start = time.perf_counter()
            try:
                images = self.backend.cine_batch(frames, kspace, mask, maps, self.mode == "causal")
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
            for j, (i, w, _, source) in enumerate(todo):
                if error is not None:
                    results[i] = self._fallback(w, error)
                    continue
                self.counts["model"] += 1
                meta = {**self.meta, "ReconMethod": "KGMgT + k-space DC", "CoilMaps": source,
                        "Window": ",".join(map(str, w.times)), "InferenceMs": f"{ms:.1f}", "Batch": str(len(todo))}
                results[i] = image_from_frame(target[j].frame, images[j], self.header, series_index=self.series,
                                              meta=meta)
        return [results[i] for i in range(len(windows))]


@reports_errors
def reconstruct(connection: Any) -> None:
    """Gadget: ``ReconData`` frames in; conventional and KGMgT images out (module docstring)."""
    stream = KGMgTStream(connection.header, connection.config)
    try:
        for item in connection:
            if not hasattr(item, "bits"):
                connection.send(item)
                continue
            for frame in frames_from(item):
                for image in stream.add(frame):
                    connection.send(image)
    finally:
        # Also on failure: frames still waiting for neighbours get their images.
        for image in stream.flush():
            connection.send(image)
        stream.backend.close()
