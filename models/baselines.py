"""Baselines with the same conventions as the networks, so every table has something to beat.

- :func:`zero_filled`  ``S^H F^H y`` (the networks' input).
- :func:`cg_sense`     Tikhonov-regularised SENSE by conjugate gradients,
  ``argmin ||M F S x - y||^2 + lam ||x||^2``, frame by frame.
- :func:`tv_temporal`  ``argmin 1/2 ||M_t F S x_t - y_t||^2 + lam ||D_t x||_1``
  over the whole cine (temporal finite differences, periodic), solved by
  primal-dual (Chambolle-Pock) iterations: the same model as BART
  ``pics -R T:1024:0:lam`` (temporal TV), run in torch; use it where BART is absent.
- :func:`bart_pics`    the real BART ``pics`` (temporal TV for cine, l1-wavelet
  for a frame) when the ``bart`` command is on PATH; raises otherwise.
- :class:`DualUNetResNet3D` the seeds' (004) cine network: frames stacked as
  channels, one U-Net for the real and one for the imaginary part, a 3-D
  ResNet over (time, y, x) fusing them.

Shapes: images ``(T, ny, nx)`` complex, k-space ``(T, C, ny, nx)``, masks
``(T, ny)`` line masks or ``(T, ny, nx)``, maps ``(C, ny, nx)`` shared over
time (or ``(T, C, ny, nx)``). Torch tensors or NumPy arrays in, same kind out.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .operators import conjugate_gradient, expand_mask, sense_adjoint, sense_forward


def _as_torch(*arrays):
    out = []
    for a in arrays:
        if a is None or torch.is_tensor(a):
            out.append(a)
        else:
            arr = np.asarray(a)
            out.append(torch.from_numpy(np.ascontiguousarray(arr.astype(np.complex64) if np.iscomplexobj(arr) or arr.dtype != bool else arr)))
    return out


def _maps_t(maps: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    if maps is None:
        return None
    return maps.unsqueeze(0).expand(frames, *maps.shape) if maps.ndim == 3 else maps


def zero_filled(kspace, masks, maps):
    """``S^H F^H M y`` per frame: ``(T, ny, nx)``."""
    numpy_in = not torch.is_tensor(kspace)
    y, m, s = _as_torch(kspace, masks, maps)
    out = sense_adjoint(y, _maps_t(s, y.shape[0]), m)
    return out.numpy() if numpy_in else out


def cg_sense(kspace, masks, maps, lam: float = 1e-3, iterations: int = 15):
    """Regularised CG-SENSE per frame (batched over frames): ``(T, ny, nx)``.

    ``lam`` is relative to the scale of ``A^H A`` (which is <= 1 here), so it
    does not depend on the data's units.
    """
    numpy_in = not torch.is_tensor(kspace)
    y, m, s = _as_torch(kspace, masks, maps)
    s = _maps_t(s, y.shape[0])
    rhs = sense_adjoint(y, s, m)
    x = conjugate_gradient(lambda v: sense_adjoint(sense_forward(v, s, m), s, m) + lam * v, rhs, iterations=iterations)
    return x.numpy() if numpy_in else x


def tv_temporal(kspace, masks, maps, lam: float = 0.01, iterations: int = 100):
    """Temporal-TV reconstruction of a whole cine by Chambolle-Pock: ``(T, ny, nx)``.

    ``lam`` is relative to the robust maximum (99th percentile) of the
    zero-filled images, so the same value serves any intensity scale.
    K = [A; D_t], ||K||^2 <= ||A||^2 + ||D_t||^2 <= 1 + 4; tau = sigma = 1/sqrt(5).
    """
    numpy_in = not torch.is_tensor(kspace)
    y, m, s = _as_torch(kspace, masks, maps)
    s = _maps_t(s, y.shape[0])
    x = sense_adjoint(y, s, m)
    scale = float(torch.quantile(x.abs().flatten()[::max(1, x.numel() // 200_000)], 0.99).clamp_min(1e-12))
    lam_abs = lam * scale
    tau = sigma = 1.0 / np.sqrt(5.0)
    x_bar = x.clone()
    p = torch.zeros_like(y)           # dual of the data term
    q = torch.zeros_like(x)           # dual of the TV term
    my = expand_mask(m, *x.shape[-2:]) * y
    for _ in range(iterations):
        p = (p + sigma * (sense_forward(x_bar, s, m) - my)) / (1 + sigma)
        q = q + sigma * (torch.roll(x_bar, -1, 0) - x_bar)
        q = q / torch.clamp(q.abs() / lam_abs, min=1.0)  # project onto |q| <= lam
        div = q - torch.roll(q, 1, 0)                    # -D_t^H q
        x_new = x - tau * (sense_adjoint(p, s, m) - div)
        x_bar = 2 * x_new - x
        x = x_new
    return x.numpy() if numpy_in else x


def bart_available() -> bool:
    return shutil.which("bart") is not None


def _write_cfl(path: Path, arr: np.ndarray) -> None:
    arr = np.asarray(arr, dtype=np.complex64)
    path.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in arr.shape) + " 1" * (16 - arr.ndim) + "\n")
    arr.T.astype(np.complex64).tofile(path.with_suffix(".cfl"))  # BART is column-major


def _read_cfl(path: Path) -> np.ndarray:
    dims = [int(d) for d in path.with_suffix(".hdr").read_text().splitlines()[1].split()]
    n = int(np.prod(dims))
    data = np.fromfile(path.with_suffix(".cfl"), dtype=np.complex64, count=n)
    return data.reshape(dims, order="F")


def bart_pics(kspace: np.ndarray, masks: np.ndarray, maps: np.ndarray, lam: float = 0.01, iterations: int = 100) -> np.ndarray:
    """BART ``pics``: temporal TV for a cine ``(T, C, ny, nx)``, l1-wavelet for one frame ``(1, C, ny, nx)``.

    Data go to BART in its (x, y, z, coil, ..., time=dim 10) layout. Needs
    ``bart`` on PATH (none in this project's machines: the caller must check
    :func:`bart_available`).
    """
    if not bart_available():
        raise RuntimeError("bart is not on PATH")
    t, c, ny, nx = kspace.shape
    m = np.asarray(masks, dtype=bool)
    if m.ndim == 2:
        m = m[:, :, None]
    y = np.asarray(kspace) * m[:, None]
    # (T, C, ny, nx) -> (ny, nx, 1, C, 1,...,1, T): BART's dim 0/1 are image axes, 3 coils, 10 time
    ks = np.zeros((ny, nx, 1, c) + (1,) * 6 + (t,), dtype=np.complex64)
    ks[..., 0, :, 0, 0, 0, 0, 0, 0, :] = np.transpose(y, (2, 3, 1, 0))
    sens = np.transpose(np.asarray(maps), (1, 2, 0))[:, :, None, :]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _write_cfl(d / "k", ks)
        _write_cfl(d / "s", sens)
        reg = f"T:1024:0:{lam}" if t > 1 else f"W:3:0:{lam}"
        subprocess.run(["bart", "pics", "-S", "-i", str(iterations), "-R", reg, str(d / "k"), str(d / "s"), str(d / "x")],
                       check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        x = _read_cfl(d / "x")
    x = x.reshape(ny, nx, -1)
    return np.transpose(x, (2, 0, 1))[:t].astype(np.complex64)


# ------------------------------------------------------------------ seeds/004: dual U-Net + 3-D ResNet


class _UNet(nn.Module):
    def __init__(self, cin: int, cout: int, width: int) -> None:
        super().__init__()

        def block(a, b):
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
                                 nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())

        self.e1, self.e2, self.e3 = block(cin, width), block(width, 2 * width), block(2 * width, 4 * width)
        self.u2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.d2 = block(4 * width, 2 * width)
        self.u1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.d1 = block(2 * width, width)
        self.out = nn.Conv2d(width, cout, 1)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat((self.u2(e3), e2), 1))
        d1 = self.d1(torch.cat((self.u1(d2), e1), 1))
        return x + self.out(d1)


class DualUNetResNet3D(nn.Module):
    """Seeds/004: real and imaginary parts through separate U-Nets (frames as channels), then a 3-D ResNet.

    ``forward(x)``: ``x (B, 2, T, H, W)`` zero-filled cine (real, imag) -> same shape. ``frames`` is fixed
    at construction (the U-Nets take T channels); ``H, W`` are padded to a multiple of 4 inside.
    """

    def __init__(self, frames: int = 12, width: int = 32, resnet_width: int = 16, resnet_blocks: int = 3) -> None:
        super().__init__()
        self.init_kwargs = {"frames": frames, "width": width, "resnet_width": resnet_width, "resnet_blocks": resnet_blocks}
        self.real_net, self.imag_net = _UNet(frames, frames, width), _UNet(frames, frames, width)
        self.head = nn.Conv3d(2, resnet_width, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv3d(resnet_width, resnet_width, 3, padding=1), nn.ReLU(),
                                                  nn.Conv3d(resnet_width, resnet_width, 3, padding=1))
                                    for _ in range(resnet_blocks))
        self.tail = nn.Conv3d(resnet_width, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        xp = F.pad(x, (0, pw, 0, ph)) if (ph or pw) else x
        y = torch.stack((self.real_net(xp[:, 0]), self.imag_net(xp[:, 1])), 1)
        f = F.relu(self.head(y))
        for blk in self.blocks:
            f = F.relu(f + blk(f))
        return (y + self.tail(f))[..., :h, :w]


__all__ = ["zero_filled", "cg_sense", "tv_temporal", "bart_available", "bart_pics", "DualUNetResNet3D"]
