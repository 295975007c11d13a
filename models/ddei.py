"""Unsupervised training from undersampled data alone: DDEI (seeds/003).

Loss = measurement consistency + equivariant imaging (EI):

    x_hat = f(y)                              reconstruct a periodic clip (B, L, H, W)
    MC    = || M F S x_hat - y ||_1            (mean over measured samples)
    x2    = g(x_hat),  g random from  time shift | (rotation | smooth diffeomorphism)
    x3    = f(M F S x2)                       re-measure with the same physics, reconstruct
    EI    = || x3 - x2 ||_1

as in DDEI's ``MCLoss + EILoss(ShiftTime | (Diffeo | Rotate))``. The
diffeomorphism here is a smooth random displacement field (a 4x4 grid of
Gaussian displacements, bicubically upsampled, at most ``diffeo_px``), not
DDEI's CPAB transform. ``f`` is KGMgT applied frame by frame with periodic
neighbours, so a clip needs ``L >= 3`` frames. With hard DC inside the model
MC is zero by construction; the shipped configs use learned soft DC.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .complex_channels import from_channels, to_channels
from .operators import expand_mask, sense_adjoint, sense_forward
from .train import TrainConfig, load_checkpoint, progress_bar, save_checkpoint
from .training_data import collate


def reconstruct_clip(model: nn.Module, zf: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``zf (B, L, H, W)``, ``y (B, L, C, H, W)``, ``masks (B, L, H)``, ``maps (B, C, H, W)`` -> ``(B, L, H, W)``."""
    b, l, h, w = zf.shape
    prev, nxt = torch.roll(zf, 1, 1), torch.roll(zf, -1, 1)
    flat = lambda t: t.reshape(b * l, *t.shape[2:])  # noqa: E731
    mp = maps.unsqueeze(1).expand(b, l, *maps.shape[1:])
    out = model(to_channels(flat(zf)), to_channels(flat(prev)), to_channels(flat(nxt)),
                kspace=flat(y), mask=flat(masks), maps=flat(mp))
    return from_channels(out).view(b, l, h, w)


def _measure(x: torch.Tensor, masks: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    b, l = x.shape[:2]
    mp = maps.unsqueeze(1).expand(b, l, *maps.shape[1:]).reshape(b * l, *maps.shape[1:])
    y = sense_forward(x.reshape(b * l, *x.shape[2:]), mp, masks.reshape(b * l, -1))
    return y.view(b, l, *y.shape[1:])


def _adjoint(y: torch.Tensor, masks: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    b, l = y.shape[:2]
    mp = maps.unsqueeze(1).expand(b, l, *maps.shape[1:]).reshape(b * l, *maps.shape[1:])
    x = sense_adjoint(y.reshape(b * l, *y.shape[2:]), mp, masks.reshape(b * l, -1))
    return x.view(b, l, *x.shape[1:])


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample complex ``x (B, L, H, W)`` at ``grid (B, H, W, 2)`` (normalised, align_corners=True), all frames alike."""
    b, l, h, w = x.shape
    ch = torch.cat((x.real, x.imag), 1)  # (B, 2L, H, W)
    out = F.grid_sample(ch, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return torch.complex(out[:, :l], out[:, l:])


def identity_grid(b: int, h: int, w: int, device) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=device), torch.linspace(-1, 1, w, device=device), indexing="ij")
    return torch.stack((xs, ys), -1).unsqueeze(0).expand(b, h, w, 2)


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate every frame of item ``i`` by ``angle[i]`` radians about the image centre."""
    b, _, h, w = x.shape
    g = identity_grid(b, h, w, x.device)
    c, s = torch.cos(angle).view(b, 1, 1), torch.sin(angle).view(b, 1, 1)
    gx, gy = g[..., 0] * (w - 1) / 2, g[..., 1] * (h - 1) / 2  # pixels about the centre
    rx, ry = c * gx - s * gy, s * gx + c * gy
    return warp(x, torch.stack((rx * 2 / (w - 1), ry * 2 / (h - 1)), -1))


def diffeo(x: torch.Tensor, amplitude_px: float, generator: torch.Generator | None = None) -> torch.Tensor:
    b, _, h, w = x.shape
    coarse = torch.randn(b, 2, 4, 4, generator=generator).to(x.device)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    field = amplitude_px * field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    g = identity_grid(b, h, w, x.device) + torch.stack((field[:, 0] * 2 / (w - 1), field[:, 1] * 2 / (h - 1)), -1)
    return warp(x, g)


def random_transform(x: torch.Tensor, rng: np.random.Generator, diffeo_px: float = 3.0) -> torch.Tensor:
    """DDEI's ``ShiftTime | (Diffeo | Rotate)``: one of the three, at random."""
    kind = rng.integers(2)
    if kind == 0:
        return torch.roll(x, int(rng.integers(1, x.shape[1])), 1)
    if rng.integers(2) == 0:
        angle = torch.from_numpy(rng.uniform(-math.pi, math.pi, x.shape[0]).astype(np.float32)).to(x.device)
        return rotate(x, angle)
    return diffeo(x, diffeo_px, torch.Generator().manual_seed(int(rng.integers(1 << 31))))


def ddei_loss(model: nn.Module, batch: dict[str, np.ndarray], rng: np.random.Generator, device,
              ei_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    zf = torch.from_numpy(batch["zero_filled"]).to(device)
    y = torch.from_numpy(batch["kspace"]).to(device)
    masks = torch.from_numpy(batch["mask"]).to(device)
    maps = torch.from_numpy(batch["maps"]).to(device)
    x_hat = reconstruct_clip(model, zf, y, masks, maps)
    m = expand_mask(masks.reshape(-1, masks.shape[-1]), *zf.shape[-2:]).view(*masks.shape[:2], 1, *zf.shape[-2:])
    resid = (_measure(x_hat, masks, maps) - m * y).abs()
    mc = resid.sum() / (m.sum() * y.shape[2]).clamp_min(1)
    x2 = random_transform(x_hat, rng)
    y2 = _measure(x2, masks, maps)
    x3 = reconstruct_clip(model, _adjoint(y2, masks, maps), y2, masks, maps)
    ei = (x3 - x2).abs().mean()
    return mc + ei_weight * ei, {"mc": float(mc.detach()), "ei": float(ei.detach())}


def train_unsupervised(model: nn.Module, sampler, cfg: TrainConfig, ckpt_dir=None, resume: bool = False,
                       clip_length: int = 5, ei_weight: float = 1.0, log=print) -> dict[str, Any]:
    """DDEI training with the same config, checkpoints and progress as :func:`models.train.train`.

    ``sampler`` must offer ``clip(rng, length)`` (``models.training_data.CineSampler`` does).
    Validation PSNR (against targets, for monitoring only) is over fixed clips.
    """
    from pathlib import Path
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ckpt = Path(ckpt_dir) if ckpt_dir else None
    step, history = 0, []
    if resume and ckpt and (ckpt / "state.json").exists():
        st = load_checkpoint(ckpt, model, optim)
        step, history = int(st["step"]), list(st["history"])
    vrng = np.random.default_rng(cfg.seed + 10_000_019)
    val = [collate([sampler.clip(vrng, clip_length) for _ in range(cfg.batch)]) for _ in range(cfg.val_batches)]
    rng = np.random.default_rng(cfg.seed + step)
    bar, start, running = progress_bar(cfg.steps, step), time.time(), []
    while step < cfg.steps:
        lr = cfg.lr * (cfg.lr_min_fraction + (1 - cfg.lr_min_fraction) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for g in optim.param_groups:
            g["lr"] = lr
        batch = collate([sampler.clip(rng, clip_length) for _ in range(cfg.batch)])
        loss, parts = ddei_loss(model, batch, rng, device, ei_weight)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optim.step()
        step += 1
        running.append(float(loss.detach()))
        if step % cfg.val_every == 0 or step == cfg.steps:
            history.append({"step": step, "loss": float(np.mean(running[-cfg.val_every:])), **parts,
                            "val_psnr": validate_clips(model, val, device)})
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"loss": f"{running[-1]:.4f}", **({"val_psnr": f"{history[-1]['val_psnr']:.2f}"} if history else {})})
        elif step % cfg.log_every == 0:
            log(f"step {step}/{cfg.steps} loss {np.mean(running[-cfg.log_every:]):.4f} mc {parts['mc']:.4f} ei {parts['ei']:.4f}")
        if ckpt and (step % cfg.ckpt_every == 0 or step == cfg.steps):
            save_checkpoint(ckpt, model, optim, step, history, {"mode": "ddei"})
        if cfg.time_limit_s is not None and time.time() - start > cfg.time_limit_s:
            if ckpt:
                save_checkpoint(ckpt, model, optim, step, history, {"mode": "ddei"})
            break
    if bar is not None:
        bar.close()
    return {"history": history, "seconds": time.time() - start, "step": step}


def validate_clips(model: nn.Module, clips, device) -> float:
    model.eval()
    vals = []
    with torch.no_grad():
        for b in clips:
            x = reconstruct_clip(model, torch.from_numpy(b["zero_filled"]).to(device), torch.from_numpy(b["kspace"]).to(device),
                                 torch.from_numpy(b["mask"]).to(device), torch.from_numpy(b["maps"]).to(device)).abs()
            t = torch.from_numpy(b["target_image"]).to(device).abs()
            mse = ((x - t) ** 2).flatten(2).mean(2)
            vals.append(float((20 * torch.log10(t.flatten(2).amax(2)) - 10 * torch.log10(mse.clamp_min(1e-20))).mean()))
    model.train()
    return float(np.mean(vals))


__all__ = ["ddei_loss", "train_unsupervised", "reconstruct_clip", "rotate", "diffeo", "random_transform", "validate_clips"]
