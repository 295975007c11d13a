"""``streamrecon evaluate``: score methods on the held-out real data; table + JSON + image strips.

Cine (``--task cine``): the validation split that training never touches
(GIRAF and slices of the held-out Sunnybrook patient), every online and
offline anchor and KGMgT centred and causal, as :mod:`simulator.cine_evaluation`
describes; the anchors' results are cached (``--anchors-cache``) so a new
network is scored against them without recomputing BART. Writes ``OUT/cine.md``
(one table per mask configuration) and labelled strips.

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
    """The cine validation (``simulator.cine_evaluation``): anchors (cached in ``--anchors-cache``) and KGMgT."""
    from models.evaluate import measure, score
    from models.inference import load_model
    from . import cine_evaluation as ce

    cases = ce.validation_cases(tuple(args.sunnybrook_slices))
    configs = [(c.split(":")[0], float(c.split(":")[1])) for c in args.cine_configs]
    cache = args.anchors_cache or (out / "cine_anchors")
    rows, images, extra = ([], {}, {})
    if cache.with_suffix(".json").exists() and not args.recompute_anchors:
        rows, images, extra = ce.load_cache(cache)
        print(f"anchors from {cache}.json ({len(rows)} scores)")
    bart_lambda = extra.get("bart_lambda")
    done = {(r["case"], r["family"], r["accel"], r["method"]) for r in rows}
    rec = None
    if args.methods in ("models", "all"):
        rec = load_model("kgmgt", device=args.device, weights=args.kgmgt_weights, dc_method=args.dc_method)
    for fi, (family, accel) in enumerate(configs):
        for ci, (name, cine) in enumerate(cases.items()):
            a = ce.acquire(name, cine[: args.frames], family, accel, noise=args.noise)
            t, key = len(a.kspace), f"{name}|{family}|{accel:g}"
            images.setdefault(f"{key}|reference", a.reference[t // 3])
            methods = {}
            if args.methods in ("anchors", "all"):
                if "bart_lambda" not in extra:
                    bart_lambda, extra["bart_lambda_sweep"] = ce.choose_bart_lambda(a)
                    extra["bart_lambda"] = bart_lambda
                methods.update({m: f for m, f in ce.anchor_methods(a, bart_lambda).items()
                                if (name, family, accel, m) not in done})
            if rec is not None:
                methods[f"KGMgT centred [{rec.version}]"] = lambda: ce.kgmgt_series(rec, a, causal=False)
                methods[f"KGMgT causal [{rec.version}]"] = lambda: ce.kgmgt_series(rec, a, causal=True)
            for method, fn in methods.items():
                pred, sec, mem = measure(fn, args.device)
                sc = score(method, accel, pred, a.reference, sec, t, mem, case=name, family=family,
                           online=method not in ce.OFFLINE_ANCHORS)
                rows = [r for r in rows if (r["case"], r["family"], r["accel"], r["method"]) != (name, family, accel, method)]
                rows.append(sc.row())
                images[f"{key}|{method}"] = pred[t // 3]
                print(f"{name:20s} {family} {accel:g}x {method:42s} PSNR {sc.psnr:6.2f} SSIM {sc.ssim:.4f} "
                      f"{sc.seconds_per_frame:7.3f} s/frame", flush=True)
                if args.methods in ("anchors", "all") and not method.startswith("KGMgT"):
                    ce.save_cache(cache, [r for r in rows if not r["method"].startswith("KGMgT")],
                                  {k: v for k, v in images.items() if "|KGMgT" not in k}, extra)
    for family, accel in configs:
        for name in cases:
            key = f"{name}|{family}|{accel:g}"
            cols = {k.split("|")[-1]: v for k, v in images.items() if k.startswith(key + "|") and not k.endswith("|reference")}
            if cols and f"{key}|reference" in images:
                ce.strip(cols, images[f"{key}|reference"],
                         out / f"strip_cine_{name.replace('/', '_')}_{family}_{accel:g}x.png")
    (out / "cine.md").write_text(ce.cine_table(rows) + (f"\nBART lambda {bart_lambda:g} (sweep on the first case: "
                                 f"{extra.get('bart_lambda_sweep')})\n" if bart_lambda else ""))
    print(ce.cine_table(rows))
    return [_Row(r) for r in rows]


class _Row:
    """A cached score row in the shape ``models.evaluate.markdown_table`` and the JSON writer expect."""

    def __init__(self, row: dict) -> None:
        self._row = row
        self.method, self.accel, self.psnr, self.ssim = row["method"], row["accel"], row["psnr"], row["ssim"]
        self.nmse, self.seconds_per_frame, self.peak_mib = row["nmse"], row["seconds_per_frame"], row.get("peak_mib")
        self.extra = {k: v for k, v in row.items() if k not in
                      ("method", "accel", "psnr", "ssim", "nmse", "seconds_per_frame", "peak_mib")}

    def row(self) -> dict:
        return self._row


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


_CINE_CONFIGS = ("kt-gaussian:8", "vd-random:8", "kt-gaussian:4", "kt-gaussian:10")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("cine", "pair", "all"), default="all")
    p.add_argument("--cine-configs", nargs="+", default=list(_CINE_CONFIGS),
                   help="cine mask family:acceleration pairs")
    p.add_argument("--sunnybrook-slices", type=int, nargs="+", default=[4, 6],
                   help="slices of the held-out Sunnybrook patient in the cine validation")
    p.add_argument("--methods", choices=("anchors", "models", "all"), default="all",
                   help="cine: the classical anchors, the network, or both")
    p.add_argument("--anchors-cache", type=Path, default=None,
                   help="cine anchors' scores and images (reused when present; default OUT/cine_anchors)")
    p.add_argument("--recompute-anchors", action="store_true", help="ignore the anchors cache")
    p.add_argument("--noise", type=float, default=0.0, help="cine k-space noise std relative to the RMS k-space")
    p.add_argument("--pair-accels", type=float, nargs="+", default=[4.0, 8.0])
    p.add_argument("--frames", type=int, default=25, help="use the first N frames of each cine")
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
