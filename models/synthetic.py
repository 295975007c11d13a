"""Synthetic physics for retrospective simulation (NumPy only).

Everything a magnitude image lacks before it can become multi-coil k-space:
a smooth image phase, coil sensitivity maps and (for static images) motion.

Conventions: images are ``(ny, nx)`` with ``ny`` the phase-encode (row) axis
and ``nx`` the readout (column) axis; pixel coordinates are centred on
``(ny // 2, nx // 2)`` like :mod:`models.fft`. All functions are
deterministic for a given ``seed``.
"""
from __future__ import annotations

import numpy as np

from .coils import rss


def centred_grid(ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates in [-1, 1) with 0 at index ``n // 2`` (rows y, columns x)."""
    y = (np.arange(ny) - ny // 2) / max(ny / 2, 1)
    x = (np.arange(nx) - nx // 2) / max(nx / 2, 1)
    return np.meshgrid(y, x, indexing="ij")


def smooth_phase(shape: tuple[int, int], *, seed: int = 0, max_rad: float = np.pi) -> np.ndarray:
    """A smooth, low-order image phase in radians, ``float32`` of ``shape``.

    A random combination of 2-D polynomials up to second order plus one
    long-wavelength cosine, the kind of phase B0 offsets and receive-coil
    phase leave on a coil-combined image. Scaled so that its largest
    absolute value is ``max_rad``.
    """
    ny, nx = shape
    rng = np.random.default_rng(seed)
    yy, xx = centred_grid(ny, nx)
    terms = [np.ones_like(xx), xx, yy, xx * yy, xx ** 2 - 1 / 3, yy ** 2 - 1 / 3]
    coef = rng.normal(size=len(terms))
    phase = sum(c * t for c, t in zip(coef, terms))
    ang, f = rng.uniform(0, np.pi), rng.uniform(0.4, 0.9)
    phase = phase + rng.normal() * np.cos(np.pi * f * (np.cos(ang) * xx + np.sin(ang) * yy) + rng.uniform(0, 2 * np.pi))
    peak = np.abs(phase).max()
    return (phase * (max_rad / max(peak, 1e-12))).astype(np.float32)


def coil_maps(n_coils: int, ny: int, nx: int, *, seed: int = 0, radius: float = 1.25, loop_radius: float = 0.45) -> np.ndarray:
    """Synthetic receive-coil sensitivities, ``(coils, ny, nx)`` complex64.

    Each coil is a small circular loop placed on an ellipse around the field
    of view (``radius`` in units of the half-FOV; coils beyond 8 go on a
    second ring shifted by half a coil spacing, as in a two-row array). The
    magnitude follows the on-axis Biot-Savart falloff of a loop,
    ``a^2 / (a^2 + d^2)^(3/2)``, with ``d`` the distance to the loop centre;
    the phase is a per-coil constant plus a term growing with distance
    (the B1- field of a loop rotates away from it). The maps are normalised
    so that ``sum_c |S_c|^2 == 1`` at every pixel, which makes the true
    coil combination of the coil images equal the object itself.
    """
    if n_coils < 1:
        raise ValueError("n_coils must be at least 1")
    if n_coils == 1:
        return np.ones((1, ny, nx), dtype=np.complex64)
    rng = np.random.default_rng(seed)
    yy, xx = centred_grid(ny, nx)
    per_ring = min(n_coils, 8)
    maps = []
    for c in range(n_coils):
        ring, k = divmod(c, per_ring)
        in_ring = min(per_ring, n_coils - ring * per_ring)
        theta = 2 * np.pi * (k + 0.5 * ring) / in_ring + rng.normal(0, 0.08)
        r = radius * (1 + 0.05 * rng.normal()) + 0.15 * ring
        cy, cx = r * np.sin(theta), r * np.cos(theta)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        a = loop_radius * (1 + 0.1 * rng.normal())
        mag = a ** 2 / (a ** 2 + d2) ** 1.5
        phase = rng.uniform(-np.pi, np.pi) + 0.8 * np.sqrt(d2) + 0.3 * rng.normal() * (xx * np.cos(theta) + yy * np.sin(theta))
        maps.append(mag * np.exp(1j * phase))
    maps = np.stack(maps)
    norm = rss(maps)
    return (maps / norm[None]).astype(np.complex64)


def cardiac_waveform(phase: np.ndarray | float) -> np.ndarray:
    """Contraction state over one cardiac cycle, 0 (end-diastole) .. 1 (end-systole).

    ``phase`` is the fraction of the RR interval since the R wave. Systole
    takes the first ~35 % (ejection), then rapid early filling, diastasis
    and the atrial kick just before the next R wave, shaped as smooth
    cosine segments between those control points.
    """
    p = np.mod(np.asarray(phase, dtype=np.float64), 1.0)
    knots = np.array([0.0, 0.35, 0.55, 0.80, 0.90, 1.0])
    values = np.array([0.0, 1.0, 0.30, 0.18, 0.12, 0.0])
    seg = np.clip(np.searchsorted(knots, p, side="right") - 1, 0, len(knots) - 2)
    t = (p - knots[seg]) / (knots[seg + 1] - knots[seg])
    w = 0.5 - 0.5 * np.cos(np.pi * t)  # smooth (zero slope) at every knot
    return values[seg] + (values[seg + 1] - values[seg]) * w


def bilinear_sample(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample ``image`` (2-D, real or complex) at fractional ``(rows, cols)``, edges clamped."""
    ny, nx = image.shape
    r = np.clip(rows, 0, ny - 1)
    c = np.clip(cols, 0, nx - 1)
    r0 = np.minimum(np.floor(r).astype(int), ny - 2) if ny > 1 else np.zeros_like(r, dtype=int)
    c0 = np.minimum(np.floor(c).astype(int), nx - 2) if nx > 1 else np.zeros_like(c, dtype=int)
    fr, fc = r - r0, c - c0
    r1, c1 = np.minimum(r0 + 1, ny - 1), np.minimum(c0 + 1, nx - 1)
    return ((1 - fr) * (1 - fc) * image[r0, c0] + (1 - fr) * fc * image[r0, c1]
            + fr * (1 - fc) * image[r1, c0] + fr * fc * image[r1, c1])


def periodic_motion(image: np.ndarray, frames: int, *, amplitude_px: float = 3.0, seed: int = 0) -> np.ndarray:
    """Warp a static image by a smooth periodic (cardiac-like) deformation.

    ``image`` is ``(ny, nx)``; returns ``(frames, ny, nx)`` of its dtype
    (complex64 or float32). Frame ``t`` covers cycle fraction ``t / frames``.
    The deformation is a radial contraction towards a centre near the
    middle of the image, confined by a Gaussian envelope (a beating organ
    inside still surroundings), plus a small in-plane translation; its
    magnitude follows :func:`cardiac_waveform` and peaks at
    ``amplitude_px`` pixels. Backward bilinear sampling.
    """
    image = np.asarray(image)
    ny, nx = image.shape
    rng = np.random.default_rng(seed)
    cy = ny / 2 + rng.uniform(-0.08, 0.08) * ny
    cx = nx / 2 + rng.uniform(-0.08, 0.08) * nx
    sigma = 0.22 * min(ny, nx)
    shift_dir = rng.normal(size=2)
    shift_dir /= np.linalg.norm(shift_dir)
    rows, cols = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
    dy, dx = rows - cy, cols - cx
    dist = np.sqrt(dy ** 2 + dx ** 2)
    envelope = np.exp(-0.5 * (dist / sigma) ** 2)
    # Radial unit vector scaled so the displacement is largest at ~sigma from the centre.
    radial = dist / sigma * np.exp(0.5) * envelope
    out_dtype = np.complex64 if np.iscomplexobj(image) else np.float32
    out = np.empty((frames, ny, nx), dtype=out_dtype)
    for t in range(frames):
        s = float(cardiac_waveform(t / frames))
        with np.errstate(invalid="ignore", divide="ignore"):
            uy = np.where(dist > 0, dy / dist, 0.0)
            ux = np.where(dist > 0, dx / dist, 0.0)
        # Contraction: a pixel at output position p shows what was further out.
        disp = amplitude_px * s * radial
        ty = 0.25 * amplitude_px * s * shift_dir[0] * envelope
        tx = 0.25 * amplitude_px * s * shift_dir[1] * envelope
        out[t] = bilinear_sample(image, rows + uy * disp - ty, cols + ux * disp - tx)
    return out


__all__ = ["smooth_phase", "coil_maps", "cardiac_waveform", "bilinear_sample", "periodic_motion"]
