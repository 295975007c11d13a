"""Conventional reconstruction: zero-filled, coil-combined, one image per frame.

This is the baseline every model is compared with and the fallback when a
model fails. Coil sensitivities come from the frame's parallel-calibration
lines when it has them, otherwise from the time-averaged k-space centre
of the frames seen so far on that slice (undersampling patterns that move
from frame to frame fill the centre in); until either gives a usable
calibration region the coils are combined by root-sum-of-squares.
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
    sources: dict = field(default_factory=dict)
    _sum: dict = field(default_factory=dict)
    _count: dict = field(default_factory=dict)

    def _from_kspace(self, kspace: np.ndarray, sampled: np.ndarray) -> np.ndarray | None:
        start, stop = calibration_region(kspace, sampled)
        if stop - start < MIN_CALIBRATION_LINES:
            return None
        centre = (start + stop) // 2
        half = min(stop - start, self.max_calibration_lines) // 2
        maps = estimate_coil_maps(fit_kspace(kspace, self.recon_shape), _shifted(centre - half, centre + half, kspace, self.recon_shape))
        return crop_image(maps, self.recon_shape)

    def _evict_for(self, key: Any) -> None:
        known = list(dict.fromkeys([*self.maps, *self._sum]))
        while key not in known and len(known) >= max(1, self.max_entries):
            old = known.pop(0)
            for d in (self.maps, self.sources, self._sum, self._count):
                d.pop(old, None)

    def update(self, key: Any, frame: Frame) -> None:
        self._evict_for(key)
        if frame.calibration is not None:
            maps = self._from_kspace(frame.calibration, frame.calibration_sampled)
            if maps is not None:
                self.maps[key], self.sources[key] = maps, "calibration lines"
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
            self.maps[key], self.sources[key] = maps, "time-averaged k-space centre"
            del self._sum[key], self._count[key]  # no longer needed: keep memory flat

    def get(self, key: Any) -> tuple[np.ndarray | None, str]:
        return self.maps.get(key), self.sources.get(key, "none")


def _shifted(start: int, stop: int, kspace: np.ndarray, shape: tuple[int, int]) -> tuple[int, int]:
    # Line indices move when fit_kspace pads the phase-encode axis.
    extra = max(0, shape[0] - kspace.shape[-2])
    return start + extra // 2, stop + extra // 2


def combine(images: np.ndarray, maps: np.ndarray | None) -> tuple[np.ndarray, str]:
    """SENSE combination with maps, root-sum-of-squares without."""
    if maps is None:
        return rss(images).astype(np.complex64), "RSS"
    return sense_combine(images, maps), "SENSE"


@reports_errors
def reconstruct(connection: Any) -> None:
    """Gadget: ``ReconData`` frames in, one complex zero-filled image per frame out.

    Properties: ``series_index`` (default 0), ``combine`` ("sense" or
    "rss", default "sense"), ``max_calibration_lines`` (default 32).
    """
    cfg = connection.config
    series = properties.get(cfg, "series_index", 0)
    method = properties.get(cfg, "combine", "sense").lower()
    if method not in ("sense", "rss"):
        raise ValueError(f"property 'combine' must be 'sense' or 'rss', not {method!r}")
    settings = host_settings.for_connection(connection)
    host_settings.check_header(connection.header, settings)
    recon_shape, _ = recon_geometry(connection.header)
    cache = CoilMapCache(recon_shape, properties.get(cfg, "max_calibration_lines", 32), max_entries=settings.max_cache_entries)
    for item in connection:
        if not hasattr(item, "bits"):
            connection.send(item)
            continue
        for frame in frames_from(item):
            connection.send(conventional_image(frame, connection.header, cache, method, series))


def conventional_image(frame: Frame, header: Any, cache: CoilMapCache, method: str = "sense",
                       series_index: int = 0) -> ismrmrd.Image:
    """The zero-filled coil-combined image of one frame (also the models' fallback)."""
    key = frame.reference_header.idx.slice
    maps, source = None, "none"
    if method == "sense":
        if not zeroed_lines(frame.headers, frame.calibration_headers):
            cache.update(key, frame)  # maps are never estimated from lines that had non-finite samples
        maps, source = cache.get(key)
    pixels, how = combine(coil_images(frame.kspace, cache.recon_shape), maps)
    return image_from_frame(frame, pixels, header, series_index=series_index, meta={
        "ReconMethod": f"zero-filled {how}",
        "CoilMaps": source,
    })
