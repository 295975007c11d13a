"""The training recipes for unseen data: cine conditions and windows, the unrolled SGF-MRI with its
reference gate, the pair sampler's misleading references, per-kind validation and the report tables."""
import numpy as np
import pytest
import torch

from models.cine_windows import (RealCineSampler, ValidationCondition, condition_frames, validation_window,
                                 window_inputs)
from models.kgmgt import KGMgT, KGMgTConfig
from models.sgfmri import SGFMRI, NeighbourhoodSimilarity, SGFMRIConfig
from models.train import pair_forward, validate
from models.training_data import PairSampler, collate, pair_validation_items, simulate_acquisition

TINY_UNROLLED = SGFMRIConfig(channels=8, groups=4, squeeze=8, heads=2, cascades=2, start="cg-sense", gate=True,
                             dc_noise_weight=10.0)


def _cine(frames=10, n=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n] / n
    base = (np.sin(7 * xx) + np.cos(5 * yy) + 2.5) * (0.8 + 0.2 * rng.random((n, n)))
    return np.stack([np.roll(base, t, axis=0) for t in range(frames)]).astype(np.float32)


def test_conditions_rotate_transpose_and_speed_up_the_heart():
    cine = _cine()
    assert np.array_equal(condition_frames(cine, ValidationCondition("t", transpose=True)), cine.transpose(0, 2, 1))
    fast = condition_frames(cine, ValidationCondition("s", stride=2))
    assert np.array_equal(fast[1], cine[2]) and np.array_equal(fast[5], cine[0])  # periodic
    rot = condition_frames(cine, ValidationCondition("r", rotation_deg=90.0))
    # a quarter turn about the centre of an even matrix is rot90 up to a half-pixel shift: compare inside
    assert np.abs(rot[0, 4:-4, 4:-4] - np.rot90(cine[0], -1)[4:-4, 4:-4]).mean() < 0.2 * np.abs(cine[0]).mean()


def test_validation_window_is_the_gadget_window_at_full_matrix():
    cine = _cine(frames=12, n=40)
    cond = ValidationCondition("c", "vd-random", 4.0, 6, noise=0.0, causal=False, acs=8)
    w = validation_window(cine, cond, seed=3)
    assert w["frames"].shape == (3, 40, 40) and w["kspace"].shape == (6, 40, 40)
    # the target frame is the centred view sharing of frame t: its own lines are the measured ones
    measured = w["mask"]
    assert measured.sum() < 40
    # scaled by the target input's robust maximum, like models.inference
    assert np.isclose(np.percentile(np.abs(w["frames"][0]), 99), 1.0, rtol=1e-3)


def test_realtime_recipe_draws_native_crops_many_coils_and_rotations():
    cines = [_cine(frames=20, n=64, seed=s) for s in range(2)]
    sampler = RealCineSampler.realtime(cines, size=32, static_images=[_cine(1, 64)[0]])
    rng = np.random.default_rng(0)
    coils = set()
    for _ in range(12):
        s = sampler(rng)
        assert s["frames"].shape == (3, 32, 32) and s["target_image"].shape == (32, 32)
        assert np.isfinite(s["frames"]).all()
        coils.add(s["maps"].shape[0])
    assert max(coils) > 16  # draws beyond the old 4-16 coils


def test_target_only_simulation_matches_the_whole_series_without_noise():
    cine = _cine(6, 24).astype(np.complex64)
    masks = np.zeros((6, 24), bool)
    masks[:, ::3] = True
    masks[:, 10:14] = True
    maps = np.ones((1, 24, 24), np.complex64)
    full = simulate_acquisition(np.random.default_rng(0), cine, masks, 1, 0.0, maps=maps)
    one = simulate_acquisition(np.random.default_rng(0), cine, masks, 1, 0.0, maps=maps, frames_out=[4])
    assert np.allclose(one["target"][0], full["target"][4], atol=1e-5)
    assert np.allclose(one["kspace"], full["kspace"])


def test_kgmgt_per_step_dc_layers_are_separate_and_all_set_by_the_inference_dc():
    from models.inference import set_dc
    model = KGMgT(KGMgTConfig(channels=8, depth=1, heads=2, window=4, asa_groups=2, asa_radius=1, dc_per_step=True,
                              dc_on_input=True, inputs="view-shared"))
    layers = model.dc_layers()
    assert len(layers) == 3 and len({id(x) for x in layers}) == 3
    set_dc(model, "prox", 4)
    assert all(x.method == "prox" and x.cg_iterations == 4 for x in layers)


def test_mcns_matches_the_formula_of_the_paper():
    """exp(-||f_j - g_{j+o}||^2 / (sigma_j^2 + eps)), sigma_j^2 the mean over f_j's own 8 neighbours."""
    torch.manual_seed(0)
    mcns = NeighbourhoodSimilarity(4, 2, 4)
    f, g = torch.randn(1, 4, 9, 10), torch.randn(1, 4, 9, 10)
    out = mcns.similarities(f, g)  # (1, 8 * 2, H, W), offset-major

    def at(x, i, j):  # replicate-padded lookup
        return x[0, :, min(max(i, 0), 8), min(max(j, 0), 9)]
    offsets = ((-1, 0), (-2, 0), (1, 0), (2, 0), (0, -1), (0, -2), (0, 1), (0, 2))
    i, j = 0, 3
    for grp in range(2):
        sl = slice(2 * grp, 2 * grp + 2)
        own = [((at(f, i, j)[sl] - at(f, i + dy, j + dx)[sl]) ** 2).mean() for dy, dx in offsets]
        sigma2 = torch.stack(own).mean()
        for o, (dy, dx) in enumerate(offsets):
            d = ((at(f, i, j)[sl] - at(g, i + dy, j + dx)[sl]) ** 2).mean()
            assert torch.isclose(out[0, o * 2 + grp, i, j], torch.exp(-d / (sigma2 + mcns.eps)), atol=1e-5)


def _pair_batch(n=32, accel=4.0):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:n, :n] / n
    tgt = ((np.sin(9 * xx) * np.cos(7 * yy) + 1.5) * (((yy - .5) ** 2 + (xx - .5) ** 2) < 0.2)).astype(np.float32)
    ref = np.sqrt(tgt) + 0.05 * rng.random((n, n)).astype(np.float32)
    wrong = np.rot90(ref).copy()
    return pair_validation_items(ref, tgt, wrong, accel, seed=0, coils=4, acs=6)


def test_unrolled_sgfmri_starts_from_cg_sense_and_a_closed_gate_ignores_the_reference():
    torch.manual_seed(0)
    model = SGFMRI(TINY_UNROLLED).eval()
    items = _pair_batch()
    with_ref, without = collate([items[0]]), collate([items[1]])
    with torch.no_grad():
        for m in model.mcsd:
            m.gate.net[-1].bias.fill_(-60.0)  # gate shut
        a, _ = pair_forward(model, with_ref, "cpu")
        b, _ = pair_forward(model, without, "cpu")
    assert torch.allclose(a, b, atol=1e-5)
    with torch.no_grad():
        for m in model.mcsd:
            m.gate.net[-1].bias.fill_(2.0)
        c, _ = pair_forward(model, with_ref, "cpu")
    assert not torch.allclose(a, c, atol=1e-4)


def test_unrolled_sgfmri_needs_kspace():
    model = SGFMRI(TINY_UNROLLED)
    with pytest.raises(ValueError, match="k-space"):
        model(torch.zeros(1, 2, 16, 16))


def test_pair_validation_reports_reference_gain_and_wrong_reference_cost():
    torch.manual_seed(0)
    model = SGFMRI(TINY_UNROLLED)
    batches = [collate([item]) for item in _pair_batch()]
    out = validate(model, pair_forward, batches, "cpu", "pair")
    assert {"val_psnr_with", "val_psnr_without", "val_psnr_wrong", "val_ref_gain", "val_wrong_ref_cost"} <= set(out)
    assert out["val_psnr"] == out["val_psnr_with"]
    assert np.isclose(out["val_ref_gain"], out["val_psnr_with"] - out["val_psnr_without"])


def test_realistic_pair_sampler_draws_wrong_and_missing_references():
    n = 48
    ims = [(_cine(1, n, s)[0], _cine(1, n, s + 10)[0]) for s in range(4)]
    sampler = PairSampler.realistic(ims, 32, wrong_reference=0.5, reference_dropout=0.3)
    rng = np.random.default_rng(0)
    samples = [sampler(rng) for _ in range(20)]
    assert any(s["has_reference"] == 0 for s in samples) and any(s["has_reference"] == 1 for s in samples)
    assert all(s["reference"].shape == (32, 32) and s["kspace"].shape[-2:] == (32, 32) for s in samples)
    assert max(s["maps"].shape[0] for s in samples) > 12


def test_headline_and_pair_summary_tables():
    from models.evaluation.cine import headline_table
    from models.evaluation.cli import pair_summary
    from models.evaluation.scores import Score

    rows = [{"case": "A", "family": "vd-random", "accel": 8.0, "method": m, "psnr": p}
            for m, p in (("view-sharing SENSE (centred)", 30.0), ("view-sharing SENSE (causal)", 29.0),
                         ("TV temporal, 3-frame window", 30.5), ("KGMgT centred [w]", 32.0),
                         ("KGMgT causal [w]", 31.6), ("BART pics -R T, whole series", 33.0))]
    table = headline_table(rows)
    assert "**+2.00**" in table and "+1.50 (TV temporal, 3-frame window)" in table and "-1.00" in table
    scores = [Score(m, 4.0, p, 0.9, 0.01, 0.1, None, {"case": "c"}) for m, p in (
        ("zero-filled", 25.0), ("CG-SENSE", 30.0), ("BART l1-wavelet lambda 0.001", 33.0),
        ("BART l1-wavelet lambda 0.01", 32.0), ("SGF-MRI no reference [x]", 32.5), ("SGF-MRI with reference", 34.0),
        ("SGF-MRI with a wrong reference (another slice)", 32.4))]
    summary = pair_summary(scores)
    assert "33.00 (0.001)" in summary and "+1.00" in summary and "+1.50" in summary and "+0.10" in summary
