"""Conventional reconstruction: coil-combined, one image per frame.

This is the baseline every model is compared with and the fallback when a
model fails. Coil sensitivities come from the frame's parallel-calibration
lines when it has them (a separate reference scan's lines are kept for the
frames after it), otherwise from the time-averaged k-space centre of the
frames seen so far on that slice (undersampling patterns that move from
frame to frame fill the centre in, as a time-interleaved TSENSE calibration
does); until either gives a usable calibration region the coils are
combined by root-sum-of-squares.

An undersampled frame of a scan whose header declares in-plane parallel
imaging (``encoding.parallelImaging.accelerationFactor``, e.g. Siemens
iPAT 2) is unfolded by CG-SENSE with those maps (:class:`ParallelImaging`):
what a scanner's own reconstruction shows for its standard accelerated
scans. Every other frame is zero-filled exactly as before: the
deep-learning pipelines' conventional series (their baseline, labelled
zero-filled) never unfolds, and neither does unaccelerated data.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import ismrmrd
import numpy as np
from models.coils import calibration_region, estimate_coil_maps, rss, sense_combine
from models.fft import ifft2c

from . import host_settings, properties
from .errors import reports_errors
from .frames import Frame, frames_from
from .image_headers import image_from_frame, recon_geometry
from .samples import zeroed_lines

log = logging.getLogger(__name__)

MIN_CALIBRATION_LINES = 12


def fit_kspace(kspace: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad ``(..., ny, nx)`` k-space up to at least ``shape`` (interpolation for smaller encodings)."""
    pad = [(0, 0)] * (kspace.ndim - 2)
    for have, want in zip(kspace.shape[-2:], shape):
        extra = max(0, want - have)
        pad.append((extra // 2, extra - extra // 2))
    return np.pad(kspace, pad) if any(p != (0, 0) for p in pad) else kspace


def crop_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Central ``shape`` of ``(..., ny, nx)`` (drops oversampled field of view)."""
    ny, nx = image.shape[-2:]
    y0, x0 = (ny - shape[0]) // 2, (nx - shape[1]) // 2
    return image[..., y0:y0 + shape[0], x0:x0 + shape[1]]


def coil_images(kspace: np.ndarray, recon_shape: tuple[int, int]) -> np.ndarray:
    """``(coils, ny, nx)`` k-space -> coil images on the recon matrix."""
    return crop_image(ifft2c(fit_kspace(kspace, recon_shape)), recon_shape)


@dataclass
class CoilMapCache:
    """Per-slice coil maps: from calibration lines, else from the time-averaged centre."""

    recon_shape: tuple[int, int]
    max_calibration_lines: int = 32
    max_entries: int = 64  # slices kept; a stream inventing new slice numbers must not grow memory
    maps: dict = field(default_factory=dict)
    grid_maps: dict = field(default_factory=dict)  # the same maps before the crop to the recon matrix (for SENSE)
    sources: dict = field(default_factory=dict)
    _sum: dict = field(default_factory=dict)
    _count: dict = field(default_factory=dict)

    def _from_kspace(self, kspace: np.ndarray, sampled: np.ndarray) -> np.ndarray | None:
        start, stop = calibration_region(kspace, sampled)
        if stop - start < MIN_CALIBRATION_LINES:
            return None
        centre = (start + stop) // 2
        half = min(stop - start, self.max_calibration_lines) // 2
        return estimate_coil_maps(fit_kspace(kspace, self.recon_shape), _shifted(centre - half, centre + half, kspace, self.recon_shape))

    def _keep(self, key: Any, grid_maps: np.ndarray, source: str) -> None:
        self.maps[key], self.grid_maps[key] = crop_image(grid_maps, self.recon_shape), grid_maps
        self.sources[key] = source

    def _evict_for(self, key: Any) -> None:
        known = list(dict.fromkeys([*self.maps, *self._sum]))
        while key not in known and len(known) >= max(1, self.max_entries):
            old = known.pop(0)
            for d in (self.maps, self.grid_maps, self.sources, self._sum, self._count):
                d.pop(old, None)

    def update(self, key: Any, frame: Frame) -> None:
        self._evict_for(key)
        if frame.calibration is not None:
            maps = self._from_kspace(frame.calibration, frame.calibration_sampled)
            if maps is not None:
                self._keep(key, maps, "calibration lines")
                return
        if key in self.maps:
            return
        total = self._sum.get(key)
        if total is None:
            total = self._sum[key] = np.zeros_like(frame.kspace)
            self._count[key] = np.zeros(frame.kspace.shape[1], np.int32)
        total += frame.kspace
        self._count[key] += frame.sampled
        counts = self._count[key]
        average = total / np.maximum(counts, 1)[None, :, None]
        maps = self._from_kspace(average, counts > 0)
        if maps is not None:
            self._keep(key, maps, "time-averaged k-space centre")
            del self._sum[key], self._count[key]  # no longer needed: keep memory flat

    def get(self, key: Any) -> tuple[np.ndarray | None, str]:
        return self.maps.get(key), self.sources.get(key, "none")

    def get_grid(self, key: Any) -> np.ndarray | None:
        """The maps on the k-space grid (before the crop to the recon matrix), as SENSE unfolding needs."""
        return self.grid_maps.get(key)


def _shifted(start: int, stop: int, kspace: np.ndarray, shape: tuple[int, int]) -> tuple[int, int]:
    # Line indices move when fit_kspace pads the phase-encode axis.
    extra = max(0, shape[0] - kspace.shape[-2])
    return start + extra // 2, stop + extra // 2


def combine(images: np.ndarray, maps: np.ndarray | None) -> tuple[np.ndarray, str]:
    """SENSE combination with maps, root-sum-of-squares without."""
    if maps is None:
        return rss(images).astype(np.complex64), "RSS"
    return sense_combine(images, maps), "SENSE"


PARALLEL_IMAGING_CHOICES = ("auto", "on", "off")


def header_parallel_imaging(header: Any) -> tuple[int, str]:
    """In-plane acceleration factor and calibration mode the header declares (``(1, "")`` when none)."""
    pi = getattr(header.encoding[0], "parallelImaging", None)
    if pi is None:
        return 1, ""
    factor = getattr(getattr(pi, "accelerationFactor", None), "kspace_encoding_step_1", None)
    mode = getattr(pi, "calibrationMode", None)
    return max(1, int(factor or 1)), str(getattr(mode, "value", mode) or "")


@dataclass(frozen=True)
class ParallelImaging:
    """CG-SENSE unfolding of undersampled frames with the cached coil maps.

    ``argmin ||M F S x - y||^2 + lam ||x||^2`` on the frame's k-space grid
    (``models.baselines.cg_sense``, ``iterations`` conjugate-gradient steps),
    then cropped to the recon matrix. CG-SENSE rather than GRAPPA: it needs
    no regular pattern (embedded calibration lines, partial Fourier, shifted
    or irregular lines all fit the same model), uses the coil maps the
    series already keeps, and its cost per frame is a few coil FFTs per
    iteration. With an embedded calibration the calibration-only lines are
    measured in the same frame, so they join the data; a separate reference
    scan's (or an interleaved calibration's) lines only give the maps.
    """

    acceleration: int = 1
    calibration_mode: str = ""
    lam: float = 1e-3
    iterations: int = 15

    @classmethod
    def for_header(cls, header: Any, choice: str, lam: float = 1e-3, iterations: int = 15) -> "ParallelImaging | None":
        """The unfolding ``choice`` ("auto": when the header declares acceleration, "on", "off") asks for, or None."""
        if choice not in PARALLEL_IMAGING_CHOICES:
            raise ValueError(f"property 'parallel_imaging' must be one of {PARALLEL_IMAGING_CHOICES}, not {choice!r}")
        if not 0 <= lam < 1 or not 1 <= iterations <= 100:
            raise ValueError(f"parallel imaging needs 0 <= pi_lambda < 1 and 1 <= pi_iterations <= 100, "
                             f"not {lam} and {iterations}")
        factor, mode = header_parallel_imaging(header)
        if choice == "off" or (choice == "auto" and factor <= 1):
            return None
        return cls(factor, mode, lam, iterations)

    def describe(self) -> str:
        mode = f", {self.calibration_mode} calibration" if self.calibration_mode else ""
        return f"CG-SENSE, header R={self.acceleration}{mode}, {self.iterations} iterations"

    def unfold(self, frame: Frame, grid_maps: np.ndarray, recon_shape: tuple[int, int]) -> np.ndarray | None:
        """The unfolded ``(ny, nx)`` image on the recon matrix, or None when the frame misses no line."""
        kspace, sampled = frame.kspace, frame.sampled
        if self.calibration_mode == "embedded" and frame.calibration is not None:
            extra = frame.calibration_sampled & ~sampled
            if extra.any():
                kspace = kspace.copy()
                kspace[:, extra] = frame.calibration[:, extra]
                sampled = sampled | extra
        lim = frame.sampling.sampling_limits[1]
        if sampled[int(lim.min):int(lim.max) + 1].all():
            return None
        grid = fit_kspace(kspace, recon_shape)
        extra = grid.shape[-2] - sampled.shape[0]  # the lines fit_kspace padded on
        lines = np.pad(sampled, (extra // 2, extra - extra // 2))
        if grid_maps.shape != grid.shape:
            raise ValueError(f"coil maps {grid_maps.shape} do not fit the frame's k-space grid {grid.shape}")
        from models.baselines import cg_sense  # torch: imported only when a frame needs unfolding

        image = cg_sense(grid[None], lines[None], grid_maps, lam=self.lam, iterations=self.iterations)[0]
        return crop_image(image, recon_shape)


@reports_errors
def reconstruct(connection: Any) -> None:
    """Gadget: ``ReconData`` frames in, one complex image per frame out (zero-filled, or unfolded by CG-SENSE).

    Properties: ``series_index`` (default 0), ``combine`` ("sense" or
    "rss", default "sense"), ``max_calibration_lines`` (default 32),
    ``parallel_imaging`` ("auto": unfold undersampled frames when the header
    declares an in-plane acceleration; "on": also when it does not; "off":
    always zero-filled), ``pi_iterations`` (15) and ``pi_lambda`` (1e-3,
    relative to ``||A^H A|| <= 1``) of the CG-SENSE unfolding.
    """
    cfg = connection.config
    series = properties.get(cfg, "series_index", 0)
    method = properties.get(cfg, "combine", "sense").lower()
    if method not in ("sense", "rss"):
        raise ValueError(f"property 'combine' must be 'sense' or 'rss', not {method!r}")
    settings = host_settings.for_connection(connection)
    host_settings.check_header(connection.header, settings)
    parallel = ParallelImaging.for_header(connection.header, properties.get(cfg, "parallel_imaging", "auto").lower(),
                                          properties.get(cfg, "pi_lambda", 1e-3), properties.get(cfg, "pi_iterations", 15))
    if parallel is not None and method != "sense":
        log.info("parallel imaging needs coil maps: combine=%s leaves frames zero-filled", method)
        parallel = None
    if parallel is not None:
        log.info("parallel imaging: %s", parallel.describe())
    recon_shape, _ = recon_geometry(connection.header)
    cache = CoilMapCache(recon_shape, properties.get(cfg, "max_calibration_lines", 32), max_entries=settings.max_cache_entries)
    for item in connection:
        if not hasattr(item, "bits"):
            connection.send(item)
            continue
        for frame in frames_from(item):
            connection.send(conventional_image(frame, connection.header, cache, method, series, parallel))


def conventional_image(frame: Frame, header: Any, cache: CoilMapCache, method: str = "sense",
                       series_index: int = 0, parallel: ParallelImaging | None = None) -> ismrmrd.Image:
    """The coil-combined image of one frame: zero-filled (also the models' fallback), or unfolded by ``parallel``."""
    key = frame.reference_header.idx.slice
    maps, source = None, "none"
    if method == "sense":
        if not zeroed_lines(frame.headers, frame.calibration_headers):
            cache.update(key, frame)  # maps are never estimated from lines that had non-finite samples
        maps, source = cache.get(key)
    unfolded, note = None, ""
    if parallel is not None:
        if maps is None:
            note = "not applied: no coil maps yet"
        else:
            unfolded = parallel.unfold(frame, cache.get_grid(key), cache.recon_shape)
            note = parallel.describe() if unfolded is not None else "not needed: no line missing"
    if unfolded is not None:
        pixels, recon = unfolded, "parallel imaging (CG-SENSE)"
    else:
        pixels, how = combine(coil_images(frame.kspace, cache.recon_shape), maps)
        recon = f"zero-filled {how}" + (f" (parallel imaging {note})" if note else "")
    meta = {"ReconMethod": recon, "CoilMaps": source}
    if note:
        meta["ParallelImaging"] = note
    return image_from_frame(frame, pixels, header, series_index=series_index, meta=meta)
