"""``streamrecon evaluate``: score methods on the held-out real data; table + JSON + image strips.

Cine (``--task cine``): the real cine ``cine/giraf_sax_cine25.mat`` (never
trained on), magnitude given a smooth synthetic phase (seeded), 8 simulated
coils (seeded synthetic maps), per-frame kt-Gaussian line masks with 8
central lines at 4x, 8x, 10x (``--accels``), no added noise; coil maps
estimated from the time-averaged undersampled k-space, as the gadgets do.
Methods: zero-filled, CG-SENSE, temporal TV (torch Chambolle-Pock, 100
iterations, lam tuned on the phantom, not on this cine), BART pics temporal TV
when ``bart`` is on PATH, KGMgT (centred window) and KGMgT causal.

Multi-contrast (``--task pair``): the validation pairs of
``simulator.model_data.multicontrast_evaluation_pairs`` (never trained on:
the held-out TCGA patient, T1 -> T2 and T1 -> FLAIR on three axial slices,
240 x 240; the CDLMRI tumour slice, T1_pre -> T2 and -> FLAIR, 256 x 256),
8 coils, variable-density random line masks with 16 central lines at 4x and
8x. Methods: zero-filled, CG-SENSE, SGF-MRI without the reference, SGF-MRI
with it. Strips (labelled columns): reference contrast, fully sampled
target, zero-filled, SGF-MRI without and with the reference; below, their
|error| x5.

Writes ``OUT/scores.json``, ``OUT/scores.md`` and ``OUT/strip_*.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _strip(images: list[np.ndarray], ref: np.ndarray, path: Path, labels: list[str] | None = None,
           guide: np.ndarray | None = None) -> None:
    """Top: [guide], reference (truth), each image; bottom: |error| x5 under each image. Column labels when given."""
    from PIL import Image, ImageDraw
    peak = float(np.percentile(np.abs(ref), 99.5))
    lead = [] if guide is None else [np.clip(np.abs(guide) / max(float(np.percentile(np.abs(guide), 99.5)), 1e-12), 0, 1)]
    tiles = lead + [np.clip(np.abs(im) / peak, 0, 1) for im in [ref] + images]
    blank = np.zeros_like(tiles[-1])
    errs = [blank] * (len(lead) + 1) + [np.clip(np.abs(np.abs(im) - np.abs(ref)) / peak * 5, 0, 1) for im in images]
    top, bottom = np.concatenate(tiles, 1), np.concatenate(errs, 1)
    grid = (np.concatenate([top, bottom], 0) * 255).astype(np.uint8)
    if not labels:
        Image.fromarray(grid).save(path)
        return
    band = 14
    canvas = Image.new("L", (grid.shape[1], grid.shape[0] + 2 * band), 0)
    canvas.paste(Image.fromarray(grid), (0, band))
    draw = ImageDraw.Draw(canvas)
    w = tiles[0].shape[1]
    for i, text in enumerate(labels[: len(tiles)]):
        draw.text((i * w + 3, 1), text, fill=255)
    draw.text((len(lead) * w + w + 3, band + grid.shape[0] + 1), "|error| x5 below each image", fill=255)
    canvas.save(path)


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
    for case, (ref_stack, tgt_stack) in model_data.multicontrast_evaluation_pairs().items():
        ref_stack, tgt_stack = (a.reshape(-1, *a.shape[-2:]) for a in (ref_stack, tgt_stack))  # (slices, ny, nx)
        ny, nx = tgt_stack.shape[-2:]
        phase = np.exp(1j * smooth_phase((ny, nx), seed=3, max_rad=np.pi))
        maps_true = coil_maps(8, ny, nx, seed=5)
        for accel in args.pair_accels:
            mask = line_mask("vd-random", ny, 1, accel=accel, acs=16, seed=int(accel * 10))
            slices = []
            for tgt_img in tgt_stack:
                tgt = (tgt_img * phase).astype(np.complex64)
                slices.append(simulate_acquisition(np.random.default_rng(0), tgt[None], mask, 8, 0.0, maps=maps_true))
            gt = np.stack([a["target"][0] for a in slices])
            zf = np.stack([a["zero_filled"][0] for a in slices])

            def per_slice(fn):
                return lambda: np.stack([fn(a, r) for a, r in zip(slices, ref_stack)])

            methods = {
                "zero-filled": lambda: zf,
                "CG-SENSE": per_slice(lambda a, r: cg_sense(a["kspace"], mask, a["maps"], lam=1e-3, iterations=15)[0]),
                f"SGF-MRI no reference [{rec.version}, DC {rec.dc}]": per_slice(
                    lambda a, r: rec.reconstruct_single(a["zero_filled"][0], a["kspace"][0], mask[0], a["maps"])),
                "SGF-MRI with reference": per_slice(
                    lambda a, r: rec.reconstruct_pair(r.astype(np.complex64), a["zero_filled"][0], a["kspace"][0],
                                                      mask[0], a["maps"])),
            }
            images = {}
            for name, fn in methods.items():
                pred, sec, mem = measure(fn, args.device)
                s = score(name, accel, pred, gt, sec, len(slices), mem, case=case)
                scores.append(s)
                images[name] = pred
                print(f"{case:22s} {accel:g}x {name:34s} PSNR {s.psnr:6.2f} SSIM {s.ssim:.4f}", flush=True)
            mid = len(slices) // 2
            names = list(methods)
            _strip([images[names[0]][mid], images[names[2]][mid], images[names[3]][mid]], gt[mid],
                   out / f"strip_{case.replace('->', '_to_')}_{accel:g}x.png",
                   labels=["reference", "target (full)", "zero-filled", "no-reference", "with-reference"],
                   guide=ref_stack[mid])
    return scores


def pair_summary(scores: list) -> str:
    """Per case and acceleration: SGF-MRI with the reference minus without it, and minus zero-filled (PSNR dB)."""
    rows = {}
    for s in scores:
        if "case" not in s.extra:
            continue
        kind = ("zf" if s.method == "zero-filled" else "with" if s.method == "SGF-MRI with reference"
                else "without" if s.method.startswith("SGF-MRI no reference") else None)
        if kind:
            rows.setdefault((s.extra["case"], s.accel), {})[kind] = s.psnr
    lines = ["| case | accel | zero-filled | without reference | with reference | with - without | with - zero-filled |",
             "|---|---|---|---|---|---|---|"]
    for (case, accel), r in rows.items():
        if len(r) == 3:
            lines.append(f"| {case} | {accel:g}x | {r['zf']:.2f} | {r['without']:.2f} | {r['with']:.2f} | "
                         f"{r['with'] - r['without']:+.2f} | {r['with'] - r['zf']:+.2f} |")
    return "\n".join(lines)


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
        print(f"no data at {model_data.data_dir()} (set STREAMRECON_DATA)", file=sys.stderr)
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
    if args.task in ("pair", "all"):
        table += "\n\n" + pair_summary(scores)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "streamrecon evaluate " + " ".join(argv),
            "machine": _machine(), "threads": torch.get_num_threads(),
            "normalisation": "magnitudes, no rescaling; PSNR peak = max of each reference frame; full FOV"}
    (args.out / "scores.json").write_text(json.dumps({"meta": meta, "scores": [s.row() for s in scores]}, indent=1))
    (args.out / "scores.md").write_text(f"{meta['command']}  \n{meta['date']}, {meta['machine']}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
