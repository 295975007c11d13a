"""``streamrecon train``: train KGMgT (cine) or SGF-MRI (multi-contrast) on simulated acquisitions.

Data (``--data``):
- ``shared`` (default): real images from ``../shared/data`` (qMRLab volumes;
  see ``simulator.model_data`` for the splits -- the real cine and the CDLMRI
  slices are held out for ``streamrecon evaluate``), plus, for cine, the
  built-in beating-heart phantom (``--phantom-fraction``);
- ``synthetic``: the built-in phantoms only (no files needed).

Examples:
    streamrecon train --model kgmgt --steps 3000 --time-limit 2100 --export kgmgt_cine_small
    streamrecon train --model sgfmri --steps 3000 --time-limit 1500 --export sgfmri_brain_small
    streamrecon train --model kgmgt --resume --ckpt out/train/kgmgt
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def _machine() -> str:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} logical cores, {gpu}, torch {torch.__version__}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrecon train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("kgmgt", "sgfmri"), required=True)
    p.add_argument("--config", choices=("small", "official"), default="small",
                   help="network width: the CPU-trainable 'small' one or the paper's")
    p.add_argument("--data", choices=("shared", "synthetic"), default="shared")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--size", type=int, default=None, help="training matrix (square); default 80 cine, 96 pairs")
    p.add_argument("--accel", type=float, nargs=2, default=(4.0, 12.0))
    p.add_argument("--phantom-fraction", type=float, default=0.3)
    p.add_argument("--ssim-weight", type=float, default=0.0)
    p.add_argument("--perceptual-weights", type=Path, default=None,
                   help="VGG19 'features.*' weights as safetensors (user supplied) for the perceptual term")
    p.add_argument("--adversarial", action="store_true", help="add the WGAN-GP term (weight 1e-6)")
    p.add_argument("--unsupervised", action="store_true",
                   help="DDEI: measurement consistency + equivariant imaging, no fully sampled targets (cine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=None, help="seconds; checkpoint and stop after")
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (default out/train/MODEL)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--export", default=None, help="write the final weights as models/weights/NAME.safetensors + .json")
    p.add_argument("--export-dir", type=Path, default=None, help="folder for --export (default models/weights)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch

    from models.train import TrainConfig, VGG19Features, train
    from models.training_data import CineSampler, PairSampler, SimulationSettings
    from models.weights import SHIPPED_DIR, build_model, save_weights

    from . import model_data

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = SimulationSettings(accel=tuple(args.accel))
    if args.model == "kgmgt":
        images = model_data.cine_training_images() if args.data == "shared" else []
        size = args.size or 80
        sampler = CineSampler(images, size=(size, size), frames=(8, 14),
                              phantom_fraction=1.0 if not images else args.phantom_fraction, settings=settings)
        task = "cine"
        from models.kgmgt import KGMgTConfig
        cfg = KGMgTConfig.official() if args.config == "official" else KGMgTConfig.cpu_small()
    else:
        if args.data == "shared":
            pairs = model_data.multicontrast_training_pairs()
        else:
            from models.phantoms import brain_pair
            pairs = [tuple(np.abs(a) for a in brain_pair(128, seed=s)) for s in range(64)]
        size = args.size or 96
        sampler = PairSampler(pairs, size=(size, size), settings=settings)
        task = "pair"
        from models.sgfmri import SGFMRIConfig
        cfg = SGFMRIConfig.paper() if args.config == "official" else SGFMRIConfig.cpu_small()
    model = build_model(args.model, cfg.to_dict())
    tcfg = TrainConfig(task=task, steps=args.steps, batch=args.batch, lr=args.lr, ssim_weight=args.ssim_weight,
                       adversarial=args.adversarial, seed=args.seed, device=args.device, val_every=args.val_every,
                       ckpt_every=args.val_every, time_limit_s=args.time_limit, threads=args.threads)
    perceptual = VGG19Features.from_safetensors(args.perceptual_weights) if args.perceptual_weights else None
    ckpt = args.ckpt or Path("out") / "train" / args.model
    print(f"training {args.model} ({args.config}, {sum(p.numel() for p in model.parameters())} parameters) "
          f"on {args.data} data, {size}x{size}, batch {args.batch}, {args.steps} steps; checkpoints in {ckpt}")
    print(f"machine: {_machine()}")
    if args.unsupervised:
        if args.model != "kgmgt":
            print("--unsupervised is implemented for the cine model", file=sys.stderr)
            return 2
        from models.ddei import train_unsupervised
        result = train_unsupervised(model, sampler, tcfg, ckpt_dir=ckpt, resume=args.resume)
    else:
        result = train(model, sampler, tcfg, ckpt_dir=ckpt, resume=args.resume, perceptual=perceptual)
    print(json.dumps(result["history"][-3:], indent=1))
    if args.export:
        meta = {"command": "streamrecon train " + " ".join(argv), "machine": _machine(),
                "train_seconds": round(result["seconds"], 1), "steps": result["step"],
                "date": time.strftime("%Y-%m-%d"), "history": result["history"],
                "training_size": [size, size], "accel_range": list(args.accel), "data": args.data,
                "unsupervised": args.unsupervised}
        version = f"{args.export}-{time.strftime('%Y%m%d')}-s{result['step']}"
        path = save_weights(model, args.export_dir or SHIPPED_DIR, args.export, args.model, version, meta)
        print(f"exported {path} (version {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
