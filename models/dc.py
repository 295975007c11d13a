"""k-space data consistency (DC) as a torch layer.

Notation: ``x`` the network's image ``(B, ny, nx)`` complex, ``y`` the
measured k-space ``(B, C, ny, nx)`` complex (zeros where not sampled), ``M``
the mask, ``S`` coil maps ``(B, C, ny, nx)`` with ``sum_c |S_c|^2 = 1`` (or
``None`` for single-coil data), ``F`` the centered orthonormal FFT.

Modes
-----
``hard``  measured samples replace predicted ones.
``soft``  with noise weight ``lam >= 0`` (fixed, or learned as ``exp`` of a
          parameter) each measured sample becomes ``(k_pred + lam*y)/(1+lam)``:
          it moves the fraction ``alpha = lam/(1+lam)`` of the way from the
          prediction to the measurement; ``lam -> inf`` is ``hard``.
          This is the paper's (KGMgT, eq. for K_dc) noisy-data form, written the
          way it is usually implemented; unsampled k-space keeps the prediction.

Single-coil (``maps is None``): exactly the rule above on ``F x``.

Multi-coil, ``method="gradient"`` (the default, one step, no iterations):
``x <- x + alpha * S^H F^H M (y - M F S x)``. This equals "apply the rule on
every coil's k-space, then SENSE-combine with ``S^H``" when ``S^H S = 1``, so
*per coil* the measured samples are replaced (hard) or moved by ``alpha``
(soft) before combination; after combination they are exact only when the
maps are a unitary phase (one coil) -- otherwise repeated application is a
Landweber iteration that converges to consistency (``||A|| <= 1``).

Multi-coil, ``method="prox"`` (soft only): the exact proximal step
``argmin_z ||z - x||^2 + lam ||M F S z - y||^2``, solved by conjugate
gradients on ``(I + lam A^H A) z = x + lam A^H y``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .complex_channels import from_channels, to_channels
from .fft import fft2c, ifft2c
from .operators import coil_combine_adjoint, coil_images, conjugate_gradient, expand_mask, sense_adjoint, sense_forward


class DataConsistency(nn.Module):
    """DC layer; see the module docstring for the maths.

    Args:
        mode: ``"hard"`` or ``"soft"``.
        noise_weight: ``lam`` for ``soft`` (ignored for ``hard``).
        learnable: learn ``log(lam)`` (``soft`` only).
        method: ``"gradient"`` or ``"prox"`` (multi-coil ``soft`` only).
        cg_iterations: CG iterations for ``prox``.
    """

    def __init__(self, mode: str = "hard", noise_weight: float = 10.0, learnable: bool = False,
                 method: str = "gradient", cg_iterations: int = 10) -> None:
        super().__init__()
        if mode not in ("hard", "soft"):
            raise ValueError(f"DC mode must be 'hard' or 'soft', got {mode!r}")
        if method not in ("gradient", "prox"):
            raise ValueError(f"DC method must be 'gradient' or 'prox', got {method!r}")
        if mode == "hard" and method == "prox":
            raise ValueError("the prox method needs a finite noise weight: use mode='soft'")
        if noise_weight <= 0:
            raise ValueError("noise_weight must be positive")
        self.mode, self.method, self.cg_iterations = mode, method, cg_iterations
        log_lam = torch.tensor(math.log(noise_weight), dtype=torch.float32)
        if mode == "soft" and learnable:
            self.log_noise_weight = nn.Parameter(log_lam)
        else:
            self.register_buffer("log_noise_weight", log_lam)

    @property
    def noise_weight(self) -> torch.Tensor:
        return torch.exp(self.log_noise_weight)

    @torch.no_grad()
    def set_noise_weight(self, value: float) -> None:
        """Set ``lam`` (the learned one too: training goes on from here)."""
        if value <= 0:
            raise ValueError("noise_weight must be positive")
        self.log_noise_weight.fill_(math.log(value))

    def fraction(self) -> torch.Tensor:
        """``alpha``: how far a measured sample moves toward the measurement."""
        if self.mode == "hard":
            return torch.ones((), device=self.log_noise_weight.device)
        lam = self.noise_weight
        return lam / (1 + lam)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                maps: torch.Tensor | None = None) -> torch.Tensor:
        """Complex ``x (B, ny, nx)`` -> complex ``(B, ny, nx)`` after DC."""
        if not torch.is_complex(x):
            raise TypeError("DataConsistency works on complex images; use dc_channels for 2-channel tensors")
        x = x.to(torch.complex64)
        y = y.to(torch.complex64)
        ny, nx = x.shape[-2:]
        m = expand_mask(mask.to(x.device), ny, nx)
        alpha = self.fraction().to(x.device)
        if maps is None or self.method == "gradient":
            if maps is None and y.shape[1] != 1:
                raise ValueError(f"single-coil DC needs k-space (B, 1, ny, nx), got {tuple(y.shape)}")
            k = fft2c(coil_images(x, maps))
            k = k + alpha * m * (y - m * k)
            if maps is None:
                return ifft2c(k)[:, 0]
            # S^H F^H [k + alpha M (y - M k)] = x + alpha S^H F^H M (y - M F S x) when S^H S = 1;
            # written as the residual update so it stays right where the maps are zero.
            return x + coil_combine_adjoint(ifft2c(k) - coil_images(x, maps), maps)
        lam = self.noise_weight.to(x.device)
        rhs = x + lam * sense_adjoint(y, maps, m)

        def normal(z: torch.Tensor) -> torch.Tensor:
            return z + lam * sense_adjoint(sense_forward(z, maps, m), maps, m)

        return conjugate_gradient(normal, rhs, x0=x, iterations=self.cg_iterations)

    def forward_channels(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                         maps: torch.Tensor | None = None) -> torch.Tensor:
        """The same on 2-channel ``(B, 2, ny, nx)`` real tensors (float32 out)."""
        return to_channels(self.forward(from_channels(x), y, mask, maps))


def kspace_residual(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
    """``||M F S x - y|| / ||y||`` per batch item: how inconsistent ``x`` is with the data."""
    r = sense_forward(x, maps, mask) - expand_mask(mask, *x.shape[-2:]) * y
    dims = tuple(range(1, r.ndim))
    return torch.sqrt(torch.sum(r.abs() ** 2, dim=dims) / torch.sum(y.abs() ** 2, dim=dims).clamp_min(1e-30))


__all__ = ["DataConsistency", "kspace_residual"]
