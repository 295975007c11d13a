"""The cine validation's machinery on a tiny phantom: every anchor runs, KGMgT gets its windows, tables and strips."""
import numpy as np
import pytest

from models.baselines import bart_available
from models.inference import load_model
from models.metrics import psnr
from models.phantoms import cardiac_cine
from models.evaluation import cine as ce


@pytest.fixture(scope="module")
def acquisition():
    cine = np.abs(cardiac_cine(48, 40, 6, seed=2)).astype(np.float32)
    return ce.acquire("phantom", cine, "kt-gaussian", 4.0, acs=8)


def test_every_anchor_and_the_network_score_and_tabulate(acquisition, tmp_path):
    a = acquisition
    methods = ce.anchor_methods(a, bart_lambda=0.01 if bart_available() else None)
    assert set(ce.ONLINE_ANCHORS) <= set(methods)
    # one offline anchor: BART when installed, else the same regulariser in torch
    assert ("BART pics -R T, whole series" in methods) == bart_available()
    assert ("TV temporal, whole series" in methods) != bart_available()
    rec = load_model("kgmgt")
    methods["KGMgT centred"] = lambda: ce.cine_series(rec, a, causal=False)
    rows, columns = [], {}
    for name, fn in methods.items():
        pred = fn()
        assert pred.shape == a.reference.shape and np.all(np.isfinite(pred)), name
        rows.append({"case": a.case, "family": a.family, "accel": a.accel, "method": name,
                     "psnr": psnr(pred, a.reference), "ssim": 0.5, "seconds_per_frame": 0.0})
        columns[name] = pred[2]
    by = {r["method"]: r["psnr"] for r in rows}
    # what the table is for: view sharing beats zero-filling; the network beats view sharing on its own frames
    assert by["view-sharing SENSE (centred)"] > by["zero-filled SENSE"] + 2
    assert by["KGMgT centred"] > by["zero-filled SENSE"] + 3
    table = ce.cine_table(rows)
    assert "**kt-gaussian 4x**" in table and all(m in table for m in methods)
    ce.strip(columns, a.reference[2], tmp_path / "strip.png")
    from PIL import Image
    im = Image.open(tmp_path / "strip.png")
    assert im.size[0] == 40 * (len(columns) + 1) and im.size[1] > 2 * 48  # a labelled column per method + reference


def test_anchor_cache_round_trip(acquisition, tmp_path):
    rows = [{"case": "phantom", "method": "x", "psnr": 1.0}]
    ce.save_cache(tmp_path / "c", rows, {"phantom|kt-gaussian|4|x": acquisition.reference[0]}, {"bart_lambda": 0.01})
    got_rows, images, extra = ce.load_cache(tmp_path / "c")
    assert got_rows == rows and extra["bart_lambda"] == 0.01
    np.testing.assert_array_equal(images["phantom|kt-gaussian|4|x"], acquisition.reference[0])
