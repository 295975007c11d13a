"""Training loop, checkpoints, DDEI transforms and loss (tiny problems, CPU)."""
import numpy as np
import pytest
import torch

from models.ddei import ddei_loss, reconstruct_clip, rotate
from models.kgmgt import KGMgT, KGMgTConfig
from models.metrics import ssim as ssim_np
from models.sgfmri import SGFMRI, SGFMRIConfig
from models.train import TrainConfig, cine_forward, pair_forward, ssim_torch, train, validate
from models.training_data import CineSampler, PairSampler, SimulationSettings, collate

TINY_K = KGMgTConfig(channels=8, depth=1, heads=2, window=4, asa_groups=2, asa_radius=1)
TINY_S = SGFMRIConfig(channels=8, groups=4, squeeze=8, heads=2)
SETTINGS = SimulationSettings(accel=(4.0, 6.0), coils=(2, 3))


def _images(n=3, size=40, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    return [((np.sin(8 * xx * (i + 1)) + np.cos(6 * yy) + 2.5) * (rng.random((size, size)) * 0.2 + 0.8)).astype(np.float32)
            for i in range(n)]


def _fixed(sampler, seed=0):
    sample = sampler(np.random.default_rng(seed))
    return lambda rng: sample


@pytest.mark.parametrize("task", ["cine", "pair"])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(task):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if task == "cine":
        model, fwd = KGMgT(TINY_K), cine_forward
        sampler = _fixed(CineSampler(_images(), size=(24, 24), frames=(6, 6), phantom_fraction=0.0, settings=SETTINGS))
    else:
        model, fwd = SGFMRI(TINY_S), pair_forward
        ims = _images()
        sampler = _fixed(PairSampler([(ims[0], ims[1])], size=(24, 24), reference_dropout=0.0, settings=SETTINGS))
    batch = collate([sampler(None) for _ in range(2)])
    before = validate(model, fwd, [batch], "cpu")["val_l1"]
    cfg = TrainConfig(task=task, steps=25, batch=2, lr=3e-3, val_every=25, val_batches=1, log_every=100)
    result = train(model, sampler, cfg, log=lambda s: None)
    after = validate(model, fwd, [batch], "cpu")["val_l1"]
    assert after < 0.8 * before, (before, after)
    assert result["history"][-1]["step"] == 25


def test_checkpoint_and_resume(tmp_path):
    torch.manual_seed(0)
    sampler = CineSampler(_images(), size=(24, 24), frames=(6, 7), phantom_fraction=0.0, settings=SETTINGS)
    model = KGMgT(TINY_K)
    cfg = TrainConfig(task="cine", steps=3, batch=1, val_every=3, ckpt_every=3, val_batches=1)
    train(model, sampler, cfg, ckpt_dir=tmp_path, log=lambda s: None)
    w3 = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = KGMgT(TINY_K)
    out = train(fresh, sampler, TrainConfig(**{**cfg.__dict__, "steps": 5}), ckpt_dir=tmp_path, resume=True,
                log=lambda s: None)
    assert out["step"] == 5
    assert [h["step"] for h in out["history"]] == [3, 5]
    assert any(not torch.equal(w3[k], v) for k, v in fresh.state_dict().items())
    assert not list(tmp_path.glob("*.pt")) and (tmp_path / "optim.safetensors").exists()


def test_torch_ssim_matches_the_metric():
    rng = np.random.default_rng(0)
    a = rng.random((30, 28)).astype(np.float32)
    b = (a + 0.1 * rng.random((30, 28))).astype(np.float32)
    t = float(ssim_torch(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]))
    assert abs(t - ssim_np(a, b)) < 2e-3  # same formula; the metric also averages the valid region


def _clip(seed=0, length=4):
    sampler = CineSampler(_images(), size=(24, 24), phantom_fraction=0.0, settings=SETTINGS)
    return collate([sampler.clip(np.random.default_rng(seed), length)])


def test_ddei_clip_reconstruction_is_time_shift_equivariant():
    torch.manual_seed(0)
    model = KGMgT(TINY_K).eval()
    b = _clip()
    args = [torch.from_numpy(b[k]) for k in ("zero_filled", "kspace", "mask")]
    maps = torch.from_numpy(b["maps"])
    with torch.no_grad():
        x = reconstruct_clip(model, *args, maps)
        shifted = reconstruct_clip(model, *[torch.roll(a, 1, 1) for a in args], maps)
    assert torch.allclose(torch.roll(x, 1, 1), shifted, atol=1e-4)


def test_rotation_by_zero_is_identity_and_ddei_loss_trains():
    x = torch.complex(torch.randn(2, 3, 12, 10), torch.randn(2, 3, 12, 10))
    assert torch.allclose(rotate(x, torch.zeros(2)), x, atol=1e-5)
    torch.manual_seed(0)
    model = KGMgT(KGMgTConfig(**{**TINY_K.to_dict(), "dc_mode": "soft", "dc_learnable": True}))
    loss, parts = ddei_loss(model, _clip(1), np.random.default_rng(0), "cpu")
    loss.backward()
    assert np.isfinite(parts["mc"]) and np.isfinite(parts["ei"]) and parts["ei"] > 0
    assert model.dc.log_noise_weight.grad is not None


def test_cine_sampler_uses_real_cines_with_their_own_frame_count():
    rng = np.random.default_rng(0)
    real = np.stack([np.roll(_images(1, 40)[0], k, axis=0) for k in range(7)])  # 7-frame "real" cine, magnitude
    sampler = CineSampler([], size=(24, 24), phantom_fraction=0.0, cines=[real], settings=SETTINGS)
    s = sampler(rng)
    assert s["frames"].shape == (3, 24, 24) and s["kspace"].shape[1:] == (24, 24)
    clip = sampler.clip(rng, 4)
    assert clip["zero_filled"].shape == (4, 24, 24) and clip["mask"].shape == (4, 24)


def test_train_cli_reads_a_cmrxrecon_file(tmp_path, capsys):
    """`streamrecon train --cmrxrecon FILE` trains on the file's real cine (tiny, 1 step)."""
    from models.fft import fft2c
    from models.phantoms import cardiac_cine
    from models.synthetic import coil_maps
    from models.training.cli import main
    from simulator.writers import write_cmrxrecon

    video = cardiac_cine(32, 28, 5, seed=1)                       # (t, ky, kx)
    k = fft2c(coil_maps(2, 32, 28, seed=0)[None] * video[:, None])  # (t, coils, ky, kx)
    path = tmp_path / "cine.mat"
    write_cmrxrecon(path, k[:, None].astype(np.complex64))         # (t, z=1, coils, ky, kx)
    rc = main(["--model", "kgmgt", "--data", "none", "--cmrxrecon", str(path), "--steps", "1", "--batch", "1",
               "--size", "24", "--val-every", "1", "--ckpt", str(tmp_path / "ck"), "--export", "t",
               "--export-dir", str(tmp_path)])
    assert rc == 0 and (tmp_path / "t.safetensors").exists()
    assert "0 static images, 1 real cines, phantom fraction 0.0" in capsys.readouterr().out


def test_train_cli_names_the_registry_and_refuses_a_model_without_a_recipe(tmp_path, capsys):
    """The choices are the registry's; a registered model with no training recipe is refused by name, not
    trained with another model's samplers (the dual U-Net baseline is registered but has no recipe)."""
    from models import registry
    from models.training.cli import build_parser, main

    assert build_parser()._option_string_actions["--model"].choices == registry.names()
    rc = main(["--model", "dual_unet_resnet3d", "--data", "synthetic", "--steps", "1", "--ckpt", str(tmp_path)])
    assert rc == 2 and "no training recipe for 'dual_unet_resnet3d'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was trained


def test_train_cli_fine_tunes_from_weights_with_the_prox_dc(tmp_path, capsys):
    """`--init-weights` starts from a saved set (its config, its tensors); steps and version count on from its steps."""
    import json

    from models.weights import load_weights, save_weights
    from models.training.cli import main

    torch.manual_seed(0)
    base = KGMgT(KGMgTConfig(**{**TINY_K.to_dict(), "dc_mode": "soft", "dc_learnable": True}))
    save_weights(base, tmp_path, "base", "kgmgt", "base-v1", {"steps": 7})
    rc = main(["--model", "kgmgt", "--data", "synthetic", "--steps", "1", "--batch", "1", "--size", "24",
               "--val-every", "1", "--lr", "1e-4", "--init-weights", str(tmp_path / "base.safetensors"),
               "--dc-method", "prox", "--dc-iterations", "2", "--ckpt", str(tmp_path / "ck"),
               "--export", "ft", "--export-dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "base-v1, 7 steps" in out and "training DC: soft-prox-2" in out
    card = json.loads((tmp_path / "ft.json").read_text())
    assert card["version"].endswith("-s8") and card["meta"]["init_version"] == "base-v1"
    assert card["meta"]["total_steps"] == 8 and card["meta"]["dc_method"] == "prox"
    model, _ = load_weights(tmp_path / "ft.safetensors")
    assert model.cfg.channels == TINY_K.channels
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed  # one Adam step moved the weights


def test_reference_augmentation_moves_and_noises_the_reference_only():
    from models.training_data import rigid_warp

    im = _images(1, size=32)[0]
    np.testing.assert_allclose(rigid_warp(im, 0.0, 0.0, 0.0), im, atol=1e-6)
    np.testing.assert_allclose(rigid_warp(im, 2.0, -3.0, 0.0)[4:-4, 4:-4], np.roll(im, (2, -3), (0, 1))[4:-4, 4:-4],
                               atol=1e-5)
    quarter = rigid_warp(im, 0.0, 0.0, 90.0)
    assert np.abs(quarter[1:-1, 1:-1] - np.rot90(im, -1)[1:-1, 1:-1]).max() < 1e-4 or \
        np.abs(quarter[1:-1, 1:-1] - np.rot90(im, 1)[1:-1, 1:-1]).max() < 1e-4
    ims = _images()
    kw = dict(size=(24, 24), reference_dropout=0.0, settings=SETTINGS)
    plain = PairSampler([(ims[0], ims[1])], **kw)
    moved = PairSampler([(ims[0], ims[1])], misregistration=1.0, max_shift_px=2.0, max_rotation_deg=2.0,
                        reference_noise=(0.02, 0.03), **kw)
    a, b = plain(np.random.default_rng(4)), moved(np.random.default_rng(4))
    np.testing.assert_array_equal(a["target_image"], b["target_image"])  # the target and its acquisition unchanged
    diff = np.abs(a["reference"] - b["reference"])
    assert diff.mean() > 0.01 and np.abs(b["reference"]).min() >= 0
