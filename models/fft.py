"""Centered, orthonormal 2-D Fourier transforms.

Convention (as in fastMRI's ``fftc``): k-space centre at index ``n // 2``,
image centre at index ``n // 2``, unitary scaling (``norm="ortho"``), so
``ifft2c(fft2c(x)) == x`` and Parseval holds. The same functions take NumPy
arrays and torch tensors, so the gadgets (NumPy) and the networks (torch)
share one definition of "k-space".
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _centered(x: Any, axes: Sequence[int], inverse: bool) -> Any:
    """``fftshift(F(ifftshift(x)))`` over ``axes`` with the orthonormal (inverse) FFT, NumPy or torch."""
    axes = tuple(axes)
    if _is_torch(x):
        import torch  # inside: NumPy callers (the gadgets' readout crop) never pay for importing torch

        transform = torch.fft.ifftn if inverse else torch.fft.fftn
        return torch.fft.fftshift(transform(torch.fft.ifftshift(x, dim=axes), dim=axes, norm="ortho"), dim=axes)
    transform = np.fft.ifftn if inverse else np.fft.fftn
    return np.fft.fftshift(transform(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)


def fft2c(x: Any, axes: Sequence[int] = (-2, -1)) -> Any:
    """Image -> k-space over ``axes`` (default: the last two)."""
    return _centered(x, axes, inverse=False)


def ifft2c(x: Any, axes: Sequence[int] = (-2, -1)) -> Any:
    """k-space -> image over ``axes`` (default: the last two)."""
    return _centered(x, axes, inverse=True)


def fft1c(x: Any, axis: int = -1) -> Any:
    """Centered orthonormal 1-D FFT along ``axis`` (image -> k-space)."""
    return fft2c(x, axes=(axis,))


def ifft1c(x: Any, axis: int = -1) -> Any:
    """Centered orthonormal 1-D inverse FFT along ``axis`` (k-space -> image)."""
    return ifft2c(x, axes=(axis,))
