"""``streamrecon evaluate``: score methods on the held-out real data; table + JSON + image strips.

Cine (``--task cine``): the real cine ``cine/giraf_sax_cine25.mat`` (never
trained on), magnitude given a smooth synthetic phase (seeded), 8 simulated
coils (seeded synthetic maps), per-frame kt-Gaussian line masks with 8
central lines at 4x, 8x, 10x (``--accels``), no added noise; coil maps
estimated from the time-averaged undersampled k-space, as the gadgets do.
Methods: zero-filled, CG-SENSE, temporal TV (torch Chambolle-Pock, 100
iterations, lam tuned on the phantom, not on this cine), BART pics temporal TV
when ``bart`` is on PATH, KGMgT (centred window) and KGMgT causal.

Multi-contrast (``--task pair``): the CDLMRI slices (patientA T1 -> T2,
tumour T1_pre -> T2 and -> FLAIR), 256 x 256, 8 coils, variable-density
random line masks with 16 central lines at 4x and 8x. Methods: zero-filled,
CG-SENSE, SGF-MRI without the reference, SGF-MRI with it.

Writes ``OUT/scores.json``, ``OUT/scores.md`` and ``OUT/strip_*.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _strip(images: list[np.ndarray], ref: np.ndarray, path: Path) -> None:
    from PIL import Image
    peak = float(np.percentile(np.abs(ref), 99.5))
    tiles = [np.clip(np.abs(im) / peak, 0, 1) for im in [ref] + images]
    errs = [np.zeros_like(tiles[0])] + [np.clip(np.abs(np.abs(im) - np.abs(ref)) / peak * 5, 0, 1) for im in images]
    top, bottom = np.concatenate(tiles, 1), np.concatenate(errs, 1)
    Image.fromarray((np.concatenate([top, bottom], 0) * 255).astype(np.uint8)).save(path)


def evaluate_cine(args, out: Path) -> list:
    import torch
    from models.baselines import bart_available, bart_pics, cg_sense, tv_temporal
    from models.evaluate import measure, reconstruct_cine_with, score
    from models.inference import load_model
    from models.masks import line_mask
    from models.synthetic import coil_maps, smooth_phase
    from models.training_data import simulate_acquisition
    from . import model_data

    cine = model_data.load_cine()[: args.frames]
    t, ny, nx = cine.shape
    video = (cine * np.exp(1j * smooth_phase((ny, nx), seed=7, max_rad=np.pi))[None]).astype(np.complex64)
    maps_true = coil_maps(8, ny, nx, seed=11)
    rec = load_model("kgmgt", device=args.device, weights=args.kgmgt_weights, dc_method=args.dc_method)
    scores, strips = [], {}
    for accel in args.accels:
        masks = line_mask("kt-gaussian", ny, t, accel=accel, acs=8, seed=int(accel * 100))
        acq = simulate_acquisition(np.random.default_rng(0), video, masks, 8, 0.0, maps=maps_true)
        ref, k, maps = acq["target"], acq["kspace"], acq["maps"]
        methods = {
            "zero-filled": lambda: acq["zero_filled"],
            "CG-SENSE": lambda: cg_sense(k, masks, maps, lam=1e-3, iterations=15),
            "TV-temporal (torch)": lambda: tv_temporal(k, masks, maps, lam=0.03, iterations=100),
            f"KGMgT [{rec.version}, DC {rec.dc}]": lambda: reconstruct_cine_with(rec, acq["zero_filled"], k, masks, maps),
            "KGMgT causal": lambda: reconstruct_cine_with(rec, acq["zero_filled"], k, masks, maps, causal=True),
        }
        if bart_available():
            methods["BART pics TV"] = lambda: bart_pics(k, masks, maps, lam=0.01, iterations=100)
        row_images = []
        for name, fn in methods.items():
            pred, sec, mem = measure(fn, args.device)
            s = score(name, accel, pred, ref, sec, t, mem)
            scores.append(s)
            row_images.append(pred[t // 3])
            print(f"cine {accel:g}x {name:28s} PSNR {s.psnr:6.2f} SSIM {s.ssim:.4f} {s.seconds_per_frame * 1e3:8.1f} ms/frame", flush=True)
        _strip(row_images, ref[t // 3], out / f"strip_cine_{accel:g}x.png")
    if not bart_available():
        print("bart is not on PATH: BART pics TV not run (the torch temporal-TV solver stands in)")
    return scores


def evaluate_pairs(args, out: Path) -> list:
    from models.baselines import cg_sense
    from models.evaluate import measure, score
    from models.inference import load_model
    from models.masks import line_mask
    from models.synthetic import coil_maps, smooth_phase
    from models.training_data import simulate_acquisition
    from . import model_data

    rec = load_model("sgfmri", device=args.device, weights=args.sgfmri_weights, dc_method=args.dc_method)
    scores = []
    for case, (ref_img, tgt_img) in model_data.multicontrast_evaluation_pairs().items():
        ny, nx = tgt_img.shape
        tgt = (tgt_img * np.exp(1j * smooth_phase((ny, nx), seed=3, max_rad=np.pi))).astype(np.complex64)
        maps_true = coil_maps(8, ny, nx, seed=5)
        for accel in args.pair_accels:
            mask = line_mask("vd-random", ny, 1, accel=accel, acs=16, seed=int(accel * 10))
            acq = simulate_acquisition(np.random.default_rng(0), tgt[None], mask, 8, 0.0, maps=maps_true)
            gt, k, maps, zf = acq["target"][0], acq["kspace"][0], acq["maps"], acq["zero_filled"][0]
            methods = {
                "zero-filled": lambda: zf,
                "CG-SENSE": lambda: cg_sense(k[None], mask, maps, lam=1e-3, iterations=15)[0],
                f"SGF-MRI no reference [{rec.version}, DC {rec.dc}]": lambda: rec.reconstruct_single(zf, k, mask[0], maps),
                "SGF-MRI with reference": lambda: rec.reconstruct_pair(ref_img.astype(np.complex64), zf, k, mask[0], maps),
            }
            images = []
            for name, fn in methods.items():
                pred, sec, mem = measure(fn, args.device)
                s = score(name, accel, pred, gt, sec, 1, mem, case=case)
                scores.append(s)
                images.append(pred)
                print(f"{case:22s} {accel:g}x {name:34s} PSNR {s.psnr:6.2f} SSIM {s.ssim:.4f}", flush=True)
            _strip(images, gt, out / f"strip_{case.replace('->', '_to_')}_{accel:g}x.png")
    return scores


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("cine", "pair", "all"), default="all")
    p.add_argument("--accels", type=float, nargs="+", default=[4.0, 8.0, 10.0])
    p.add_argument("--pair-accels", type=float, nargs="+", default=[4.0, 8.0])
    p.add_argument("--frames", type=int, default=25, help="use the first N frames of the cine")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--kgmgt-weights", type=Path, default=None)
    p.add_argument("--sgfmri-weights", type=Path, default=None)
    p.add_argument("--dc-method", choices=("auto", "gradient", "prox"), default="auto",
                   help="override the networks' multi-coil DC solver (see models.inference.load_model)")
    p.add_argument("--out", type=Path, default=Path("out") / "evaluate")
    args = p.parse_args(argv)
    import torch

    from models.evaluate import markdown_table
    from . import model_data
    from .train_cli import _machine

    if not model_data.have_data():
        from .images import data_dir_problem

        print(f"streamrecon evaluate: {data_dir_problem() or f'no cine data in {model_data.data_dir()}'}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    scores = []
    if args.task in ("cine", "all"):
        scores += evaluate_cine(args, args.out)
    if args.task in ("pair", "all"):
        scores += evaluate_pairs(args, args.out)
    table = markdown_table(scores)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "streamrecon evaluate " + " ".join(argv),
            "machine": _machine(), "threads": torch.get_num_threads(),
            "normalisation": "magnitudes, no rescaling; PSNR peak = max of each reference frame; full FOV"}
    (args.out / "scores.json").write_text(json.dumps({"meta": meta, "scores": [s.row() for s in scores]}, indent=1))
    (args.out / "scores.md").write_text(f"{meta['command']}  \n{meta['date']}, {meta['machine']}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
