"""``streamrecon evaluate --data SOURCE``: a site's cine or pair through the built-in validation's methods."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.evaluation.cli import main as evaluate_main
from models.evaluation.site import SiteDataError, site_cine_cases, site_pairs
from tests.dl_support import tiny_weights

ROOT = Path(__file__).resolve().parents[1]
SUNNYBROOK = ROOT.parent / "shared" / "data" / "cine" / "sunnybrook_sax_cine.h5"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("weights"))


def _cine(tmp_path: Path, frames: int = 4) -> Path:
    from models.phantoms import cardiac_cine

    path = tmp_path / "site_cine.npy"
    np.save(path, np.abs(cardiac_cine(32, 24, frames, seed=2)).astype(np.float32))
    return path


def test_site_cine_through_every_anchor_and_the_network(tmp_path, weights, capsys):
    out = tmp_path / "ev"
    code = evaluate_main(["--data", str(_cine(tmp_path)), "--cine-configs", "kt-gaussian:4", "--frames", "4",
                          "--kgmgt-weights", str(weights["kgmgt"]), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "scores.json").read_text())["scores"]
    methods = {r["method"].split(" [")[0] for r in rows}
    assert {"zero-filled SENSE", "view-sharing SENSE (centred)", "CG-SENSE", "TV temporal, 3-frame window",
            "KGMgT centred", "KGMgT causal"} <= methods
    # the whole-series offline anchor is BART where it is installed (CI installs it), the torch TV otherwise
    assert methods & {"BART pics -R T, whole series", "TV temporal, whole series"}
    assert all(r["case"] == "site_cine" for r in rows)
    headline = (out / "cine.md").read_text()
    line = next(l for l in headline.splitlines() if l.startswith("| site_cine | kt-gaussian 4x"))
    vs = next(r["psnr"] for r in rows if r["method"] == "view-sharing SENSE (centred)")
    centred = next(r["psnr"] for r in rows if r["method"].startswith("KGMgT centred"))
    assert f"**{centred - vs:+.2f}**" in line  # the network minus its own input, as in the built-in validation
    assert list(out.glob("strip_cine_site_cine_kt-gaussian_4x.png"))
    assert (out / "site_anchors.json").exists()  # not mixed with the built-in validation's cache


def test_site_pair(tmp_path, weights, capsys):
    from PIL import Image

    from models.phantoms import brain_pair

    ref, tgt = (np.abs(x) for x in brain_pair(32, seed=1))
    for name, img in (("t1.png", ref), ("t2.png", tgt)):
        Image.fromarray((img / img.max() * 255).astype(np.uint8)).save(tmp_path / name)
    out = tmp_path / "ev"
    code = evaluate_main(["--data", f"{tmp_path / 't1.png'}+{tmp_path / 't2.png'}", "--pair-accels", "4", "--no-bart",
                          "--sgfmri-weights", str(weights["sgfmri"]), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    table = (out / "scores.md").read_text()
    row = next(l for l in table.splitlines() if l.startswith("| t1->t2 | 4x"))
    assert row.count("|") == 12  # every column of the pair summary, with - without among them


def test_unusable_site_data_is_refused_in_one_line(tmp_path, capsys):
    np.save(tmp_path / "one.npy", np.ones((16, 16), np.float32))
    assert evaluate_main(["--data", str(tmp_path / "one.npy"), "--out", str(tmp_path / "o")]) == 2
    assert "one.npy: 1 frame(s); a cine case needs at least 3" in capsys.readouterr().err
    with pytest.raises(SiteDataError, match="REFERENCE\\+TARGET"):
        site_pairs(str(tmp_path / "one.npy"))
    assert evaluate_main(["--data", str(tmp_path / "none.npy"), "--out", str(tmp_path / "o")]) == 2
    assert "none.npy" in capsys.readouterr().err


@pytest.mark.skipif(not SUNNYBROOK.is_file(), reason="shared Sunnybrook file not found")
def test_sunnybrook_slices_as_cases():
    cases = site_cine_cases(f"{SUNNYBROOK}:SCD0000501:all", frames=3)
    assert len(cases) == 11 and all(c.cine.shape == (3, 256, 256) for c in cases)
    assert cases[4].name == "sunnybrook_sax_cine/SCD0000501/slice4"
    assert all(abs(float(c.cine.max()) - 1.0) < 1e-6 for c in cases)


def test_ismrmrd_files_as_cases(tmp_path):
    """A fully sampled ISMRMRD file is a case per slice (its RSS magnitude); an undersampled one has no truth."""
    from models.masks import line_mask
    from simulator.scan import phantom_scan
    from simulator.writers import write_ismrmrd

    scan = phantom_scan("cine", ny=32, nx=32, frames=4, slices=2, n_coils=2)
    write_ismrmrd(tmp_path / "full.h5", scan)
    cases = site_cine_cases(str(tmp_path / "full.h5"), frames=3)
    assert [c.name for c in cases] == ["full/slice0", "full/slice1"] and cases[0].cine.shape == (3, 32, 32)
    write_ismrmrd(tmp_path / "under.h5", scan, line_mask("kt-gaussian", 32, 4, accel=4, acs=8, seed=0))
    with pytest.raises(SiteDataError, match="under.h5: undersampled"):
        site_cine_cases(str(tmp_path / "under.h5"))
