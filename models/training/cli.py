"""``streamrecon train``: train KGMgT (cine) or SGF-MRI (multi-contrast) on simulated acquisitions.

Data (``--data``):
- ``shared`` (default): real images from ``../shared/data`` (qMRLab volumes;
  for pairs also one TCGA patient and CDLMRI patientA; see
  ``models.shared_data`` for the splits -- the real cine, the other TCGA
  patient and the CDLMRI tumour slice are held out for ``streamrecon evaluate``), plus, for cine, the
  built-in beating-heart phantom (``--phantom-fraction``);
- ``sunnybrook`` (cine): real hearts, the Sunnybrook short-axis cines of the
  training patients, simulated as real-time scans with view-shared inputs
  (``models.cine_windows``); validation on the held-out patient
  (``models.shared_data.SUNNYBROOK_VALIDATION``) and the GIRAF cine;
- ``synthetic``: the built-in phantoms only (no files needed);
- ``none``: only the files given below.

Datasets (any number, added to ``--data``), read by ``simulator.readers`` and
used in the image domain -- their fully sampled coil-combined references are
re-simulated with random coils, phases and masks like everything else:
``--cmrxrecon FILE...`` (2023/2024 cine .mat: real cardiac motion),
``--ismrmrd FILE...`` (multi-frame scans -> cines, single frames -> static
images), ``--fastmri FILE...`` (slices -> static images for cine),
``--m4raw DIR`` (T1 guides T2 and FLAIR pairs for SGF-MRI).

Examples:
    streamrecon train --model kgmgt --steps 3000 --time-limit 2100 --export kgmgt_cine_small
    streamrecon train --model sgfmri --steps 3000 --time-limit 1500 --export sgfmri_brain_small
    streamrecon train --model kgmgt --resume --ckpt out/train/kgmgt
    streamrecon train --model kgmgt --init-weights models/weights/kgmgt_cine_small.safetensors \
        --lr 3e-4 --dc-method prox --time-limit 2100 --export kgmgt_cine_small_ft --export-dir out/ft
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from models import registry
from models.ddei import train_unsupervised
from models.inference import set_dc
from models.machine import machine
from models.train import TrainConfig, VGG19Features, train
from models.training.recipes import RecipeError, recipe
from models.training_data import SimulationSettings
from models.weights import SHIPPED_DIR, build_model, load_weights, read_card, save_weights


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrecon train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=registry.names(), required=True,
                   help="a registered model (models.registry) with a training recipe (models.training.recipes)")
    p.add_argument("--config", choices=("small", "official", "unrolled"), default="small",
                   help="network width: the CPU-trainable 'small' one or the paper's; SGF-MRI 'unrolled': the small "
                        "network unrolled from a CG-SENSE start with exact DC per cascade and the reference gate")
    p.add_argument("--data", choices=("shared", "sunnybrook", "sunnybrook-rt", "brains", "synthetic", "none"),
                   default="shared",
                   help="training data (see above); default shared. sunnybrook-rt: the Sunnybrook training "
                        "patients simulated as real-time scans of unseen hearts (native resolution, any angle, "
                        "4-32 coils on random arrays, noise to real-time SNR, strides 1-3, 10%% other anatomy in "
                        "motion), validated on whole held-out hearts at their full matrix under conditions "
                        "training does not draw (models.cine_windows.VALIDATION_CONDITIONS). brains (SGF-MRI): "
                        "every training brain, every ordered contrast pair and axis, simulated with "
                        "PairSampler.realistic (4-32 coils, noise, wrong/shifted/remapped/missing references), "
                        "validated on the held-out pairs at full matrix with, without and with a wrong reference")
    p.add_argument("--inputs", choices=("zero-filled", "view-shared"), default=None,
                   help="cine network inputs (default: view-shared with --data sunnybrook, else zero-filled)")
    p.add_argument("--cascades", type=int, default=None, help="KGMgT mentor/learner passes, each ending in DC")
    p.add_argument("--dc-on-input", action="store_true", help="KGMgT: DC the target input before the first pass")
    p.add_argument("--dc-per-step", action="store_true",
                   help="KGMgT: one learned DC weight per DC step (input, mentor, output), each starting at "
                        "--dc-noise-weight")
    p.add_argument("--schedule-steps", action="store_true",
                   help="the learning-rate decay runs over --steps only, not the --time-limit: for a long run "
                        "resumed over several sessions, each stopped by its --time-limit")
    p.add_argument("--init-residual-scale", type=float, default=None,
                   help="with --init-weights: scale the generator's output layer, so a network trained on other "
                        "inputs starts near the identity (input + DC) but keeps its learned features")
    p.add_argument("--dc-noise-weight", type=float, default=None,
                   help="initial soft-DC weight lambda of a new network (learned; KGMgT default 100). With "
                        "estimated maps, few coils and high acceleration a large lambda amplifies noise and map "
                        "errors, and log(lambda) learns slowly at the usual learning rates: start near 1 there")
    p.add_argument("--cmrxrecon", type=Path, nargs="+", default=[])
    p.add_argument("--ismrmrd", type=Path, nargs="+", default=[])
    p.add_argument("--fastmri", type=Path, nargs="+", default=[])
    p.add_argument("--m4raw", type=Path, default=None)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--size", type=int, default=None, help="training matrix (square); default 80 cine, 96 pairs")
    p.add_argument("--accel", type=float, nargs=2, default=(4.0, 12.0))
    p.add_argument("--phantom-fraction", type=float, default=0.3)
    p.add_argument("--min-crop", type=float, default=0.7,
                   help="pairs: smallest crop fraction before the resize to --size (smaller: nearer native resolution)")
    p.add_argument("--ref-misregistration", type=float, default=0.0,
                   help="pairs: fraction of samples whose reference gets a small rigid motion (--ref-shift, --ref-rotation)")
    p.add_argument("--ref-shift", type=float, default=2.0, help="pairs: largest reference shift, pixels")
    p.add_argument("--ref-rotation", type=float, default=2.0, help="pairs: largest reference rotation, degrees")
    p.add_argument("--ref-noise", type=float, nargs=2, default=(0.0, 0.0),
                   help="pairs: range of Gaussian noise on the reference, relative to its robust maximum")
    p.add_argument("--reference-dropout", type=float, default=0.2,
                   help="pairs: fraction of samples trained without the reference (the single-contrast fallback)")
    p.add_argument("--ssim-weight", type=float, default=0.0)
    p.add_argument("--loss", choices=("l1", "relative-l1"), default="l1",
                   help="relative-l1: each sample's log L1 error relative to the network's own input (the "
                        "gain over the input, equal weight for every noise level and acceleration)")
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
    p.add_argument("--init-weights", type=Path, default=None,
                   help="fine-tune: start from these weights (safetensors + JSON card, e.g. the shipped set); "
                        "their architecture config replaces --config; fresh optimiser and learning-rate schedule")
    p.add_argument("--dc-method", choices=("gradient", "prox"), default="gradient",
                   help="multi-coil DC solver in training: the one-step 'gradient' or the exact soft-DC 'prox' "
                        "(--dc-iterations CG iterations, as used at inference); prox needs a soft-DC model")
    p.add_argument("--dc-iterations", type=int, default=5)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--export", default=None, help="write the final weights as models/weights/NAME.safetensors + .json")
    p.add_argument("--export-dir", type=Path, default=None, help="folder for --export (default models/weights)")
    p.add_argument("--export-only", choices=("best", "last"), default=None,
                   help="with --export and the run's own arguments: export the best-validation (or last) weights "
                        "of the run in --ckpt without training (a long run stopped by its session)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        steps = recipe(args.model)
        data = steps.data(args, SimulationSettings(accel=tuple(args.accel)))
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        return 2
    cfg, size = data.cfg, data.size
    init_steps, init_version = 0, None
    if args.init_weights:
        model = steps.from_init(args, cfg)
        if model is not None:
            card = read_card(args.init_weights)
        else:
            model, card = load_weights(args.init_weights)
            if card["architecture"] != args.model:
                print(f"--init-weights holds a {card['architecture']} network, not {args.model}", file=sys.stderr)
                return 2
        init_meta = card.get("meta", {})
        init_steps = int(init_meta.get("total_steps", init_meta.get("steps", 0)))
        init_version = card.get("version")
        print(f"initialised from {args.init_weights} ({init_version}, {init_steps} steps)")
    else:
        steps.configure(cfg, args)
        if args.dc_noise_weight is not None:
            cfg.dc_noise_weight = args.dc_noise_weight
        model = build_model(args.model, cfg.to_dict())
    model = steps.adapt(model, args)
    if args.dc_method != "gradient":
        print(f"training DC: {set_dc(model, args.dc_method, args.dc_iterations)}")
    tcfg = TrainConfig(task=data.task, steps=args.steps, batch=args.batch, lr=args.lr, ssim_weight=args.ssim_weight,
                       loss=args.loss,
                       adversarial=args.adversarial, seed=args.seed, device=args.device, val_every=args.val_every,
                       ckpt_every=args.val_every, time_limit_s=args.time_limit, threads=args.threads,
                       schedule_by_time=not args.schedule_steps)
    perceptual = VGG19Features.from_safetensors(args.perceptual_weights) if args.perceptual_weights else None
    ckpt = args.ckpt or Path("out") / "train" / args.model
    print(f"training {args.model} ({args.config}, {sum(p.numel() for p in model.parameters())} parameters) "
          f"on {args.data} data, {size}x{size}, batch {args.batch}, {args.steps} steps; checkpoints in {ckpt}")
    print(f"machine: {machine()}")
    if args.export_only:
        # the weights a run kept (best validation, or its last checkpoint), exported without training
        state = json.loads((ckpt / "state.json").read_text())
        weights = ckpt / ("best.safetensors" if args.export_only == "best" else "last.safetensors")
        model.load_state_dict(load_file(str(weights)), strict=True)
        history = state["history"]
        key = "val_gain" if history and "val_gain" in history[-1] else "val_psnr"
        step = int(state["step"]) if args.export_only == "last" else int(max(history, key=lambda h: h[key])["step"])
        result = {"history": history, "seconds": float(state.get("seconds", 0.0)), "step": step}
        print(f"exporting the {args.export_only} weights of {ckpt} (step {step} of {state['step']})")
    elif args.unsupervised:
        if not steps.unsupervised:
            print(f"--unsupervised is not implemented for {args.model}", file=sys.stderr)
            return 2
        result = train_unsupervised(model, data.sampler, tcfg, ckpt_dir=ckpt, resume=args.resume)
    else:
        result = train(model, data.sampler, tcfg, ckpt_dir=ckpt, resume=args.resume, perceptual=perceptual,
                       val_sampler=data.val_sampler, val_data=data.val_data)
    print(json.dumps(result["history"][-3:], indent=1))
    if args.export:
        meta = {"command": "streamrecon train " + " ".join(a for a in argv if a not in ("--export-only", "best", "last")),
                "machine": machine(),
                "train_seconds": round(result["seconds"], 1), "steps": result["step"],
                "date": time.strftime("%Y-%m-%d"), "history": result["history"],
                "training_size": [size, size], "accel_range": list(args.accel), "data": args.data,
                "unsupervised": args.unsupervised, "dc_method": args.dc_method}
        meta.update(data.meta)
        if args.init_weights:
            meta.update({"init_weights": str(args.init_weights), "init_version": init_version,
                         "init_steps": init_steps, "total_steps": init_steps + result["step"]})
        version = f"{args.export}-{time.strftime('%Y%m%d')}-s{init_steps + result['step']}"
        path = save_weights(model, args.export_dir or SHIPPED_DIR, args.export, args.model, version, meta)
        print(f"exported {path} (version {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
