"""Training recipes, one per registered model that ``streamrecon train`` can train, keyed by registry name.

A recipe is what is the model's own in training: the data it learns from
(samplers, validation), its configuration (``--config``), and the options
only it understands. The command (:mod:`models.training.cli`) looks the
recipe up by the model's registry name, and builds and loads networks
through :mod:`models.registry` (:func:`models.weights.build_model`), so a
registered model without a recipe is refused by name instead of reaching
another model's samplers.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from models import registry
from models import shared_data as model_data
from models.cine_windows import VALIDATION_CONDITIONS, RealCineSampler, validation_window
from models.kgmgt import KGMgTConfig
from models.phantoms import brain_pair
from models.sgfmri import SGFMRIConfig
from models.training_data import CineSampler, PairSampler, SimulationSettings, collate, pair_validation_items, resize
from models.weights import build_model


class RecipeError(ValueError):
    """The options ask for something the recipe cannot train (the message says what)."""


@dataclass
class TrainingData:
    """What one run trains on: ``task`` (:class:`models.train.TrainConfig`'s), the network configuration,
    the square training matrix, the sampler and the validation, and what the weights card records of it."""

    task: str
    cfg: Any
    size: int
    sampler: Callable
    val_sampler: Callable | None = None
    val_data: list | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A model's training recipe (module docstring).

    ``data(args, settings)``: the run's :class:`TrainingData`; ``configure(cfg, args)``: the model's own
    options applied to a new network's configuration; ``from_init(args, cfg)``: a network started from
    ``--init-weights`` another way than loading them as they are (``None``: load them); ``adapt(model, args)``:
    the model's own options applied to the network about to train; ``unsupervised``: DDEI applies.
    """

    data: Callable[[argparse.Namespace, SimulationSettings], TrainingData]
    configure: Callable[[Any, argparse.Namespace], None] = lambda cfg, args: None
    from_init: Callable[[argparse.Namespace, Any], torch.nn.Module | None] = lambda args, cfg: None
    adapt: Callable[[torch.nn.Module, argparse.Namespace], torch.nn.Module] = lambda model, args: model
    unsupervised: bool = False


# ---------------------------------------------------------------------------- cine (KGMgT)
def _dataset_images(args: argparse.Namespace) -> tuple[list, list]:
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


def _cine_data(args: argparse.Namespace, settings: SimulationSettings) -> TrainingData:
    cfg = KGMgTConfig.official() if args.config == "official" else KGMgTConfig.cpu_small()
    if args.data == "sunnybrook-rt":
        inputs, size = args.inputs or "view-shared", args.size or 128
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
        return TrainingData("cine", cfg, size, sampler, val_data=val_data)
    if args.data == "sunnybrook":
        inputs, size = args.inputs or "view-shared", args.size or 96
        train_cines = [c for v in model_data.load_sunnybrook().values() for c in v]
        val_cines = [c for v in model_data.load_sunnybrook(model_data.SUNNYBROOK_VALIDATION).values() for c in v]
        val_cines.append(model_data.load_cine())
        sampler = RealCineSampler(train_cines, size=size, accel=tuple(args.accel), inputs=inputs)
        val_sampler = RealCineSampler(val_cines, size=size, accel=tuple(args.accel), inputs=inputs)
        print(f"cine data: {len(train_cines)} Sunnybrook slice-cines (validation: {len(val_cines)} held-out cines)")
        return TrainingData("cine", cfg, size, sampler, val_sampler=val_sampler)
    images = model_data.cine_training_images() if args.data == "shared" else []
    extra_images, cines = _dataset_images(args)
    images = images + extra_images
    size = args.size or 80
    phantom = 1.0 if not (images or cines) else (0.0 if args.data == "none" else args.phantom_fraction)
    sampler = CineSampler(images, size=(size, size), frames=(8, 14), phantom_fraction=phantom,
                          cines=cines, settings=settings)
    print(f"cine data: {len(images)} static images, {len(cines)} real cines, phantom fraction {phantom}")
    return TrainingData("cine", cfg, size, sampler)


def _cine_inputs(args: argparse.Namespace) -> str | None:
    """The cine inputs the options ask for: view-shared with the real-heart data, else ``--inputs`` (or none)."""
    return args.inputs or "view-shared" if (args.data.startswith("sunnybrook") or args.inputs) else None


def _cine_configure(cfg: KGMgTConfig, args: argparse.Namespace) -> None:
    if _cine_inputs(args):
        cfg.inputs = _cine_inputs(args)
    if args.dc_per_step:
        cfg.dc_per_step = True


def _with_dc_per_step(model: torch.nn.Module) -> torch.nn.Module:
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


def _cine_adapt(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    if args.init_weights and args.dc_per_step and not model.cfg.dc_per_step:
        model = _with_dc_per_step(model)
    if _cine_inputs(args):
        model.cfg.inputs = _cine_inputs(args)
    if args.cascades:
        model.cfg.cascades = args.cascades
    if args.dc_on_input:
        model.cfg.dc_on_input = True
    if args.init_weights and args.dc_noise_weight is not None:
        for layer in model.dc_layers():
            layer.set_noise_weight(args.dc_noise_weight)
    if args.init_weights and args.init_residual_scale is not None:
        model.scale_residual(args.init_residual_scale)
    return model


# ---------------------------------------------------------------------------- pairs (SGF-MRI)
def _pair_validation(items_for: Callable) -> list:
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


def _pair_data(args: argparse.Namespace, settings: SimulationSettings) -> TrainingData:
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
        raise RecipeError("no training pairs: use --data shared|synthetic or --m4raw")
    print(f"multi-contrast data: {len(pairs)} pairs")
    size = args.size or 96
    val_data = None
    if args.data == "brains":
        sampler = PairSampler.realistic(pairs, size)
        val_data = [collate([item]) for item in _pair_validation(pair_validation_items)]
        print(f"validation: {len(val_data)} held-out items (with / without / wrong reference)")
    else:
        sampler = PairSampler(pairs, size=(size, size), settings=settings, min_crop=args.min_crop,
                              reference_dropout=args.reference_dropout, misregistration=args.ref_misregistration,
                              max_shift_px=args.ref_shift, max_rotation_deg=args.ref_rotation,
                              reference_noise=tuple(args.ref_noise))
    cfg = (SGFMRIConfig.paper() if args.config == "official"
           else SGFMRIConfig.unrolled(args.cascades or 3) if args.config == "unrolled" else SGFMRIConfig.cpu_small())
    meta = {"pairs": len(pairs), "min_crop": args.min_crop, "reference_dropout": args.reference_dropout,
            "ref_misregistration": args.ref_misregistration, "ref_shift_px": args.ref_shift,
            "ref_rotation_deg": args.ref_rotation, "ref_noise": list(args.ref_noise)}
    return TrainingData("pair", cfg, size, sampler, val_data=val_data, meta=meta)


def _unrolled_from(args: argparse.Namespace, cfg: SGFMRIConfig) -> torch.nn.Module | None:
    """With ``--config unrolled``: an unrolled SGF-MRI whose guided network starts as ``--init-weights``'
    one-shot network (the new gate and per-cascade DC layers start fresh); otherwise None (load as they are)."""
    if args.config != "unrolled":
        return None
    model = build_model("sgfmri", cfg.to_dict())
    state = load_file(str(args.init_weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(".gate." not in k and not k.startswith("dc_cascades.") for k in missing):
        raise ValueError(f"{args.init_weights} does not fit the unrolled network: missing {missing}, "
                         f"unexpected {unexpected}")
    for layer in model.dc_layers():
        layer.set_noise_weight(cfg.dc_noise_weight)
    with torch.no_grad():  # the one-shot network learned to undo zero-filled aliasing, not to improve a
        model.tail.weight.mul_(0.1)  # CG-SENSE image: start near "CG-SENSE + DC", keep its features
        model.tail.bias.mul_(0.1)
    return model


RECIPES: dict[str, Recipe] = {
    "kgmgt": Recipe(_cine_data, configure=_cine_configure, adapt=_cine_adapt, unsupervised=True),
    "sgfmri": Recipe(_pair_data, from_init=_unrolled_from),
}


def recipe(name: str) -> Recipe:
    """The training recipe of registered model ``name``; ``RecipeError`` for a model without one."""
    registry.get(name)  # an unknown name is told as such, with the registered ones
    if name not in RECIPES:
        raise RecipeError(f"no training recipe for {name!r}; models with one: {', '.join(RECIPES)}")
    return RECIPES[name]


__all__ = ["RECIPES", "Recipe", "RecipeError", "TrainingData", "recipe"]
