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

import numpy as np
import torch
from safetensors.torch import load_file

from models import shared_data as model_data
from models.cine_windows import VALIDATION_CONDITIONS, RealCineSampler, validation_window
from models.ddei import train_unsupervised
from models.inference import _set_dc
from models.kgmgt import KGMgTConfig
from models.machine import machine
from models.phantoms import brain_pair
from models.sgfmri import SGFMRIConfig
from models.train import TrainConfig, VGG19Features, train
from models.training_data import CineSampler, PairSampler, SimulationSettings, collate, pair_validation_items, resize
from models.weights import SHIPPED_DIR, build_model, load_weights, read_card, save_weights


def _dataset_images(args) -> tuple[list, list]:
    """Static images and real cines from the dataset options, via ``simulator.readers``."""
    images, cines = [], []
    scans = []
    if args.cmrxrecon or args.ismrmrd or args.fastmri:
        from simulator import readers  # inside: models sits below simulator; only --dataset files need its readers
        scans += [readers.read_cmrxrecon(p) for p in args.cmrxrecon]
        for p in args.ismrmrd:
            scans += readers.read_ismrmrd(p)
        scans += [readers.read_fastmri(p) for p in args.fastmri]
    for scan in scans:
        for sl in np.asarray(scan.reference):  # (frames, ny, nx) per slice
            if sl.shape[0] > 2:
                cines.append(sl.astype(np.complex64))
            else:
                images.append(np.abs(sl[0]).astype(np.float32))
    return images, cines


def _with_dc_per_step(model):
    """The same KGMgT with one DC layer per step, each a copy of its one shared layer (the generator's
    weights kept): fine-tuning a shared-DC network into the per-step form."""

    cfg = model.cfg.to_dict()
    cfg["dc_per_step"] = True
    new = build_model("kgmgt", cfg)
    state = model.state_dict()
    for prefix in ("dc_input.", "dc_mentor."):
        state.update({prefix + k[3:]: v for k, v in state.items() if k.startswith("dc.")})
    new.load_state_dict(state, strict=True)
    return new


def _unrolled_from(path, cfg):
    """An unrolled SGF-MRI whose guided network starts as ``path``'s one-shot network (the new gate and
    per-cascade DC layers start fresh)."""

    model = build_model("sgfmri", cfg.to_dict())
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(".gate." not in k and not k.startswith("dc_cascades.") for k in missing):
        raise ValueError(f"{path} does not fit the unrolled network: missing {missing}, unexpected {unexpected}")
    for layer in model.dc_layers():
        layer.set_noise_weight(cfg.dc_noise_weight)
    with torch.no_grad():  # the one-shot network learned to undo zero-filled aliasing, not to improve a
        model.tail.weight.mul_(0.1)  # CG-SENSE image: start near "CG-SENSE + DC", keep its features
        model.tail.bias.mul_(0.1)
    return model


def _pair_validation(model_data, items_for) -> list:
    """The held-out pairs (model_data.multicontrast_evaluation_pairs: the middle TCGA slice and the tumour
    slice, every pair kind) at 4x and 8x, each with / without / with a wrong reference (another slice)."""

    items = []
    evaluation = model_data.multicontrast_evaluation_pairs()
    for seed, (case, (ref, tgt)) in enumerate(evaluation.items()):
        if ref.ndim == 3:  # TCGA: the middle slice, the first one's reference as the wrong one
            wrong, ref, tgt = ref[0], ref[len(ref) // 2], tgt[len(tgt) // 2]
        else:              # the tumour slice: the same contrast kind from the TCGA patient
            other = next(v for k, v in evaluation.items() if v[0].ndim == 3)
            wrong = resize(other[0][len(other[0]) // 2], ref.shape).astype(np.float32)
        for accel in (4.0, 8.0):
            items += items_for(ref, tgt, wrong, accel, seed=seed)
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrecon train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("kgmgt", "sgfmri"), required=True)
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
    settings = SimulationSettings(accel=tuple(args.accel))
    val_sampler = None
    val_data = None
    if args.model == "kgmgt" and args.data == "sunnybrook-rt":
        inputs = args.inputs or "view-shared"
        size = args.size or 128
        train_cines = [c for v in model_data.load_sunnybrook().values() for c in v]
        static = model_data.cine_training_images(step=3)
        sampler = RealCineSampler.realtime(train_cines, size=size, static_images=static, inputs=inputs,
                                           accel=tuple(args.accel) if args.accel != (4.0, 12.0) else (3.0, 14.0))
        held_out = model_data.cine_validation_hearts()
        val_data = [collate([validation_window(cine, cond, seed=i)])
                    for i, (name, cine) in enumerate(held_out.items()) for cond in VALIDATION_CONDITIONS]
        print(f"cine data: {len(train_cines)} Sunnybrook slice-cines, {len(static)} static images in motion; "
              f"validation: {len(val_data)} windows of {len(held_out)} held-out hearts at full matrix "
              f"({', '.join(held_out)}) x {len(VALIDATION_CONDITIONS)} conditions")
        task = "cine"
        cfg = KGMgTConfig.official() if args.config == "official" else KGMgTConfig.cpu_small()
    elif args.model == "kgmgt" and args.data == "sunnybrook":
        inputs = args.inputs or "view-shared"
        size = args.size or 96
        train_cines = [c for v in model_data.load_sunnybrook().values() for c in v]
        val_cines = [c for v in model_data.load_sunnybrook(model_data.SUNNYBROOK_VALIDATION).values() for c in v]
        val_cines.append(model_data.load_cine())
        sampler = RealCineSampler(train_cines, size=size, accel=tuple(args.accel), inputs=inputs)
        val_sampler = RealCineSampler(val_cines, size=size, accel=tuple(args.accel), inputs=inputs)
        print(f"cine data: {len(train_cines)} Sunnybrook slice-cines (validation: {len(val_cines)} held-out cines)")
        task = "cine"
        cfg = KGMgTConfig.official() if args.config == "official" else KGMgTConfig.cpu_small()
    elif args.model == "kgmgt":
        images = model_data.cine_training_images() if args.data == "shared" else []
        cines = []
        extra_images, extra_cines = _dataset_images(args)
        images, cines = images + extra_images, cines + extra_cines
        size = args.size or 80
        phantom = 1.0 if not (images or cines) else (0.0 if args.data == "none" else args.phantom_fraction)
        sampler = CineSampler(images, size=(size, size), frames=(8, 14), phantom_fraction=phantom,
                              cines=cines, settings=settings)
        print(f"cine data: {len(images)} static images, {len(cines)} real cines, phantom fraction {phantom}")
        task = "cine"
        cfg = KGMgTConfig.official() if args.config == "official" else KGMgTConfig.cpu_small()
    else:
        pairs = []
        if args.data in ("shared", "brains"):
            pairs = model_data.multicontrast_training_pairs()
        elif args.data == "synthetic":
            pairs = [tuple(np.abs(a) for a in brain_pair(128, seed=s)) for s in range(64)]
        if args.m4raw:
            from simulator.readers import read_m4raw_pair  # inside: as above, only an M4Raw folder needs it
            for target in ("T2", "FLAIR"):
                try:
                    ref_scan, tgt_scan = read_m4raw_pair(args.m4raw, reference="T1", target=target)
                except (FileNotFoundError, KeyError, ValueError) as exc:
                    print(f"m4raw T1->{target}: {exc}", file=sys.stderr)
                    continue
                pairs += [(np.abs(r[0]), np.abs(t[0])) for r, t in zip(ref_scan.reference, tgt_scan.reference)]
        if not pairs:
            print("no training pairs: use --data shared|synthetic or --m4raw", file=sys.stderr)
            return 2
        print(f"multi-contrast data: {len(pairs)} pairs")
        size = args.size or 96
        if args.data == "brains":
            sampler = PairSampler.realistic(pairs, size)
            val_data = [collate([item]) for item in _pair_validation(model_data, pair_validation_items)]
            print(f"validation: {len(val_data)} held-out items (with / without / wrong reference)")
        else:
            sampler = PairSampler(pairs, size=(size, size), settings=settings, min_crop=args.min_crop,
                                  reference_dropout=args.reference_dropout, misregistration=args.ref_misregistration,
                                  max_shift_px=args.ref_shift, max_rotation_deg=args.ref_rotation,
                                  reference_noise=tuple(args.ref_noise))
        task = "pair"
        cfg = (SGFMRIConfig.paper() if args.config == "official"
               else SGFMRIConfig.unrolled(args.cascades or 3) if args.config == "unrolled" else SGFMRIConfig.cpu_small())
    init_steps, init_version = 0, None
    if args.init_weights and args.model == "sgfmri" and args.config == "unrolled":
        model, card = _unrolled_from(args.init_weights, cfg), read_card(args.init_weights)
        init_meta = card.get("meta", {})
        init_steps = int(init_meta.get("total_steps", init_meta.get("steps", 0)))
        init_version = card.get("version")
        print(f"unrolled network initialised from {args.init_weights} ({init_version}, {init_steps} steps)")
    elif args.init_weights:
        model, card = load_weights(args.init_weights)
        if card["architecture"] != args.model:
            print(f"--init-weights holds a {card['architecture']} network, not {args.model}", file=sys.stderr)
            return 2
        init_meta = card.get("meta", {})
        init_steps = int(init_meta.get("total_steps", init_meta.get("steps", 0)))
        init_version = card.get("version")
        print(f"initialised from {args.init_weights} ({init_version}, {init_steps} steps)")
    else:
        if args.model == "kgmgt" and (args.data.startswith("sunnybrook") or args.inputs):
            cfg.inputs = args.inputs or "view-shared"
        if args.dc_noise_weight is not None:
            cfg.dc_noise_weight = args.dc_noise_weight
        if args.model == "kgmgt" and args.dc_per_step:
            cfg.dc_per_step = True
        model = build_model(args.model, cfg.to_dict())
    if args.model == "kgmgt":
        if args.init_weights and args.dc_per_step and not model.cfg.dc_per_step:
            model = _with_dc_per_step(model)
        if args.data.startswith("sunnybrook") or args.inputs:
            model.cfg.inputs = args.inputs or "view-shared"
        if args.cascades:
            model.cfg.cascades = args.cascades
        if args.dc_on_input:
            model.cfg.dc_on_input = True
        if args.init_weights and args.dc_noise_weight is not None:
            for layer in model.dc_layers():
                layer.set_noise_weight(args.dc_noise_weight)
        if args.init_weights and args.init_residual_scale is not None:
            model.scale_residual(args.init_residual_scale)
    if args.dc_method != "gradient":
        print(f"training DC: {_set_dc(model, args.dc_method, args.dc_iterations)}")
    tcfg = TrainConfig(task=task, steps=args.steps, batch=args.batch, lr=args.lr, ssim_weight=args.ssim_weight,
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
        if args.model != "kgmgt":
            print("--unsupervised is implemented for the cine model", file=sys.stderr)
            return 2
        result = train_unsupervised(model, sampler, tcfg, ckpt_dir=ckpt, resume=args.resume)
    else:
        result = train(model, sampler, tcfg, ckpt_dir=ckpt, resume=args.resume, perceptual=perceptual,
                       val_sampler=val_sampler, val_data=val_data)
    print(json.dumps(result["history"][-3:], indent=1))
    if args.export:
        meta = {"command": "streamrecon train " + " ".join(a for a in argv if a not in ("--export-only", "best", "last")),
                "machine": machine(),
                "train_seconds": round(result["seconds"], 1), "steps": result["step"],
                "date": time.strftime("%Y-%m-%d"), "history": result["history"],
                "training_size": [size, size], "accel_range": list(args.accel), "data": args.data,
                "unsupervised": args.unsupervised, "dc_method": args.dc_method}
        if args.model == "sgfmri":
            meta.update({"pairs": len(pairs), "min_crop": args.min_crop, "reference_dropout": args.reference_dropout,
                         "ref_misregistration": args.ref_misregistration, "ref_shift_px": args.ref_shift,
                         "ref_rotation_deg": args.ref_rotation, "ref_noise": list(args.ref_noise)})
        if args.init_weights:
            meta.update({"init_weights": str(args.init_weights), "init_version": init_version,
                         "init_steps": init_steps, "total_steps": init_steps + result["step"]})
        version = f"{args.export}-{time.strftime('%Y%m%d')}-s{init_steps + result['step']}"
        path = save_weights(model, args.export_dir or SHIPPED_DIR, args.export, args.model, version, meta)
        print(f"exported {path} (version {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
