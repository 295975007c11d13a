"""Pure-torch training loop for the reconstruction networks.

- Tasks: ``"cine"`` (KGMgT on :class:`models.training_data.CineSampler`
  samples) and ``"pair"`` (SGF-MRI on ``PairSampler`` samples). A sampler is
  any callable ``rng -> dict`` of NumPy arrays (see ``models.training_data``);
  data loading from files lives outside ``models/``.
- Loss: L1 on the 2-channel complex output by default; ``ssim_weight`` adds
  ``1 - SSIM`` on magnitudes; ``perceptual`` (a user-supplied feature network,
  e.g. VGG19 features loaded from safetensors) and ``adversarial`` (WGAN-GP
  critic) terms are optional, with the paper's weights 1e-4 and 1e-6.
- Adam, cosine learning-rate decay, gradient clipping, fixed seed (NumPy
  sampler RNG and torch), CPU or CUDA, mixed precision (bf16 autocast) on CUDA.
- Checkpoints: ``ckpt/last.safetensors`` (model), ``ckpt/optim.safetensors``
  (Adam moments) and ``ckpt/state.json`` (step, RNG seed, history); ``resume``
  continues from them (the sampler RNG is re-seeded from seed + step, so a
  resumed run is repeatable, though not bit-identical to an uninterrupted one).
- Progress: tqdm when installed (loss and validation PSNR in the bar),
  plain log lines otherwise.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .complex_channels import to_channels
from .training_data import collate


@dataclass
class TrainConfig:
    task: str = "cine"            # "cine" | "pair"
    steps: int = 1000
    batch: int = 4
    lr: float = 1e-3
    lr_min_fraction: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ssim_weight: float = 0.0
    loss: str = "l1"                  # "l1", or "relative-l1": log of each sample's L1 error over its input's
    perceptual_weight: float = 1e-4   # used only when a perceptual network is given
    adversarial_weight: float = 1e-6  # used only when adversarial=True
    adversarial: bool = False
    seed: int = 0
    device: str = "cpu"
    amp: bool = True                  # bf16 autocast, CUDA only
    val_every: int = 100
    val_batches: int = 4
    ckpt_every: int = 100
    log_every: int = 10
    time_limit_s: float | None = None  # stop (and checkpoint) after this wall time
    schedule_by_time: bool = True      # the cosine decay also ends at the time limit (False: over `steps` only,
                                       # for a long run spread over several sessions, each stopped by the limit)
    threads: int | None = None


# ------------------------------------------------------------------ batches -> tensors


def _c(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.complex64)).to(device)


def cine_forward(model: nn.Module, batch: dict[str, np.ndarray], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prediction, target)`` as ``(B, 2, H, W)`` for a collated cine batch."""
    f = _c(batch["frames"], device)
    mask = torch.from_numpy(batch["mask"]).to(device)
    pred = model(to_channels(f[:, 0]), to_channels(f[:, 1]), to_channels(f[:, 2]),
                 kspace=_c(batch["kspace"], device), mask=mask, maps=_c(batch["maps"], device))
    return pred, to_channels(_c(batch["target_image"], device))


def pair_forward(model: nn.Module, batch: dict[str, np.ndarray], device) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.from_numpy(batch["mask"]).to(device)
    pred = model(to_channels(_c(batch["target_zf"], device)), to_channels(_c(batch["reference"], device)),
                 kspace=_c(batch["kspace"], device), mask=mask, maps=_c(batch["maps"], device))
    return pred, to_channels(_c(batch["target_image"], device))


FORWARDS: dict[str, Callable] = {"cine": cine_forward, "pair": pair_forward}


# ------------------------------------------------------------------ losses


def relative_l1(pred: torch.Tensor, target: torch.Tensor, network_input: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ``log(L1(pred) / L1(input))``: what the network adds to its own input, on a log
    scale like dB. Every sample counts alike whatever its noise or acceleration (plain L1 lets the noisiest,
    most accelerated samples -- where little can be gained -- dominate the gradient), and the quantity
    optimised is the one reported: the gain over the input."""
    dims = tuple(range(1, pred.ndim))
    err = (pred - target).abs().mean(dims)
    base = (network_input - target).abs().mean(dims).detach().clamp_min(1e-8)
    return torch.log(err.clamp_min(1e-8) / base).mean()


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, H, W)`` -> ``(B, 1, H, W)``."""
    return torch.sqrt(x[:, :1] ** 2 + x[:, 1:2] ** 2 + 1e-12)


def ssim_torch(pred: torch.Tensor, ref: torch.Tensor, win: int = 7) -> torch.Tensor:
    """Mean SSIM of ``(B, 1, H, W)`` images, uniform window, data range = max of each reference."""
    rng = ref.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    k = torch.ones(1, 1, win, win, device=pred.device, dtype=pred.dtype) / win ** 2
    mu_p, mu_r = F.conv2d(pred, k), F.conv2d(ref, k)
    n = win * win
    cov = n / (n - 1)
    vp = cov * (F.conv2d(pred * pred, k) - mu_p ** 2)
    vr = cov * (F.conv2d(ref * ref, k) - mu_r ** 2)
    vpr = cov * (F.conv2d(pred * ref, k) - mu_p * mu_r)
    s = ((2 * mu_p * mu_r + c1) * (2 * vpr + c2)) / ((mu_p ** 2 + mu_r ** 2 + c1) * (vp + vr + c2))
    return s.mean()


class VGG19Features(nn.Module):
    """VGG19 convolutional trunk up to relu5_4, same layer order as torchvision's ``vgg19().features``,
    so a user can convert ImageNet weights to safetensors (keys ``features.N.weight``) and pass them.
    None ship with this project (none can be downloaded here)."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    @classmethod
    def from_safetensors(cls, path: str | Path) -> "VGG19Features":
        net = cls()
        state = load_file(str(path))
        net.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")}, strict=False)
        for p in net.parameters():
            p.requires_grad_(False)
        return net.eval()

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        x = (mag.repeat(1, 3, 1, 1) - self.mean) / self.std
        return self.features(x)


class Critic(nn.Module):
    """A small WGAN-GP critic on magnitudes (trained from scratch alongside)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


# ------------------------------------------------------------------ checkpoints


def save_checkpoint(folder: Path, model: nn.Module, optim: torch.optim.Optimizer, step: int,
                    history: list[dict], extra: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / "last.safetensors"))
    flat: dict[str, torch.Tensor] = {}
    sd = optim.state_dict()
    for pid, st in sd["state"].items():
        for name, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            flat[f"{pid}.{name}"] = t.detach().cpu().contiguous()
    save_file(flat, str(folder / "optim.safetensors"))
    state = {"step": step, "history": history, "param_groups": sd["param_groups"], **extra}
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(folder / "state.json")


def load_checkpoint(folder: Path, model: nn.Module, optim: torch.optim.Optimizer) -> dict[str, Any]:
    state = json.loads((folder / "state.json").read_text())
    model.load_state_dict(load_file(str(folder / "last.safetensors")), strict=True)
    flat = load_file(str(folder / "optim.safetensors"))
    per: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in flat.items():
        pid, name = key.split(".", 1)
        per.setdefault(int(pid), {})[name] = val
    optim.load_state_dict({"state": per, "param_groups": state["param_groups"]})
    return state


# ------------------------------------------------------------------ the loop


def make_batches(sampler: Callable, rng: np.random.Generator, n: int, batch: int) -> list[dict[str, np.ndarray]]:
    return [collate([sampler(rng) for _ in range(batch)]) for _ in range(n)]


def _psnr(pred: torch.Tensor, tgt: torch.Tensor) -> list[float]:
    pm, tm = magnitude(pred.float()), magnitude(tgt)
    mse = ((pm - tm) ** 2).flatten(1).mean(1)
    peak = tm.flatten(1).amax(1)
    return (20 * torch.log10(peak) - 10 * torch.log10(mse.clamp_min(1e-20))).tolist()


def network_input(task: str, batch: dict[str, np.ndarray]) -> np.ndarray:
    """The image the network starts from (``(B, ny, nx)`` complex): the cine target frame, or the pair's target."""
    return batch["frames"][:, 0] if task == "cine" else batch["target_zf"]


def validate(model: nn.Module, forward: Callable, batches: Sequence[dict], device,
             task: str | None = None) -> dict[str, float]:
    """Mean magnitude PSNR (dB, peak = max of each reference) and L1 over fixed validation batches.

    With ``task``, also the PSNR of the network's own input and the gain over it (``val_gain``), the
    figure that says whether the network adds anything; ``val_min_gain`` is the worst batch's."""
    model.eval()
    psnrs, l1s, inputs, kinds = [], [], [], {}
    with torch.no_grad():
        for b in batches:
            pred, tgt = forward(model, b, device)
            p = _psnr(pred, tgt)
            if "kind" in b:  # e.g. a pair validated with its reference, without one, and with a wrong one
                for kind, v in zip(np.asarray(b["kind"]).tolist(), p):
                    kinds.setdefault(str(kind), []).append(v)
                continue
            psnrs += p
            l1s.append(float(F.l1_loss(pred.float(), tgt)))
            if task is not None:
                inputs += _psnr(to_channels(_c(network_input(task, b), device)), tgt)
    model.train()
    if kinds:
        out = {f"val_psnr_{k}": float(np.mean(v)) for k, v in kinds.items()}
        first = next(iter(kinds))
        out["val_psnr"] = out[f"val_psnr_{first}"]
        if {"with", "without"} <= set(kinds):
            out["val_ref_gain"] = float(np.mean(np.subtract(kinds["with"], kinds["without"])))
        if {"wrong", "without"} <= set(kinds):
            out["val_wrong_ref_cost"] = float(np.mean(np.subtract(kinds["without"], kinds["wrong"])))
        return out
    out = {"val_psnr": float(np.mean(psnrs)), "val_l1": float(np.mean(l1s))}
    if inputs:
        gains = np.asarray(psnrs) - np.asarray(inputs)
        out.update({"val_input_psnr": float(np.mean(inputs)), "val_gain": float(gains.mean()),
                    "val_min_gain": float(gains.min())})
    return out


def progress_bar(total: int, initial: int):
    import sys
    if not sys.stderr.isatty():  # a background run's log file gets plain lines, not a redrawn bar
        return None
    try:
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, dynamic_ncols=True)
    except ImportError:
        return None


def train(model: nn.Module, sampler: Callable, cfg: TrainConfig, ckpt_dir: str | Path | None = None,
          resume: bool = False, perceptual: nn.Module | None = None,
          log: Callable[[str], None] = print, val_sampler: Callable | None = None,
          val_data: Sequence[dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Train ``model`` on samples from ``sampler``; returns ``{"history", "seconds", "step"}``.

    Validation batches are ``val_data`` (fixed held-out batches, any matrix each) when given, else
    drawn from ``val_sampler`` (held-out data) or ``sampler`` with a fixed seed; either way the same
    batches at every validation. With a checkpoint folder, the weights of the best validation so far
    are kept as ``best.safetensors`` (by ``val_gain`` when the input is known, else ``val_psnr``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    forward = FORWARDS[cfg.task]
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                             weight_decay=cfg.weight_decay)
    critic = Critic().to(device) if cfg.adversarial else None
    optim_d = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9)) if critic else None
    if perceptual is not None:
        perceptual = perceptual.to(device)
    val = list(val_data) if val_data is not None else make_batches(
        val_sampler or sampler, np.random.default_rng(cfg.seed + 10_000_019), cfg.val_batches, cfg.batch)
    step, history, elapsed_before = 0, [], 0.0
    ckpt = Path(ckpt_dir) if ckpt_dir else None
    if resume and ckpt and (ckpt / "state.json").exists():
        st = load_checkpoint(ckpt, model, optim)
        step, history = int(st["step"]), list(st["history"])
        elapsed_before = float(st.get("seconds", 0.0))
        log(f"resumed from {ckpt} at step {step}")
    rng = np.random.default_rng(cfg.seed + step)
    use_amp = cfg.amp and device.type == "cuda"
    bar = progress_bar(cfg.steps, step)
    start = time.time()
    running = []
    while step < cfg.steps:
        # cosine decay over the run: steps, or wall time when a time limit is the tighter bound
        progress = step / cfg.steps
        if cfg.time_limit_s and cfg.schedule_by_time:
            progress = max(progress, (elapsed_before + time.time() - start) / cfg.time_limit_s)
        progress = min(progress, 1.0)
        lr = cfg.lr * (cfg.lr_min_fraction + (1 - cfg.lr_min_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in optim.param_groups:
            g["lr"] = lr
        batch = collate([sampler(rng) for _ in range(cfg.batch)])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            pred, tgt = forward(model, batch, device)
        pred = pred.float()
        if cfg.loss == "relative-l1":
            loss = relative_l1(pred, tgt, to_channels(_c(network_input(cfg.task, batch), device)))
        else:
            loss = F.l1_loss(pred, tgt)
        if cfg.ssim_weight > 0:
            loss = loss + cfg.ssim_weight * (1 - ssim_torch(magnitude(pred), magnitude(tgt)))
        if perceptual is not None:
            loss = loss + cfg.perceptual_weight * F.mse_loss(perceptual(magnitude(pred)), perceptual(magnitude(tgt)))
        if critic is not None:
            fake, real = magnitude(pred), magnitude(tgt)
            d_loss = critic(fake.detach()).mean() - critic(real).mean() + 10 * gradient_penalty(critic, real, fake.detach())
            optim_d.zero_grad(set_to_none=True)
            d_loss.backward()
            optim_d.step()
            loss = loss - cfg.adversarial_weight * critic(fake).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optim.step()
        step += 1
        running.append(float(loss.detach()))
        entry: dict[str, Any] = {}
        if step % cfg.val_every == 0 or step == cfg.steps:
            entry = {"step": step, "loss": float(np.mean(running[-cfg.val_every:])), "lr": lr,
                     "seconds": round(elapsed_before + time.time() - start, 1),
                     **validate(model, forward, val, device, cfg.task)}
            history.append(entry)
            key = "val_gain" if "val_gain" in entry else "val_psnr"
            if ckpt and entry[key] >= max(h.get(key, -1e9) for h in history):
                ckpt.mkdir(parents=True, exist_ok=True)
                save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                          str(ckpt / "best.safetensors"), metadata={"step": str(step), key: f"{entry[key]:.4f}"})
        if bar is not None:
            bar.update(1)
            post = {"loss": f"{np.mean(running[-cfg.log_every:]):.4f}"}
            if history:
                post["val_psnr"] = f"{history[-1]['val_psnr']:.2f}"
            bar.set_postfix(post)
        elif step % cfg.log_every == 0 or entry:
            msg = f"step {step}/{cfg.steps} loss {np.mean(running[-cfg.log_every:]):.4f} lr {lr:.2e} {time.time() - start:.0f}s"
            if entry:
                msg += f" val_psnr {entry['val_psnr']:.2f} dB"
                if "val_gain" in entry:
                    msg += f" (input {entry['val_input_psnr']:.2f}, gain {entry['val_gain']:+.2f}, worst {entry['val_min_gain']:+.2f})"
                if "val_ref_gain" in entry:
                    msg += (f" (without reference {entry['val_psnr_without']:.2f}, reference gain "
                            f"{entry['val_ref_gain']:+.2f}, wrong-reference cost {entry.get('val_wrong_ref_cost', 0):+.2f})")
            log(msg)
        out_of_time = cfg.time_limit_s is not None and elapsed_before + time.time() - start > cfg.time_limit_s
        if ckpt and (step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time):
            save_checkpoint(ckpt, model, optim, step, history,
                            {"config": asdict(cfg), "seconds": elapsed_before + time.time() - start})
        if out_of_time:
            log(f"time limit reached at step {step}")
            break
    if bar is not None:
        bar.close()
    return {"history": history, "seconds": elapsed_before + time.time() - start, "step": step}


__all__ = ["TrainConfig", "train", "validate", "relative_l1", "cine_forward", "pair_forward", "ssim_torch", "magnitude",
           "VGG19Features", "Critic", "gradient_penalty", "save_checkpoint", "load_checkpoint", "make_batches"]
