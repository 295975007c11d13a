"""The shipped multi-contrast network's reference earns its place on brains it never saw.

128-pixel crops of two held-out validation pairs (the CDLMRI tumour slice, T1pre guiding FLAIR; the middle
TCGA-FG-6692 slice, T1 guiding T2), 8 coils, 8x variable density with 12 ACS lines: the right reference
must beat no reference and a wrong one (the same reference turned 90 degrees), as the gadget runs it.
"""
import numpy as np
import pytest

from models import shared_data
from models.inference import load_model
from models.masks import line_mask
from models.metrics import psnr
from models.synthetic import coil_maps, smooth_phase
from models.training_data import simulate_acquisition

pytestmark = pytest.mark.skipif(not shared_data.have_data(), reason="no ../shared/data (set STREAMRECON_DATA)")


def _crop(img: np.ndarray, n: int = 128) -> np.ndarray:
    ny, nx = img.shape
    return img[(ny - n) // 2:(ny + n) // 2, (nx - n) // 2:(nx + n) // 2]


@pytest.mark.parametrize("case", ["tumour_T1pre->FLAIR", "FG-6692_T1->T2"])
def test_shipped_sgfmri_reference_helps_on_a_held_out_crop(case):
    import torch
    torch.set_num_threads(1)
    ref, tgt = shared_data.multicontrast_evaluation_pairs()[case]
    if ref.ndim == 3:  # TCGA: its middle axial slice
        ref, tgt = ref[len(ref) // 2], tgt[len(tgt) // 2]
    ref, tgt = _crop(ref), _crop(tgt)
    target = (tgt * np.exp(1j * smooth_phase(tgt.shape, seed=3, max_rad=np.pi))).astype(np.complex64)
    mask = line_mask("vd-random", tgt.shape[0], 1, accel=8.0, acs=12, seed=80)
    acq = simulate_acquisition(np.random.default_rng(0), target[None], mask, 8, 0.0, maps=coil_maps(8, *tgt.shape, seed=5))
    rec = load_model("sgfmri")
    assert rec.info["version"].startswith("sgfmri_brain_ur")

    def score(reference):
        out = rec.reconstruct_pair(reference, acq["zero_filled"][0], acq["kspace"][0], mask[0], acq["maps"])
        return psnr(out, acq["target"][0])

    right, none = score(ref.astype(np.complex64)), score(None)
    wrong = score(np.rot90(ref).copy().astype(np.complex64))
    # measured 2026-12-07 (sgfmri_brain_ur s3719): +1.26 / +1.36 dB over no reference, +1.26 / +1.46 over the wrong one
    assert right > none + 0.5 and right > wrong + 0.5, (case, right, none, wrong)
