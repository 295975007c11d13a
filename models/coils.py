"""Coil sensitivity estimation and coil combination (NumPy).

Shapes: multi-coil arrays are ``(coils, ny, nx)`` with ``ny`` the
phase-encode axis and ``nx`` the readout axis; k-space follows
:mod:`models.fft`'s centered convention.

The sensitivity maps are the low-resolution coil images divided by their
root-sum-of-squares ("ratio" maps). They therefore absorb the image's
low-resolution phase; a SENSE-combined image is close to real-valued, and
``A = M F S`` with these maps reproduces the measured k-space, which is all
data consistency needs.
"""
from __future__ import annotations

import numpy as np

from .fft import fft2c, ifft2c
from .masks import centre_run

_EPS = 1e-12


def rss(coil_images: np.ndarray, axis: int = 0) -> np.ndarray:
    """Root-sum-of-squares magnitude over the coil axis."""
    return np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=axis))


def calibration_region(kspace: np.ndarray, sampled_lines: np.ndarray | None = None) -> tuple[int, int]:
    """The largest contiguous run of sampled phase-encode lines around the centre.

    ``kspace`` is ``(coils, ny, nx)``; a line counts as sampled when
    ``sampled_lines`` says so or, if not given, when it holds any non-zero
    sample. Returns ``(start, stop)`` line indices (stop exclusive); an
    empty run returns ``(c, c)`` with ``c = ny // 2``.
    """
    if sampled_lines is None:
        sampled_lines = np.any(np.abs(kspace) > 0, axis=tuple(i for i in range(kspace.ndim) if i != kspace.ndim - 2))
    return centre_run(sampled_lines)


def estimate_coil_maps(
    calib_kspace: np.ndarray,
    calib_lines: tuple[int, int] | None = None,
    threshold: float = 0.02,
) -> np.ndarray:
    """Coil sensitivity maps from the calibration (fully sampled centre) region.

    ``calib_kspace`` is ``(coils, ny, nx)`` on the full matrix with zeros
    outside the calibration lines (or a time-averaged k-space whose centre is
    dense). ``calib_lines`` bounds the region used; by default the
    contiguous sampled run around the centre. A Hann window over that
    region suppresses ringing. Pixels whose RSS falls below ``threshold``
    times the maximum get zero sensitivity (outside the body).
    Returns ``(coils, ny, nx)`` complex64 maps with ``sum |S|^2 == 1``
    inside the support.
    """
    calib_kspace = np.asarray(calib_kspace)
    if calib_kspace.ndim != 3:
        raise ValueError(f"calibration k-space must be (coils, ny, nx), got shape {calib_kspace.shape}")
    ncoil, ny, nx = calib_kspace.shape
    start, stop = calib_lines if calib_lines is not None else calibration_region(calib_kspace)
    if stop - start < 2:
        raise ValueError(f"no usable calibration region (lines {start}..{stop}) to estimate coil maps")
    window = np.zeros(ny, dtype=np.float32)
    window[start:stop] = np.hanning(stop - start + 2)[1:-1]
    # Also window the readout to the same relative width: the calibration
    # block is small in ky only, but a full-width readout would keep
    # high-resolution x detail in the maps.
    width_x = max(4, int(round(nx * (stop - start) / ny)))
    wx = np.zeros(nx, dtype=np.float32)
    x0 = nx // 2 - width_x // 2
    wx[x0:x0 + width_x] = np.hanning(width_x + 2)[1:-1]
    lowres = ifft2c(calib_kspace * window[None, :, None] * wx[None, None, :])
    norm = rss(lowres)
    support = norm > threshold * norm.max()
    maps = np.where(support[None], lowres / np.maximum(norm, _EPS)[None], 0)
    return maps.astype(np.complex64)


def sense_combine(coil_images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Least-squares coil combination ``sum(conj(S) x) / sum(|S|^2)`` over axis 0."""
    num = np.sum(np.conj(maps) * coil_images, axis=0)
    den = np.sum(np.abs(maps) ** 2, axis=0)
    return np.where(den > _EPS, num / np.maximum(den, _EPS), 0).astype(np.complex64)


def coil_combine(coil_images: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
    """SENSE combination when maps are given, root-sum-of-squares otherwise."""
    if maps is None:
        return rss(coil_images).astype(np.complex64)
    if maps.shape != coil_images.shape:
        raise ValueError(f"coil maps {maps.shape} do not match coil images {coil_images.shape}")
    return sense_combine(coil_images, maps)


def zero_filled(kspace: np.ndarray, maps: np.ndarray | None = None) -> np.ndarray:
    """Zero-filled coil-combined image of ``(coils, ny, nx)`` k-space."""
    return coil_combine(ifft2c(kspace), maps)


__all__ = [
    "rss", "calibration_region", "estimate_coil_maps", "sense_combine", "coil_combine", "zero_filled", "fft2c", "ifft2c",
]
