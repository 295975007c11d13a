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


def fft2c(x: Any, axes: Sequence[int] = (-2, -1)) -> Any:
    """Image -> k-space over ``axes`` (default: the last two)."""
    axes = tuple(axes)
    if _is_torch(x):
        import torch

        x = torch.fft.ifftshift(x, dim=axes)
        x = torch.fft.fftn(x, dim=axes, norm="ortho")
        return torch.fft.fftshift(x, dim=axes)
    x = np.fft.ifftshift(x, axes=axes)
    x = np.fft.fftn(x, axes=axes, norm="ortho")
    return np.fft.fftshift(x, axes=axes)


def ifft2c(x: Any, axes: Sequence[int] = (-2, -1)) -> Any:
    """k-space -> image over ``axes`` (default: the last two)."""
    axes = tuple(axes)
    if _is_torch(x):
        import torch

        x = torch.fft.ifftshift(x, dim=axes)
        x = torch.fft.ifftn(x, dim=axes, norm="ortho")
        return torch.fft.fftshift(x, dim=axes)
    x = np.fft.ifftshift(x, axes=axes)
    x = np.fft.ifftn(x, axes=axes, norm="ortho")
    return np.fft.fftshift(x, axes=axes)


def fft1c(x: Any, axis: int = -1) -> Any:
    """Centered orthonormal 1-D FFT along ``axis`` (image -> k-space)."""
    return fft2c(x, axes=(axis,))


def ifft1c(x: Any, axis: int = -1) -> Any:
    """Centered orthonormal 1-D inverse FFT along ``axis`` (k-space -> image)."""
    return ifft2c(x, axes=(axis,))
