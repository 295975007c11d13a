"""Small multi-coil scans and direct NumPy reconstructions for the host tests."""
from __future__ import annotations

import numpy as np

from models.coils import estimate_coil_maps, rss, sense_combine
from models.fft import fft2c, ifft2c


def small_cine(slices: int = 2, frames: int = 12, coils: int = 8, ny: int = 32, nx: int = 28, order_dim: str = "repetition"):
    """A beating-heart phantom scan with 2x readout oversampling (simulator core)."""
    from simulator.scan import phantom_scan

    return phantom_scan("cine", ny=ny, nx=nx, frames=frames, slices=slices, n_coils=coils,
                        time_dimension=order_dim)


def recon_coil_images(kspace: np.ndarray, nx: int) -> np.ndarray:
    """(coils, ky, kx_encoded) -> coil images cropped to the recon FOV, computed independently of the gadgets."""
    full = ifft2c(kspace)
    x0 = (kspace.shape[-1] - nx) // 2
    return full[..., x0:x0 + nx]


def direct_rss(kspace: np.ndarray, nx: int) -> np.ndarray:
    return rss(recon_coil_images(kspace, nx))


def direct_sense(kspace: np.ndarray, first_frame_kspace: np.ndarray, nx: int, max_lines: int = 32) -> np.ndarray:
    """SENSE with maps from the first frame's central (at most ``max_lines``) lines."""
    k0 = fft2c(recon_coil_images(first_frame_kspace, nx))
    ny = k0.shape[-2]
    half = min(ny, max_lines) // 2
    maps = estimate_coil_maps(k0, (ny // 2 - half, ny // 2 + half))
    return np.abs(sense_combine(recon_coil_images(kspace, nx), maps))


def images_by_key(images, time_dim: str = "repetition") -> dict:
    return {(im.slice, getattr(im, time_dim)): np.asarray(im.data).reshape(im.data.shape[-2:]) for im in images}
