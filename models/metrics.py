"""Image quality metrics on magnitude images, fastMRI conventions.

All metrics compare magnitudes (``abs``) of prediction and reference in the
same units (no rescaling of the prediction); the dynamic range is the
reference's maximum, as in fastMRI's evaluation:

- PSNR = 20 log10(max|ref|) - 10 log10(mean((|pred| - |ref|)^2)), in dB;
- NMSE = ||pred - ref||^2 / ||ref||^2 on magnitudes;
- SSIM with a 7x7 uniform window, K1 = 0.01, K2 = 0.03, data range
  max|ref| (skimage's defaults, which fastMRI uses), averaged over the image.

Arrays of more than two dimensions are scored per 2-D slice over the
last two axes and averaged, which is how the papers report per-volume means.
"""
from __future__ import annotations

import numpy as np


def uniform_filter(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over a ``size`` x ``size`` box with reflected borders (like scipy's)."""
    pad = size // 2
    xp = np.pad(x, ((pad, size - 1 - pad), (pad, size - 1 - pad)), mode="symmetric")
    c = np.cumsum(np.cumsum(xp, axis=0), axis=1)
    c = np.pad(c, ((1, 0), (1, 0)))
    s = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    return s / (size * size)


def _mag_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.abs(np.asarray(pred)).astype(np.float64)
    ref = np.abs(np.asarray(ref)).astype(np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    return pred, ref


def nmse(pred: np.ndarray, ref: np.ndarray) -> float:
    """Normalised mean squared error of the magnitudes."""
    p, r = _mag_pair(pred, ref)
    return float(np.sum((p - r) ** 2) / max(np.sum(r ** 2), 1e-30))


def psnr(pred: np.ndarray, ref: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB; averaged over leading axes."""
    p, r = _mag_pair(pred, ref)
    if p.ndim > 2:
        return float(np.mean([psnr(a, b) for a, b in zip(p.reshape(-1, *p.shape[-2:]), r.reshape(-1, *r.shape[-2:]))]))
    mse = np.mean((p - r) ** 2)
    if mse == 0:
        return float("inf")
    return float(20 * np.log10(max(r.max(), 1e-30)) - 10 * np.log10(mse))


def ssim(pred: np.ndarray, ref: np.ndarray, win_size: int = 7) -> float:
    """Structural similarity; averaged over leading axes."""
    p, r = _mag_pair(pred, ref)
    if p.ndim > 2:
        return float(np.mean([ssim(a, b, win_size) for a, b in zip(p.reshape(-1, *p.shape[-2:]), r.reshape(-1, *r.shape[-2:]))]))
    data_range = max(r.max(), 1e-30)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    n = win_size ** 2
    cov_norm = n / (n - 1)
    ux = uniform_filter(p, win_size)
    uy = uniform_filter(r, win_size)
    uxx = uniform_filter(p * p, win_size)
    uyy = uniform_filter(r * r, win_size)
    uxy = uniform_filter(p * r, win_size)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return float(s[pad:-pad or None, pad:-pad or None].mean())


__all__ = ["psnr", "ssim", "nmse"]
