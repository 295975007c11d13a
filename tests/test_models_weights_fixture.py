"""The shipped weights load and reproduce their stored scores on a tiny deterministic case.

``tests/fixtures/models_scores.json`` holds, per shipped weight set, its
version and the PSNR it reached on the case below when the weights were
committed (computed by running this file: ``python tests/test_models_weights_fixture.py``).
A changed network, DC or inference path that alters the output fails here;
new weights must come with a regenerated fixture (the version must match).
Also checks that the weights beat zero-filling on the case, so random or
broken weights cannot pass.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from models.cine_windows import window_inputs
from models import registry
from models.inference import load_model
from models.masks import line_mask
from models.metrics import psnr
from models.phantoms import brain_pair, cardiac_cine
from models.synthetic import coil_maps
from models.training_data import simulate_acquisition

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "models_scores.json"


def cine_case() -> dict:
    video = cardiac_cine(48, 40, 8, seed=3)
    masks = line_mask("kt-gaussian", 48, 8, accel=6.0, acs=4, seed=5)
    acq = simulate_acquisition(np.random.default_rng(0), video, masks, 4, 0.0, maps=coil_maps(4, 48, 40, seed=2))
    rec = load_model("kgmgt")
    t = 3
    f = window_inputs(acq["kspace"], masks, acq["maps"], t, causal=False, inputs=rec.inputs)  # target, t-1, t+1
    out = rec.reconstruct_cine(f[[1, 0, 2]], acq["kspace"][t], masks[t], acq["maps"])
    return {"version": rec.version, "psnr": psnr(out, acq["target"][t]),
            "zero_filled_psnr": psnr(acq["zero_filled"][t], acq["target"][t])}


def pair_case() -> dict:
    ref, tgt = brain_pair(48, seed=2)
    mask = line_mask("vd-random", 48, 1, accel=6.0, acs=6, seed=7)
    acq = simulate_acquisition(np.random.default_rng(0), tgt[None], mask, 4, 0.0, maps=coil_maps(4, 48, 48, seed=4))
    rec = load_model("sgfmri")
    out = rec.reconstruct_pair(np.abs(ref), acq["zero_filled"][0], acq["kspace"][0], mask[0], acq["maps"])
    return {"version": rec.version, "psnr": psnr(out, acq["target"][0]),
            "zero_filled_psnr": psnr(acq["zero_filled"][0], acq["target"][0])}


CASES = {"kgmgt": cine_case, "sgfmri": pair_case}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_weights_reproduce_their_stored_score(name):
    if not registry.get(name).weights_path().exists():
        pytest.skip(f"no shipped weights for {name}")
    stored = json.loads(FIXTURE.read_text())[name]
    got = CASES[name]()
    assert got["version"] == stored["version"], "weights changed: regenerate the fixture"
    assert abs(got["psnr"] - stored["psnr"]) < 0.05, (got, stored)
    assert got["psnr"] > got["zero_filled_psnr"] + 1.0, got


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    results = {name: fn() for name, fn in CASES.items()}
    FIXTURE.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
