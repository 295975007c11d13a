"""The shipped cine network earns its place: it beats its own input on real hearts it never saw.

A small crop of the validation split (the GIRAF cine, never trained on), 8
coils, 8x kt-Gaussian, played as one real-time pass; the network gets the
window images its weights take, exactly as the cine gadget builds them.
"""
import numpy as np
import pytest

from models.inference import load_model
from models.metrics import psnr
from models.evaluation import cine as ce
from models import shared_data as model_data

pytestmark = pytest.mark.skipif(not model_data.have_data(), reason="no ../shared/data (set STREAMRECON_DATA)")


def test_shipped_kgmgt_beats_view_sharing_sense_on_a_held_out_heart():
    import torch
    torch.set_num_threads(1)
    crop = model_data.load_cine()[:8, 48:144, 30:126]  # the heart, 96 x 96, 8 frames
    a = ce.acquire("GIRAF crop", crop, "kt-gaussian", 8.0, acs=8)
    rec = load_model("kgmgt")
    assert rec.info["version"].startswith("kgmgt_cine_rt")
    frames = range(1, 7)
    # the input step with nothing learned: view sharing with each frame's own lines enforced
    dc_series = ce.view_shared_dc_series(a)
    vs_dc = np.mean([psnr(dc_series[t], a.reference[t]) for t in frames])
    for causal in (False, True):
        vs = ce.view_shared_series(a, causal=causal)
        net = ce.cine_series(rec, a, causal=causal)
        p_vs = np.mean([psnr(vs[t], a.reference[t]) for t in frames])
        p_net = np.mean([psnr(net[t], a.reference[t]) for t in frames])
        p_zf = np.mean([psnr(a.zero_filled[t], a.reference[t]) for t in frames])
        # measured 2026-12-08 (s6511): +2.92 / +2.87 dB over view sharing (centred / causal), +2.29 / +1.71 over VS + DC
        assert p_net > p_vs + 1.5 and p_net > vs_dc + 1.0 and p_net > p_zf + 3.0, (causal, p_net, p_vs, vs_dc, p_zf)
