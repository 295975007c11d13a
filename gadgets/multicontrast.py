"""SGF-MRI multi-contrast reconstruction as a streaming gadget.

A fully sampled reference contrast guides the reconstruction of an
undersampled target contrast of the same anatomy. Frames arrive as
``ReconData`` (:func:`gadgets.frames.accumulate_frames`, which closes a
reference frame before its target's readouts start); the frame's contrast
counter says which is which (property ``reference_contrast``, default 0:
every other contrast is a target).

- A reference frame yields its conventional image (series
  ``conventional_series_index``, meta ``Role=reference``) at once, and is
  kept by slice position for this stream and in the host's persistent
  :class:`~gadgets.reference_store.ReferenceStore` for later scans of the
  same patient (Gadgetron runs every scan in a new process).
- A target frame yields its conventional image and one SGF-MRI image
  (``series_index``, default 1). Its reference, in order of preference: this
  stream's at the same slice position, else the store's, which must be of
  the same patient and study (hash of the header's subject, study and
  measurement fields), the same frame of reference, slice position and
  orientation, and within the age limit. The image meta says which:
  ``ReferenceSource`` = ``this stream``, ``store`` or ``none: <reason>``.
- Before use the reference is registered to the target (phase correlation
  of edge maps): shifts above ``max_shift_px`` (2) are corrected; a reference
  that does not match the target's anatomy (correlation confidence under
  ``min_match_confidence``, 4.5, or a shift beyond ``max_correctable_shift_px``,
  10) is refused rather than shifted onto it. A target without a usable
  reference is reconstructed single-contrast (``reconstruct_single``) with
  ``Fallback`` naming why; if the model fails or the inference service is
  away, the SGF-MRI series gets the conventional image, flagged in meta.

The model runs beside the frame path (:mod:`gadgets.realtime_scheduler`),
so reference and conventional images never wait for it; targets go to it
in arrival order, and with ``max_lag_ms`` > 0 (default 0: every target gets
the model however long it takes) a target whose image would come later than
that after its frame gets its flagged fallback instead, as in the cine
gadget.

Properties: ``reference_contrast`` (0), ``series_index`` (1),
``conventional_series_index`` (0), ``use_reference_store`` (true),
``model_thread`` (true; false: the model runs inline), ``max_lag_ms`` (0),
``reference_max_age_s`` (may only shorten the host's age limit),
``max_shift_px`` (2.0), ``max_correctable_shift_px`` (10.0),
``min_match_confidence`` (4.5), ``model`` (a :mod:`models.registry` pair
model, default SGF-MRI's entry), and the inference properties of
:func:`gadgets.inference.backend_from_config`. The model worker, fallback
plumbing, settings, coil-map cache (bounded by the operator's
``max_cache_entries``) and meta are the model-gadget base's
(:mod:`gadgets.model_gadget`); this module is the pairing. The store's folder, age limit
and size come from the host (``STREAMRECON_REFERENCE_STORE`` etc., see
:class:`~gadgets.reference_store.StoreSettings`); a ``reference_store``
property sent by a client is ignored.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import ismrmrd
import numpy as np

from models.fft import fft2c, ifft2c

from . import host_settings, model_gadget, properties
from .conventional import conventional_image
from .frames import Frame
from .image_headers import image_from_frame
from .inference import InferenceError
from .model_gadget import ModelStream, pixels_of, recon_kspace
from .realtime_scheduler import RealtimeScheduler
from .reference_store import ReferenceStore, StoreSettings, identity_hash, position_text
from .sent_counts import SentImages

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- registration
def _hann2(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1]))


def _edges(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude of ``|image|`` scaled to its 99th percentile, mean removed, Hann-windowed."""
    a = np.abs(image).astype(np.float64)
    a /= max(float(np.percentile(a, 99)), 1e-12)
    gy = (np.roll(a, -1, 0) - np.roll(a, 1, 0)) / 2
    gx = (np.roll(a, -1, 1) - np.roll(a, 1, 1)) / 2
    g = np.hypot(gy, gx)
    return (g - g.mean()) * _hann2(g.shape)


def _correlation_peak(reference: np.ndarray, target: np.ndarray) -> tuple[int, int, float, float, float]:
    corr = np.real(np.fft.ifft2(np.fft.fft2(_edges(target)) * np.conj(np.fft.fft2(_edges(reference)))))
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    ny, nx = corr.shape

    def refine(c_minus: float, c0: float, c_plus: float) -> float:
        den = c_minus - 2 * c0 + c_plus
        return 0.0 if abs(den) < 1e-12 else float(np.clip(0.5 * (c_minus - c_plus) / den, -0.5, 0.5))

    fy = refine(corr[(iy - 1) % ny, ix], corr[iy, ix], corr[(iy + 1) % ny, ix])
    fx = refine(corr[iy, (ix - 1) % nx], corr[iy, ix], corr[iy, (ix + 1) % nx])
    iy = iy - ny if iy > ny // 2 else iy
    ix = ix - nx if ix > nx // 2 else ix
    confidence = float((corr.max() - corr.mean()) / max(float(corr.std()), 1e-12))
    return int(iy), int(ix), fy, fx, confidence


def rigid_shift(reference: np.ndarray, target: np.ndarray, iterations: int = 3) -> tuple[float, float, float]:
    """Translation ``(dy, dx)`` in pixels that moves ``reference`` onto ``target``, and a confidence.

    Two contrasts share edges, not intensities (T1 and T2 invert tissue
    brightness), so the images compared are their gradient magnitudes
    (:func:`_edges`), cross-correlated through the FFT (whitened phase
    correlation amplified the aliasing and noise of the undersampled target
    in our tests). The window both images share biases a large shift towards
    zero, so the reference is moved by the whole-pixel estimate and the
    residual measured again until it is under a pixel, then refined to
    sub-pixel with a parabola. ``target(x) ~ reference(x - d)`` gives ``d``;
    the confidence is the first peak's height above the correlation's mean
    in standard deviations.
    """
    total_y = total_x = 0
    confidence = None
    fy = fx = 0.0
    moved = reference
    for _ in range(iterations):
        iy, ix, fy, fx, c = _correlation_peak(moved, target)
        confidence = c if confidence is None else confidence
        if iy == 0 and ix == 0:
            break
        total_y, total_x = total_y + iy, total_x + ix
        moved = np.roll(reference, (total_y, total_x), axis=(0, 1))
    return float(total_y + fy), float(total_x + fx), float(confidence)


def shift_image(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``image`` translated by ``(dy, dx)`` rounded to whole pixels (circular): ``out(x) = image(x - d)``.

    Whole pixels, because a Fourier sub-pixel shift rings at the sharp edges
    of anatomy; the residual (at most half a pixel) is below the 2-pixel
    tolerance the correction exists for.
    """
    return np.roll(image, (int(round(dy)), int(round(dx))), axis=(0, 1))


def resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` on another matrix of the same field of view (k-space crop or zero-pad)."""
    if image.shape == tuple(shape):
        return image
    k = fft2c(image)
    out = np.zeros(shape, dtype=np.complex64)
    sy, sx = (min(a, b) for a, b in zip(image.shape, shape))
    iy0, ix0 = (image.shape[0] - sy) // 2, (image.shape[1] - sx) // 2
    oy0, ox0 = (shape[0] - sy) // 2, (shape[1] - sx) // 2
    out[oy0:oy0 + sy, ox0:ox0 + sx] = k[iy0:iy0 + sy, ix0:ix0 + sx]
    scale = np.sqrt(np.prod(shape) / np.prod(image.shape))  # orthonormal FFT: keep pixel values
    return (ifft2c(out) * scale).astype(np.complex64)


# ---------------------------------------------------------------------------- the gadget
class SGFMRIStream(ModelStream):
    """The gadget's state; :func:`reconstruct` drives it from a connection."""

    OPERATION = "pair"

    def __init__(self, header: Any, config: Any, backend=None, settings: host_settings.OperatorSettings | None = None) -> None:
        super().__init__(header, config, backend, settings)
        self.reference_contrast = properties.get(config, "reference_contrast", 0)
        self.max_shift_px = properties.get(config, "max_shift_px", 2.0)
        self.max_correctable_shift_px = properties.get(config, "max_correctable_shift_px", 10.0)
        self.min_match_confidence = properties.get(config, "min_match_confidence", 4.5)
        self.store = None
        if properties.get(config, "use_reference_store", True):
            store_settings = StoreSettings.from_settings(self.settings)
            if self.settings.reference_store:  # the embedded host's operator setting
                store_settings = dataclasses.replace(store_settings, folder=Path(self.settings.reference_store))
            self.store = ReferenceStore(store_settings, max_age_s=properties.get(config, "reference_max_age_s", 0.0) or None)
            try:
                self.store.purge()
            except OSError as exc:
                log.warning("reference store %s: purge failed: %s", self.store.folder, exc)
        self.identity = identity_hash(header)
        info = getattr(header, "measurementInformation", None)
        self.frame_of_reference = str(getattr(info, "frameOfReferenceUID", "") or "")
        self.measurement = str(getattr(info, "measurementID", "") or "")
        self.references: dict[str, np.ndarray] = {}  # this stream's, by slice position text
        self.counts["single"] = 0
        log.info("%s: reference contrast %d, store %s, inference %s", self.entry.label, self.reference_contrast,
                 self.store.folder if self.store else "off", self.backend.label)

    # ---------------------------------------------------------------- references
    def _position(self, frame: Frame) -> tuple[float, float, float]:
        return tuple(float(v) for v in frame.reference_header.position)

    def _keep_reference(self, frame: Frame, image: np.ndarray) -> None:
        pos = self._position(frame)
        self.references[position_text(pos)] = image
        if self.store is not None:
            h = frame.reference_header
            self.store.put(self.identity, self.frame_of_reference, pos, image, {
                "slice_dir": [float(v) for v in h.slice_dir], "read_dir": [float(v) for v in h.read_dir],
                "phase_dir": [float(v) for v in h.phase_dir], "fov_mm": list(self.fov),
                "contrast": int(h.idx.contrast), "measurement_id": self.measurement})

    def _find_reference(self, frame: Frame) -> tuple[np.ndarray | None, str, dict[str, str]]:
        """``(image on the recon matrix or None, ReferenceSource, extra meta)``."""
        pos = self._position(frame)
        local = self.references.get(position_text(pos))
        if local is not None:
            return resample(local, self.recon_shape), "this stream", {}
        if self.store is None:
            return None, f"none: no reference contrast at slice position {position_text(pos)} mm in this stream", {}
        h = frame.reference_header
        stored, why = self.store.get(self.identity, self.frame_of_reference, pos,
                                     slice_dir=[float(v) for v in h.slice_dir])
        if stored is None:
            return None, f"none: {why}", {}
        fov = stored.meta.get("fov_mm", self.fov)
        if not np.allclose(fov[:2], self.fov[:2], rtol=0.01):
            return None, f"none: stored reference field of view {fov[:2]} differs from {self.fov[:2]}", {}
        return resample(stored.image, self.recon_shape), "store", {
            "ReferenceStored": f"{stored.age_s:.0f} s old, measurement {stored.meta.get('measurement_id', '?')}"}

    def _register(self, reference: np.ndarray, zf: np.ndarray, extra: dict[str, str]) -> tuple[np.ndarray | None, str]:
        """The reference aligned to the target, or ``(None, why)`` when it does not match the target's anatomy."""
        dy, dx, peak = rigid_shift(reference, zf)
        extra.update({"ReferenceShift": f"{dy:.1f},{dx:.1f}", "ReferenceShiftConfidence": f"{peak:.1f}"})
        if peak < self.min_match_confidence or np.hypot(dy, dx) > self.max_correctable_shift_px:
            extra["ReferenceAlignment"] = "refused"
            return None, (f"reference does not match the target's anatomy (shift {dy:.1f},{dx:.1f} px, "
                          f"confidence {peak:.1f}; limits {self.max_correctable_shift_px:g} px, "
                          f"{self.min_match_confidence:g})")
        if np.hypot(dy, dx) > self.max_shift_px:
            log.info("reference shifted by (%.1f, %.1f) px against the target: corrected", dy, dx)
            extra["ReferenceAlignment"] = "corrected"
            return shift_image(reference, dy, dx), ""
        extra["ReferenceAlignment"] = "within tolerance"
        return reference, ""

    # ---------------------------------------------------------------- frames
    def add(self, frame: Frame) -> Iterator[ismrmrd.Image]:
        """A frame in; its conventional image out at once, then (targets) the SGF-MRI image."""
        conv = conventional_image(frame, self.header, self.cache, "sense", self.conv_series)
        contrast = int(frame.reference_header.idx.contrast)
        if contrast == self.reference_contrast:
            if frame.acceleration > 1.05:
                log.warning("reference contrast %d is undersampled (R=%.2f); used as it is", contrast, frame.acceleration)
            self._keep_reference(frame, pixels_of(conv))
            conv.meta = {**conv.meta, "Role": "reference"}
            yield conv
            return
        conv.meta = {**conv.meta, "Role": "target"}
        yield conv
        if self.scheduler is not None:  # its model image leaves from the scheduler's thread
            self.scheduler.submit((frame, conv))
            return
        yield self._target(frame, conv)

    def _fallback(self, frame: Frame, conv: ismrmrd.Image, reason: str, extra: dict) -> ismrmrd.Image:
        log.warning("%s fallback to the conventional image: %s", self.entry.label, reason)
        self.count("fallback")
        meta = {**self.meta, **extra, "ReconMethod": conv.meta.get("ReconMethod", "zero-filled"), "Fallback": reason}
        return image_from_frame(frame, pixels_of(conv), self.header, series_index=self.series, meta=meta)

    def fallback_for(self, job: tuple[Frame, ismrmrd.Image], reason: str) -> ismrmrd.Image:
        return self._fallback(job[0], job[1], reason, {})

    def run_jobs(self, jobs: list[tuple[Frame, ismrmrd.Image]]) -> list[ismrmrd.Image]:
        return [self._target(frame, conv) for frame, conv in jobs]  # one model call each, in order

    def summary(self, sent: SentImages) -> str:
        return (f"{self.counts['model']} with reference, {self.counts['single']} single-contrast, "
                f"{self.counts['fallback']} fallbacks")

    def _target(self, frame: Frame, conv: ismrmrd.Image) -> ismrmrd.Image:
        zf = pixels_of(conv).astype(np.complex64)
        reference, source, found = self._find_reference(frame)
        extra: dict[str, str] = {"CoilMaps": conv.meta.get("CoilMaps", "none"), **found}
        if reference is not None:
            reference, refused = self._register(reference, zf, extra)
            if reference is None:
                log.warning("%s reference refused: %s", source, refused)
                source = f"none: {source} reference refused, {refused}"
        extra["ReferenceSource"] = source
        why = source[len("none: "):]
        maps, _ = self.cache.get(frame.reference_header.idx.slice)
        if maps is None:
            return self._fallback(frame, conv, "no coil maps yet (too few calibration lines)", extra)
        try:
            k, m = recon_kspace(frame.kspace, frame.sampled, self.recon_shape)
        except ValueError as exc:
            return self._fallback(frame, conv, str(exc), extra)
        ref_in = None if reference is None else np.abs(reference).astype(np.complex64)[None]
        self.model_ready()
        start = time.perf_counter()
        try:
            out = self.backend.pair_batch(ref_in, zf[None], k[None], m[None], maps[None], model=self.model)
            if out.shape != (1,) + self.recon_shape or not np.all(np.isfinite(out)):
                raise InferenceError(f"model returned {out.shape} / non-finite pixels")
        except Exception as exc:
            return self._fallback(frame, conv, str(exc) if isinstance(exc, InferenceError) else f"{type(exc).__name__}: {exc}", extra)
        ms = (time.perf_counter() - start) * 1000.0
        meta = {**self.meta, **extra, "ReconMethod": self.recon_method, "InferenceMs": f"{ms:.1f}"}
        self.count("single" if reference is None else "model")
        if reference is None:
            meta["Fallback"] = f"single-contrast (no usable reference: {why})"
            log.warning("%s single-contrast reconstruction: %s", self.entry.label, why)
        return image_from_frame(frame, out[0], self.header, series_index=self.series, meta=meta)


reconstruct = model_gadget.gadget(SGFMRIStream)


def attach_scheduler(stream: SGFMRIStream, send: Callable[[ismrmrd.Image], None], max_lag_ms: float = 0.0,
                     max_pending: int = 64) -> RealtimeScheduler:
    """Run ``stream``'s targets through the model on its own thread; their images go to ``send`` (thread-safe)."""
    return stream.attach_scheduler(send, max_pending, max_lag_ms)


def preload(config: Any, settings: Any = None) -> str:
    """Host hook: load the multi-contrast model this configuration uses before the first scan arrives."""
    return model_gadget.preload(config, SGFMRIStream.OPERATION, settings)
