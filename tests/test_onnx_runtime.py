"""KGMgT's generator on ONNX Runtime and OpenVINO: the same images as torch eager within 1e-4, DC still in torch.

Real (tiny, untrained) weight files through the real loader; a runtime's
cases skip, with the reason, only where its package (the ``cpu-runtimes``
extra, part of the test extra) is not installed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.inference import load_model
from models.runtimes import ExportedGenerator, runtime_missing
from tests.dl_support import tiny_weights

RUNTIMES = [pytest.param(r, marks=pytest.mark.skipif(runtime_missing(r) is not None, reason=str(runtime_missing(r))))
            for r in ("onnxruntime", "openvino")]
TOLERANCE = 1e-4  # max |difference| relative to the torch image's maximum


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    paths = tiny_weights(folder)
    # the retrained network's layout: one DC layer per step, DC on the input; same generator
    from models.kgmgt import KGMgTConfig
    from models.weights import build_model, save_weights

    torch.manual_seed(2)
    cfg = KGMgTConfig(channels=8, depth=1, heads=2, window=8, asa_radius=1, dc_per_step=True, dc_on_input=True,
                      inputs="view-shared")
    model = build_model("kgmgt", cfg.to_dict())
    model.scale_residual(1.0)
    with torch.no_grad():  # a non-zero residual: the generator must matter in the comparison
        model.generator.tail.weight.normal_(0, 0.05)
    paths["kgmgt_dc_per_step"] = save_weights(model, folder, "kgmgt_dc_per_step", "kgmgt", "tiny-test-2")
    return paths


def window(batch: int, ny: int, nx: int, coils: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)

    def c(*shape):
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)

    maps = c(batch, coils, ny, nx)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(1, keepdims=True))
    mask = np.zeros(ny, bool)
    mask[::3] = True
    mask[ny // 2 - 3:ny // 2 + 3] = True
    kspace = c(batch, coils, ny, nx) * mask[None, None, :, None]
    return c(batch, 3, ny, nx), kspace, mask, maps


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("which,batch,ny,nx,causal", [("kgmgt", 1, 32, 32, False),
                                                       ("kgmgt_dc_per_step", 2, 30, 38, True)])
def test_an_exported_generator_gives_torchs_images_within_1e_4(runtime, which, batch, ny, nx, causal, weights):
    eager = load_model("kgmgt", weights=weights[which])
    onnx = load_model("kgmgt", weights=weights[which], runtime=runtime)
    assert isinstance(onnx.model.generator, ExportedGenerator) and onnx.info["runtime"] == runtime
    assert eager.info["runtime"] == "torch" and onnx.info["parameters"] == eager.info["parameters"]
    frames, kspace, mask, maps = window(batch, ny, nx)
    expected = eager.reconstruct_cine_batch(frames, kspace, mask, maps, causal=causal)
    got = onnx.reconstruct_cine_batch(frames, kspace, mask, maps, causal=causal)
    assert got.shape == expected.shape == (batch, ny, nx) and got.dtype == np.complex64
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()
    # and the generator matters here: without it (zero residual) the image differs far beyond the tolerance
    x = torch.randn(batch, 2, ny + (-ny) % 4, nx + (-nx) % 4)
    residual, features = onnx.model.generator(x, x)
    assert len(features) == 5 and float(residual.abs().max()) > 100 * TOLERANCE


def test_sgfmri_stays_on_torch_and_a_bad_runtime_is_refused(weights):
    assert load_model("sgfmri", weights=weights["sgfmri"], runtime="openvino").info["runtime"] == "torch"
    with pytest.raises(ValueError, match="runtime"):
        load_model("kgmgt", weights=weights["kgmgt"], runtime="tensorrt")
