"""Complex images <-> two real channels, the networks' convention.

Networks see a complex image as two channels ``(real, imag)`` in NCHW
layout: ``(B, 2, H, W)`` float. Physics (FFTs, coil maps, DC) works on complex
tensors ``(B, H, W)``. These helpers convert between the two without copies
where torch allows it.
"""
from __future__ import annotations

import torch


def to_channels(x: torch.Tensor) -> torch.Tensor:
    """Complex ``(B, H, W)`` -> real ``(B, 2, H, W)`` (real, imag)."""
    if not torch.is_complex(x):
        raise TypeError(f"expected a complex tensor, got {x.dtype}")
    return torch.stack((x.real, x.imag), dim=1)


def from_channels(x: torch.Tensor) -> torch.Tensor:
    """Real ``(B, 2, H, W)`` -> complex ``(B, H, W)``; float32 math for the FFTs."""
    if x.shape[1] != 2:
        raise ValueError(f"expected 2 channels (real, imag), got shape {tuple(x.shape)}")
    x = x.float()
    return torch.complex(x[:, 0], x[:, 1])


__all__ = ["to_channels", "from_channels"]
