"""View sharing: the offline rule, its streaming form, the training windows and the gadget's inputs agree."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from gadgets.cine_kgmgt import KGMgTStream
from gadgets.frames import FrameAccumulator
from gadgets.inference import InProcessBackend
from models.cine_windows import RealCineSampler, window_inputs, window_order
from models.coils import sense_combine
from models.fft import fft1c, ifft1c, ifft2c
from models.kgmgt import KGMgT, KGMgTConfig
from models.masks import line_mask
from models.phantoms import cardiac_cine
from models.view_sharing import LineHistory, add_lookahead, view_share
from models.weights import build_model, save_weights
from simulator.acquire import acquisitions
from simulator.header import make_header
from simulator.scan import crop_readout
from tests.dl_support import series
from tests.streams import small_cine


def _series(rng, frames=9, coils=3, ny=16, nx=8):
    k = (rng.standard_normal((frames, coils, ny, nx)) + 1j * rng.standard_normal((frames, coils, ny, nx))).astype(np.complex64)
    masks = rng.random((frames, ny)) < 0.3
    return k * masks[:, None, :, None], masks


def test_view_share_takes_each_line_from_the_nearest_measuring_frame():
    ny = 6
    k = np.zeros((4, 1, ny, 1), np.complex64)
    masks = np.zeros((4, ny), bool)
    for t, lines in enumerate([[0, 1], [2], [3, 1], [1, 4]]):
        masks[t, lines] = True
        k[t, 0, lines, 0] = [10 * t + line + 1 for line in lines]
    # frame 2, causal: own lines 1 and 3; line 2 from frame 1; line 0 from frame 0; 4 and 5 never measured
    out, filled = view_share(k, masks, 2)
    assert out[0, :, 0].real.tolist() == [1.0, 22.0, 13.0, 24.0, 0.0, 0.0]
    assert filled.tolist() == [True, True, True, True, False, False]
    # frame 1 with one frame of look-ahead: line 1 measured at 0 and at 2 (tie) -> the average
    out, filled = view_share(k, masks, 1, latest=2)
    assert out[0, :, 0].real.tolist() == [1.0, (2 + 22) / 2, 13.0, 24.0, 0.0, 0.0]
    # causal never looks ahead: frame 0 has only its own lines
    out, _ = view_share(k, masks, 0)
    assert out[0, :, 0].real.tolist() == [1.0, 2.0, 0, 0, 0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_line_history_equals_offline_view_sharing(seed):
    rng = np.random.default_rng(seed)
    k, masks = _series(rng)
    history = LineHistory()
    shared = [history.share(k[t], masks[t], t) for t in range(len(k))]
    for t in range(len(k)):
        expected, filled = view_share(k, masks, t)
        np.testing.assert_array_equal(shared[t].kspace, expected)
        np.testing.assert_array_equal(shared[t].filled, filled)
        if t + 1 < len(k):
            ahead, _ = view_share(k, masks, t, latest=t + 1)
            np.testing.assert_allclose(add_lookahead(shared[t], k[t + 1], masks[t + 1]), ahead, rtol=1e-6)


def test_line_history_frame_arriving_late_overwrites_nothing_newer():
    rng = np.random.default_rng(5)
    k, masks = _series(rng, frames=3)
    masks[:] = True
    h = LineHistory()
    h.share(k[2], masks[2], 2)
    late = h.share(k[0], masks[0], 0)
    np.testing.assert_array_equal(late.kspace, k[0])
    np.testing.assert_array_equal(h.kspace, k[2])  # still frame 2's lines


def test_window_order_at_the_ends_of_a_series():
    assert window_order(0, 5, causal=False) == (0, 1, 1)
    assert window_order(4, 5, causal=False) == (4, 3, 3)
    assert window_order(2, 5, causal=False) == (2, 1, 3)
    assert window_order(0, 5, causal=True) == (0, 0, 0)
    assert window_order(1, 5, causal=True) == (1, 0, 0)
    assert window_order(3, 5, causal=True) == (3, 2, 1)


def test_real_cine_sampler_gives_view_shared_windows_better_than_zero_filled():
    cine = np.abs(cardiac_cine(40, 40, 12, seed=3)).astype(np.float32)
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    vs = RealCineSampler([cine], size=32, inputs="view-shared")
    zf = RealCineSampler([cine], size=32, inputs="zero-filled")
    errs = {"vs": [], "zf": []}
    for _ in range(6):
        a, b = vs(rng_a), zf(rng_b)
        assert a["frames"].shape == (3, 32, 32) and a["kspace"].shape[1:] == (32, 32) and a["mask"].shape == (32,)
        np.testing.assert_allclose(a["target_image"] / np.abs(a["target_image"]).max(),
                                   b["target_image"] / np.abs(b["target_image"]).max(), atol=1e-5)  # same acquisition
        for key, s in (("vs", a), ("zf", b)):
            errs[key].append(np.linalg.norm(s["frames"][0] - s["target_image"]) / np.linalg.norm(s["target_image"]))
    assert np.mean(errs["vs"]) < 0.8 * np.mean(errs["zf"])


def test_kgmgt_cascades_and_input_dc_keep_the_measured_lines():
    torch.manual_seed(0)
    cfg = KGMgTConfig(channels=8, depth=1, heads=2, window=8, asa_radius=1, cascades=2, dc_on_input=True,
                      dc_mode="hard", dc_learnable=False, inputs="view-shared")
    net = KGMgT(cfg).eval()
    x = [torch.randn(1, 2, 20, 12) for _ in range(3)]
    mask = torch.zeros(20, dtype=torch.bool)
    mask[::3] = True
    y = torch.randn(1, 1, 20, 12, dtype=torch.complex64) * mask.view(1, 1, 20, 1)
    with torch.no_grad():
        out = net(*x, kspace=y, mask=mask)
    k = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(torch.complex(out[:, 0], out[:, 1]), dim=(-2, -1)),
                                          norm="ortho"), dim=(-2, -1))
    torch.testing.assert_close(k[0][mask], y[0, 0][mask], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        KGMgTConfig(inputs="sideways")


class _Recording(InProcessBackend):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def cine_batch(self, frames, kspace, mask, maps, causal, model=None):
        self.calls += [(f, m) for f, m in zip(frames.copy(), maps.copy())]
        return super().cine_batch(frames, kspace, mask, maps, causal, model)


@pytest.mark.parametrize("mode", ["centered", "causal"])
def test_gadget_gives_a_view_shared_model_the_same_windows_as_training(tmp_path, mode):
    torch.manual_seed(0)
    path = save_weights(build_model("kgmgt", KGMgTConfig(channels=8, depth=1, heads=2, window=8, asa_radius=1,
                                                         inputs="view-shared").to_dict()),
                        tmp_path, "kgmgt_vs_tiny", "kgmgt", "tiny-vs-1")
    ny, frames = 32, 6
    scan = small_cine(slices=1, frames=frames, coils=4, ny=ny, nx=ny, order_dim="repetition")
    mask = line_mask("kt-gaussian", ny, frames, accel=4, acs=4, seed=3)
    header = make_header(scan)
    backend = _Recording(device="cpu", weights={"kgmgt": str(path)})
    stream = KGMgTStream(header, ET.fromstring(f'<configuration><property name="mode" value="{mode}"/></configuration>'),
                         backend=backend)
    acc = FrameAccumulator(header, time_dim="repetition")
    images = []
    for acq in acquisitions(scan, mask, calib_lines=(8, 24)):
        for frame in acc.add(acq):
            images += stream.add(frame)
    images += stream.flush()
    model = series(images, 1)
    assert len(model) == frames and all("Fallback" not in im.meta for im in model)
    assert stream.inputs == "view-shared"  # "auto" became what the weights take
    assert all(im.meta["ModelInputs"] == "view-shared" for im in model)
    nx = scan.recon_shape[1]
    kspace = np.stack([fft1c(crop_readout(ifft1c(scan.kspace[0, t], axis=-1), nx), axis=-1) * mask[t][None, :, None]
                       for t in range(frames)])
    causal = mode == "causal"
    for t, (got, maps) in enumerate(backend.calls):
        expected = window_inputs(kspace, mask, maps, t, causal)  # model order: target, mentor, learner
        in_time_order = [expected[2], expected[1], expected[0]] if causal else [expected[1], expected[0], expected[2]]
        for j in range(3):
            np.testing.assert_allclose(got[j], in_time_order[j], atol=1e-4 * np.abs(in_time_order[j]).max())
    # a late frame's view-shared target is far closer to the fully sampled image than its zero-filled one
    t = frames - 2
    got, maps = backend.calls[t]
    full = fft1c(crop_readout(ifft1c(scan.kspace[0, t], axis=-1), nx), axis=-1)
    truth = sense_combine(ifft2c(full), maps)
    zero_filled = sense_combine(ifft2c(kspace[t]), maps)
    target = got[2 if causal else 1]
    assert np.linalg.norm(target - truth) < 0.7 * np.linalg.norm(zero_filled - truth)
