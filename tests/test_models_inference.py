"""The NumPy inference entry and the weight files (tiny, CPU)."""
import json

import numpy as np
import pytest
import torch

from models.fft import fft2c, ifft2c
from models.inference import UNTRAINED, load_model
from models.weights import build_model, load_weights, save_weights


def _case(ny=26, nx=21, coils=3, seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal((coils, ny, nx)) + 1j * rng.standard_normal((coils, ny, nx))
    maps = (maps / np.sqrt(np.sum(np.abs(maps) ** 2, 0))).astype(np.complex64)
    frames = (rng.standard_normal((3, ny, nx)) + 1j * rng.standard_normal((3, ny, nx))).astype(np.complex64) * 50
    mask = rng.random(ny) < 0.35
    kspace = (fft2c(maps * frames[1]) * mask[None, :, None]).astype(np.complex64)
    zf = np.sum(np.conj(maps) * ifft2c(kspace), 0)
    frames[1] = zf
    return frames, kspace, mask, maps


def test_missing_weights_raise_unless_random_is_asked_for(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model("kgmgt", weights=tmp_path / "none.safetensors")
    rec = load_model("kgmgt", weights=tmp_path / "none.safetensors", allow_random=True)
    assert rec.info["random_init"] and rec.version == UNTRAINED


def test_cine_entry_shapes_batch_and_scale_equivariance(tmp_path):
    rec = load_model("kgmgt", weights=tmp_path / "x.safetensors", allow_random=True)
    frames, kspace, mask, maps = _case()
    one = rec.reconstruct_cine(frames, kspace, mask, maps)
    assert one.shape == frames.shape[1:] and one.dtype == np.complex64
    batch = rec.reconstruct_cine_batch(np.stack([frames, frames * 3]), np.stack([kspace, kspace * 3]), mask,
                                       np.stack([maps, maps]))
    # normalisation inside: scaling the data scales the answer
    np.testing.assert_allclose(batch[0], one, rtol=1e-4, atol=1e-4 * np.abs(one).max())
    np.testing.assert_allclose(batch[1], 3 * one, rtol=1e-4, atol=3e-4 * np.abs(one).max())
    causal = rec.reconstruct_cine(frames[[0, 2, 1]], kspace, mask, maps, causal=True)
    assert causal.shape == one.shape
    with pytest.raises(ValueError):
        rec.reconstruct_cine(frames, kspace, mask, None)


def test_pair_entry_and_single_contrast_fallback(tmp_path):
    rec = load_model("sgfmri", weights=tmp_path / "x.safetensors", allow_random=True)
    frames, kspace, mask, maps = _case(seed=1)
    with_ref = rec.reconstruct_pair(np.abs(frames[0]), frames[1], kspace, mask, maps)
    without = rec.reconstruct_single(frames[1], kspace, mask, maps)
    assert with_ref.shape == without.shape == frames.shape[1:]
    assert not np.allclose(with_ref, without)
    with pytest.raises(TypeError):
        rec.reconstruct_cine(frames, kspace, mask, maps)


@pytest.mark.parametrize("arch", ["kgmgt", "sgfmri"])
def test_weights_roundtrip_without_pickle(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch)
    path = save_weights(model, tmp_path, f"{arch}_t", arch, "t-1", {"note": "test"})
    assert path.read_bytes()[:8] != b"\x80\x02\x8a\nl\xfc\x9c"  # not a torch pickle
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["architecture"] == arch and card["version"] == "t-1"
    loaded, _ = load_weights(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    rec = load_model(arch, weights=path)
    assert rec.version == "t-1" and not rec.info["random_init"]


def test_prox_dc_override_is_more_consistent_with_the_data(tmp_path):
    from models.dc import kspace_residual
    frames, kspace, mask, maps = _case(seed=2)
    out = {}
    for method in ("gradient", "prox"):
        rec = load_model("sgfmri", weights=tmp_path / "x.safetensors", allow_random=True, dc_method=method, dc_iterations=20)
        assert rec.model.dc.method == method and rec.info["dc"].endswith(method if method == "gradient" else "prox-20")
        img = rec.reconstruct_single(frames[1], kspace, mask, maps)
        out[method] = float(kspace_residual(torch.from_numpy(img)[None], torch.from_numpy(kspace)[None],
                                            torch.from_numpy(mask), torch.from_numpy(maps)[None]))
    assert out["prox"] < out["gradient"]
