"""Baselines: CG-SENSE, temporal TV, BART wrapper guard, dual U-Net + 3-D ResNet (tiny)."""
import numpy as np
import pytest
import torch

from models.baselines import DualUNetResNet3D, bart_available, bart_pics, cg_sense, tv_temporal, zero_filled
from models.fft import fft2c
from models.metrics import psnr


def _case(t=6, ny=24, nx=20, coils=4, frac=0.3, seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal((coils, ny, nx)) + 1j * rng.standard_normal((coils, ny, nx))
    maps = (maps / np.sqrt(np.sum(np.abs(maps) ** 2, 0))).astype(np.complex64)
    yy, xx = np.mgrid[:ny, :nx]
    img = ((np.hypot(yy - ny / 2, xx - nx / 2) < 7) + 0.5 * (xx > nx / 2)).astype(np.complex64)
    video = np.repeat(img[None], t, 0)  # static: temporal TV's ideal case
    masks = rng.random((t, ny)) < frac
    masks[:, ny // 2 - 1: ny // 2 + 1] = True
    k = (fft2c(maps[None] * video[:, None]) * masks[:, None, :, None]).astype(np.complex64)
    return video, k, masks, maps


def test_cg_sense_inverts_fully_sampled_data():
    video, k, _, maps = _case()
    full = np.ones((video.shape[0], video.shape[1]), dtype=bool)
    k = fft2c(maps[None] * video[:, None]).astype(np.complex64)
    x = cg_sense(k, full, maps, lam=1e-6, iterations=5)
    np.testing.assert_allclose(x, video, atol=1e-3)


def test_cg_sense_and_temporal_tv_beat_zero_filling():
    video, k, masks, maps = _case()
    zf = zero_filled(k, masks, maps)
    cg = cg_sense(k, masks, maps)
    tv = tv_temporal(k, masks, maps, lam=0.03, iterations=100)
    assert psnr(cg, video) > psnr(zf, video) + 1
    assert psnr(tv, video) > psnr(cg, video) + 3  # a static scene: temporal TV pools all frames' samples


def test_bart_wrapper_refuses_without_bart():
    if bart_available():
        pytest.skip("bart is installed")
    video, k, masks, maps = _case()
    with pytest.raises(RuntimeError):
        bart_pics(k, masks, maps)


def test_dual_unet_resnet3d_shapes():
    net = DualUNetResNet3D(frames=5, width=4, resnet_width=4, resnet_blocks=1)
    x = torch.randn(2, 2, 5, 21, 18)
    assert net(x).shape == x.shape
