"""SENSE forward and adjoint operators in torch: ``A = M F S`` and ``A^H``.

Shapes (batch first, complex tensors):

- image ``x``: ``(B, ny, nx)`` complex;
- coil maps ``S``: ``(B, C, ny, nx)`` complex, or ``None`` for single-coil
  data (then ``S = 1`` and k-space is ``(B, 1, ny, nx)``);
- k-space ``y``: ``(B, C, ny, nx)`` complex, zeros where not sampled;
- mask ``M``: anything broadcastable to ``(B, 1, ny, nx)``: a line mask
  ``(B, ny)`` or ``(ny,)`` is expanded over the readout by :func:`expand_mask`.

``F`` is :func:`models.fft.fft2c` (centered, orthonormal), so ``A^H`` is the
exact adjoint of ``A`` (tested with the dot-product test) and
``||A|| <= 1`` when ``sum_c |S_c|^2 <= 1`` -- which makes the gradient form of
data consistency a contraction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .fft import fft2c, ifft2c


def expand_mask(mask: torch.Tensor, ny: int, nx: int) -> torch.Tensor:
    """Any accepted mask layout -> float ``(B or 1, 1, ny, nx)``.

    Accepts ``(ny,)`` and ``(B, ny)`` line masks (phase-encode lines, the
    readout fully sampled), ``(ny, nx)``, ``(B, ny, nx)`` and
    ``(B, 1, ny, nx)`` pixel masks.
    """
    m = mask
    if m.dtype == torch.bool or not torch.is_floating_point(m):
        m = m.float()
    if m.ndim == 1:
        if m.shape[0] != ny:
            raise ValueError(f"line mask has {m.shape[0]} lines, image has {ny}")
        return m.view(1, 1, ny, 1).expand(1, 1, ny, nx)
    if m.ndim == 2 and m.shape == (ny, nx):
        return m.view(1, 1, ny, nx)
    if m.ndim == 2 and m.shape[1] == ny:
        return m.view(m.shape[0], 1, ny, 1).expand(m.shape[0], 1, ny, nx)
    if m.ndim == 3 and m.shape[-2:] == (ny, nx):
        return m.unsqueeze(1)
    if m.ndim == 4 and m.shape[-2:] == (ny, nx) and m.shape[1] == 1:
        return m
    raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit an image of {ny}x{nx}")


def coil_images(x: torch.Tensor, maps: torch.Tensor | None) -> torch.Tensor:
    """``S x``: ``(B, ny, nx)`` -> ``(B, C, ny, nx)`` (``C = 1`` without maps)."""
    return x.unsqueeze(1) if maps is None else maps * x.unsqueeze(1)


def coil_combine_adjoint(images: torch.Tensor, maps: torch.Tensor | None) -> torch.Tensor:
    """``S^H z``: ``(B, C, ny, nx)`` -> ``(B, ny, nx)``."""
    if maps is None:
        return images[:, 0]
    return torch.sum(torch.conj(maps) * images, dim=1)


def sense_forward(x: torch.Tensor, maps: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """``A x = M F S x``: image ``(B, ny, nx)`` -> k-space ``(B, C, ny, nx)``."""
    ny, nx = x.shape[-2:]
    return expand_mask(mask, ny, nx) * fft2c(coil_images(x, maps))


def sense_adjoint(y: torch.Tensor, maps: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """``A^H y = S^H F^H M y``: k-space ``(B, C, ny, nx)`` -> image ``(B, ny, nx)``."""
    ny, nx = y.shape[-2:]
    return coil_combine_adjoint(ifft2c(expand_mask(mask, ny, nx) * y), maps)


@dataclass
class SenseOperator:
    """``A = M F S`` bound to one set of maps and one mask; composable.

    ``op(x)`` is the forward, ``op.H(y)`` the adjoint, ``op.normal(x)`` is
    ``A^H A x`` (what CG-SENSE and gradient DC iterate on).
    """

    mask: torch.Tensor
    maps: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return sense_forward(x, self.maps, self.mask)

    def H(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802 - the adjoint's usual name
        return sense_adjoint(y, self.maps, self.mask)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.H(self(x))


def conjugate_gradient(normal, rhs: torch.Tensor, x0: torch.Tensor | None = None, iterations: int = 10,
                       tol: float = 1e-6) -> torch.Tensor:
    """Solve ``normal(x) = rhs`` for a Hermitian positive (semi)definite operator.

    Batched: each batch item runs its own step sizes (``rhs`` is ``(B, ...)``
    complex). Stops early when every item's residual norm falls below
    ``tol`` times its initial norm.
    """
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - normal(x) if x0 is not None else rhs.clone()
    p = r.clone()
    dims = tuple(range(1, rhs.ndim))
    rs = torch.sum((r.conj() * r).real, dim=dims)
    rs0 = rs.clamp_min(1e-30)
    shape = (-1,) + (1,) * (rhs.ndim - 1)
    for _ in range(iterations):
        ap = normal(p)
        pap = torch.sum((p.conj() * ap).real, dim=dims)
        alpha = torch.where(pap > 0, rs / pap.clamp_min(1e-30), torch.zeros_like(rs))
        x = x + alpha.view(shape) * p
        r = r - alpha.view(shape) * ap
        rs_new = torch.sum((r.conj() * r).real, dim=dims)
        if bool(torch.all(rs_new <= (tol ** 2) * rs0)):
            break
        beta = torch.where(rs > 0, rs_new / rs.clamp_min(1e-30), torch.zeros_like(rs))
        p = r + beta.view(shape) * p
        rs = rs_new
    return x


__all__ = [
    "expand_mask", "coil_images", "coil_combine_adjoint", "sense_forward", "sense_adjoint",
    "SenseOperator", "conjugate_gradient",
]
