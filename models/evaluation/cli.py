"""``streamrecon evaluate``: score methods on the held-out real data; table + JSON + image strips.

Cine (``--task cine``): the validation split that training never touches
(GIRAF and slices of the held-out Sunnybrook patient), every online and
offline anchor and KGMgT centred and causal, as :mod:`models.evaluation.cine`
describes; the anchors' results are cached (``--anchors-cache``) so a new
network is scored against them without recomputing BART. Writes ``OUT/cine.md``
(one table per mask configuration) and labelled strips.

Multi-contrast (``--task pair``): the validation pairs of
``models.shared_data.multicontrast_evaluation_pairs`` (never trained on:
the held-out TCGA patient, T1 -> T2 and T1 -> FLAIR on three axial slices,
240 x 240; the CDLMRI tumour slice, T1_pre -> T2 and -> FLAIR, 256 x 256),
8 coils, variable-density random line masks with 16 central lines at 4x and
8x. Methods: zero-filled, CG-SENSE, SGF-MRI without the reference, SGF-MRI
with it. Strips (labelled columns): reference contrast, fully sampled
target, zero-filled, SGF-MRI without and with the reference; below, their
|error| x5.

A site's own data (``--data SOURCE``, :mod:`models.evaluation.site`):
a cine source becomes cine cases, ``REFERENCE+TARGET`` a pair case, each
through the same anchors, network and headline figures as the built-in
validation.

Writes ``OUT/scores.json``, ``OUT/scores.md`` and ``OUT/strip_*.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from models import registry
from models import shared_data as model_data
from models.baselines import bart_available, bart_pics, cg_sense
from models.evaluation.scores import Score, markdown_table, measure, score
from models.inference import load_model
from models.machine import machine
from models.masks import FAMILIES, line_mask
from models.shared_data import data_dir_problem
from models.synthetic import coil_maps, smooth_phase
from models.training_data import resize, simulate_acquisition
from models.weights import shipped_path

from . import cine as ce
from .cine import cine_table
from .site import SiteDataError, site_cine_cases, site_pairs


def _strip(images: list[np.ndarray], ref: np.ndarray, path: Path, labels: list[str] | None = None,
           guide: np.ndarray | None = None) -> None:
    """Top: [guide], reference (truth), each image; bottom: |error| x5 under each image. Column labels when given."""
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
    """The cine validation (``models.evaluation.cine``): anchors (cached in ``--anchors-cache``) and KGMgT."""

    if args.data:
        cases = site_cine_cases(args.data, args.frames)
    else:
        cases = ce.evaluation_cases(args.slices_per_patient, unseen_conditions=not args.no_unseen_conditions)
    configs = parse_configs(args.cine_configs)
    # A site's cases get their own cache: the BART lambda is chosen on the first case of a run.
    cache = args.anchors_cache or (out / ("site_anchors" if args.data else "cine_anchors"))
    rows, images, extra = ([], {}, {})
    if cache.with_suffix(".json").exists() and not args.recompute_anchors:
        rows, images, extra = ce.load_cache(cache)
        print(f"anchors from {cache}.json ({len(rows)} scores)")
    bart_lambda = extra.get("bart_lambda")
    done = {(r["case"], r["family"], r["accel"], r["method"]) for r in rows}
    rec, label = None, registry.get(args.cine_model).label
    if args.methods in ("models", "all"):
        rec = load_model(args.cine_model, device=args.device, weights=args.cine_weights, dc_method=args.dc_method)
    for fi, (family, accel) in enumerate(configs):
        for case in cases:
            name, cine = case.name, case.cine
            a = ce.acquire(name, cine[: args.frames], family, accel, coils=case.coils or 8,
                           noise=args.noise if case.noise is None else case.noise)
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
                methods[f"{label} centred [{rec.version}]"] = lambda: ce.cine_series(rec, a, causal=False)
                methods[f"{label} causal [{rec.version}]"] = lambda: ce.cine_series(rec, a, causal=True)
            for method, fn in methods.items():
                pred, sec, mem = measure(fn, args.device)
                sc = score(method, accel, pred, a.reference, sec, t, mem, case=name, family=family,
                           online=method not in ce.OFFLINE_ANCHORS)
                rows = [r for r in rows if (r["case"], r["family"], r["accel"], r["method"]) != (name, family, accel, method)]
                rows.append(sc.row())
                images[f"{key}|{method}"] = pred[t // 3]
                print(f"{name:20s} {family} {accel:g}x {method:42s} PSNR {sc.psnr:6.2f} SSIM {sc.ssim:.4f} "
                      f"{sc.seconds_per_frame:7.3f} s/frame", flush=True)
                if args.methods in ("anchors", "all") and not method.startswith(label):
                    ce.save_cache(cache, [r for r in rows if not r["method"].startswith(label)],
                                  {k: v for k, v in images.items() if f"|{label}" not in k}, extra)
    for family, accel in configs:
        for name in (c.name for c in cases):
            key = f"{name}|{family}|{accel:g}"
            cols = {k.split("|")[-1]: v for k, v in images.items() if k.startswith(key + "|") and not k.endswith("|reference")}
            if cols and f"{key}|reference" in images:
                ce.strip(cols, images[f"{key}|reference"],
                         out / f"strip_cine_{name.replace('/', '_')}_{family}_{accel:g}x.png")
    headline = ce.headline_table(rows, label)
    (out / "cine.md").write_text("## What the network adds (PSNR dB)\n\n" + headline + "\n\n" + ce.cine_table(rows)
                                 + (f"\nBART lambda {bart_lambda:g} (sweep on the first case: "
                                    f"{extra.get('bart_lambda_sweep')})\n" if bart_lambda else ""))
    print(ce.cine_table(rows))
    print(headline)
    return [Score.from_row(r) for r in rows]


def evaluate_cine_ablation(args, out: Path) -> list:
    """KGMgT variants (``models.evaluation.cine.ablation_variants``) at the first ``--cine-configs`` entry."""

    family, accel = args.cine_configs[0].split(":")[0], float(args.cine_configs[0].split(":")[1])
    old = args.previous_kgmgt_weights or shipped_path("kgmgt_cine_vs")
    variants = ce.ablation_variants(args.cine_weights, str(old) if Path(old).with_suffix(".safetensors").exists()
                                    else None, args.device)
    rows = []
    for name, cine in ce.validation_cases(tuple(args.sunnybrook_slices)).items():
        a = ce.acquire(name, cine[: args.frames], family, float(accel), noise=args.noise)
        for label, fn in variants.items():
            pred, sec, mem = measure(lambda: fn(a), args.device)
            sc = score(label, float(accel), pred, a.reference, sec, len(a.kspace), mem, case=name, family=family)
            rows.append(sc.row())
            print(f"{name:20s} {label:52s} PSNR {sc.psnr:6.2f} SSIM {sc.ssim:.4f} {sc.seconds_per_frame:7.3f} s/frame",
                  flush=True)
    (out / "cine_ablation.md").write_text(cine_table(rows))
    print(cine_table(rows))
    return [Score.from_row(r) for r in rows]


PAIR_BART_LAMBDAS = (0.0003, 0.001, 0.003, 0.01)


def evaluate_pairs(args, out: Path) -> list:
    """The multi-contrast validation: per held-out pair and acceleration, the classical anchors (CG-SENSE,
    BART l1-wavelet at each lambda of :data:`PAIR_BART_LAMBDAS`, the best reported) and SGF-MRI with its
    reference, without one and with a wrong one (another slice of the same contrast)."""

    rec = load_model(args.pair_model, device=args.device, weights=args.pair_weights, dc_method=args.dc_method)
    scores = []
    if args.data:
        evaluation = site_pairs(args.data)
    else:
        evaluation = model_data.multicontrast_evaluation_pairs()
    tcga = next((v for v in evaluation.values() if v[0].ndim == 3), None)
    for case, (ref_stack, tgt_stack) in evaluation.items():
        ref_stack, tgt_stack = (a.reshape(-1, *a.shape[-2:]) for a in (ref_stack, tgt_stack))  # (slices, ny, nx)
        ny, nx = tgt_stack.shape[-2:]
        # a wrong reference: another slice of the same contrast (TCGA: the next one; the single tumour
        # slice: the TCGA patient's middle slice, resized)
        if len(ref_stack) > 1:
            wrong_stack = np.roll(ref_stack, 1, axis=0)
        else:
            other = tcga[0][len(tcga[0]) // 2] if tcga is not None else np.rot90(ref_stack[0])
            wrong_stack = resize(other, (ny, nx))[None].astype(np.float32)
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

            def per_slice(fn, refs=ref_stack):
                return lambda: np.stack([fn(a, r) for a, r in zip(slices, refs)])

            def network(a, r):
                return rec.reconstruct_pair(None if r is None else r.astype(np.complex64), a["zero_filled"][0],
                                            a["kspace"][0], mask[0], a["maps"])

            methods = {
                "zero-filled": lambda: zf,
                "CG-SENSE": per_slice(lambda a, r: cg_sense(a["kspace"], mask, a["maps"], lam=1e-3, iterations=15)[0]),
            }
            if bart_available() and not args.no_bart:
                for lam in PAIR_BART_LAMBDAS:
                    methods[f"BART l1-wavelet lambda {lam:g}"] = per_slice(
                        lambda a, r, lam=lam: bart_pics(a["kspace"], mask, a["maps"], lam=lam)[0])
            methods.update({
                f"SGF-MRI no reference [{rec.version}, DC {rec.dc}]": per_slice(lambda a, r: network(a, None)),
                "SGF-MRI with reference": per_slice(network),
                "SGF-MRI with a wrong reference (another slice)": per_slice(network, wrong_stack),
            })
            images = {}
            for name, fn in methods.items():
                pred, sec, mem = measure(fn, args.device)
                s = score(name, accel, pred, gt, sec, len(slices), mem, case=case)
                scores.append(s)
                images[name] = pred
                print(f"{case:22s} {accel:g}x {name:48s} PSNR {s.psnr:6.2f} SSIM {s.ssim:.4f}", flush=True)
            mid = len(slices) // 2
            bart = {k: v for k, v in images.items() if k.startswith("BART")}
            best_bart = max(bart, key=lambda k: next(x.psnr for x in scores if x.method == k and x.accel == accel
                                                     and x.extra.get("case") == case)) if bart else None
            cols = ["CG-SENSE"] + ([best_bart] if best_bart else []) + list(methods)[-3:]
            labels = ["reference contrast", "target (full)", "CG-SENSE"] + (
                [f"BART l1-wav {best_bart.rsplit(' ', 1)[-1]}"] if best_bart else []) + [
                "SGF no ref", "SGF with ref", "SGF wrong ref"]
            _strip([images[c][mid] for c in cols], gt[mid], out / f"strip_{case.replace('->', '_to_')}_{accel:g}x.png",
                   labels=labels, guide=ref_stack[mid])
    return scores


def pair_summary(scores: list) -> str:
    """Per case and acceleration (PSNR dB): the anchors, SGF-MRI with / without / with a wrong reference,
    and the figures of issue 16: with - best BART l1-wavelet, with - without, without - wrong."""
    rows: dict = {}
    for s in scores:
        if "case" not in s.extra:
            continue
        r = rows.setdefault((s.extra["case"], s.accel), {})
        if s.method == "zero-filled":
            r["zf"] = s.psnr
        elif s.method == "CG-SENSE":
            r["cg"] = s.psnr
        elif s.method.startswith("BART l1-wavelet"):
            lam = s.method.rsplit(" ", 1)[-1]
            if s.psnr > r.get("bart", (-1e9, ""))[0]:
                r["bart"] = (s.psnr, lam)
        elif s.method == "SGF-MRI with reference":
            r["with"] = s.psnr
        elif s.method.startswith("SGF-MRI no reference"):
            r["without"] = s.psnr
        elif s.method.startswith("SGF-MRI with a wrong"):
            r["wrong"] = s.psnr
    lines = ["| case | accel | zero-filled | CG-SENSE | BART l1-wavelet (best lambda) | SGF-MRI without reference | "
             "SGF-MRI with reference | wrong reference | **with - BART** | **with - without** | "
             "**wrong-reference cost** |", "|---" * 11 + "|"]
    for (case, accel), r in rows.items():
        if not {"zf", "cg", "with", "without"} <= set(r):
            continue
        bart, lam = r.get("bart", (None, ""))
        wrong = r.get("wrong")
        lines.append(
            f"| {case} | {accel:g}x | {r['zf']:.2f} | {r['cg']:.2f} | "
            + ("-" if bart is None else f"{bart:.2f} ({lam})") + f" | {r['without']:.2f} | {r['with']:.2f} | "
            + ("-" if wrong is None else f"{wrong:.2f}") + " | "
            + ("-" if bart is None else f"{r['with'] - bart:+.2f}") + f" | {r['with'] - r['without']:+.2f} | "
            + ("-" if wrong is None else f"{r['without'] - wrong:+.2f}") + " |")
    return "\n".join(lines)


_CINE_CONFIGS = ("kt-gaussian:4", "vd-random:4", "kt-gaussian:8", "vd-random:8", "kt-gaussian:10", "vd-random:10")


def parse_configs(texts: list[str]) -> list[tuple[str, float]]:
    """``["kt-gaussian:8", ...]`` -> ``[("kt-gaussian", 8.0), ...]``; a malformed entry is named."""

    out = []
    for text in texts:
        family, _, accel = text.partition(":")
        try:
            value = float(accel)
        except ValueError:
            raise ValueError(f"--cine-configs {text!r}: expected FAMILY:ACCELERATION, e.g. kt-gaussian:8") from None
        if family not in FAMILIES or not value >= 1:
            raise ValueError(f"--cine-configs {text!r}: family one of {', '.join(FAMILIES)}, acceleration at least 1")
        out.append((family, value))
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("cine", "cine-ablation", "pair", "all"), default=None,
                   help="cine-ablation: KGMgT variants at 8x kt-Gaussian on the cine validation cases "
                        "(default: all; with --data, pair for REFERENCE+TARGET, else cine)")
    p.add_argument("--data", metavar="SOURCE",
                   help="evaluate on your own data instead of the built-in validation: a cine SOURCE as replay "
                        "reads it (DICOM folder, FILE.h5[:DATASET[:SLICE]], .mat, .npy, fully sampled ISMRMRD) or a "
                        "pair REFERENCE+TARGET")
    p.add_argument("--previous-kgmgt-weights", type=Path, default=None,
                   help="cine-ablation: the earlier network to compare (default the shipped kgmgt_cine_vs, the cine weights shipped before kgmgt_cine_rt)")
    p.add_argument("--cine-configs", nargs="+", default=list(_CINE_CONFIGS),
                   help="cine mask family:acceleration pairs")
    p.add_argument("--sunnybrook-slices", type=int, nargs="+", default=[4, 6],
                   help="cine-ablation: slices of the held-out Sunnybrook patient")
    p.add_argument("--slices-per-patient", type=int, default=2,
                   help="cine: slices from base to apex of each held-out Sunnybrook patient (plus GIRAF)")
    p.add_argument("--no-unseen-conditions", action="store_true",
                   help="cine: leave out the cases played under conditions training never draws")
    p.add_argument("--methods", choices=("anchors", "models", "all"), default="all",
                   help="cine: the classical anchors, the network, or both")
    p.add_argument("--anchors-cache", type=Path, default=None,
                   help="cine anchors' scores and images (reused when present; default OUT/cine_anchors)")
    p.add_argument("--recompute-anchors", action="store_true", help="ignore the anchors cache")
    p.add_argument("--noise", type=float, default=0.0, help="cine k-space noise std relative to the RMS k-space")
    p.add_argument("--pair-accels", type=float, nargs="+", default=[4.0, 8.0])
    p.add_argument("--no-bart", action="store_true", help="pairs: leave out the BART l1-wavelet anchor")
    p.add_argument("--frames", type=int, default=12, help="use the first N frames of each cine")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    # the networks evaluated: registered models of each task's operation (models.registry), each by default
    # the operation's default model with its registered weights
    p.add_argument("--cine-model", choices=registry.names("cine"), default=registry.default_model("cine"),
                   help="the cine network (default: the registry's cine model)")
    p.add_argument("--pair-model", choices=registry.names("pair"), default=registry.default_model("pair"),
                   help="the multi-contrast network (default: the registry's pair model)")
    p.add_argument("--cine-weights", "--kgmgt-weights", type=Path, default=None,
                   help="weights of --cine-model (default: its registered set)")
    p.add_argument("--pair-weights", "--sgfmri-weights", type=Path, default=None,
                   help="weights of --pair-model (default: its registered set)")
    p.add_argument("--dc-method", choices=("auto", "gradient", "prox"), default="auto",
                   help="override the networks' multi-coil DC solver (see models.inference.load_model)")
    p.add_argument("--out", type=Path, default=Path("out") / "evaluate")
    args = p.parse_args(argv)
    if args.task is None:
        args.task = ("pair" if "+" in args.data and not Path(args.data).exists() else "cine") if args.data else "all"
    if args.data and args.task not in ("cine", "pair"):
        p.error(f"--data takes --task cine or pair, not {args.task}")
    if args.task == "cine-ablation" and args.cine_model != ce.ABLATION_MODEL:
        p.error(f"the cine ablation varies {ce.ABLATION_MODEL}'s own switches; --cine-model {args.cine_model} has none")
    try:
        parse_configs(args.cine_configs)
    except ValueError as exc:
        p.error(str(exc))

    if args.data:
        try:  # refuse unusable data in one line before any model is loaded
            site_pairs(args.data) if args.task == "pair" else site_cine_cases(args.data, args.frames)
        except (SiteDataError, OSError, ValueError, KeyError) as exc:
            from simulator.replay import one_line  # inside: models sits below simulator (the replay CLI's wording)
            print(f"streamrecon evaluate: {one_line(exc)}", file=sys.stderr)
            return 2
    elif not model_data.have_data():
        print(f"streamrecon evaluate: {data_dir_problem() or f'no cine data in {model_data.data_dir()}'}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    scores = []
    if args.task in ("cine", "all"):
        scores += evaluate_cine(args, args.out)
    if args.task == "cine-ablation":
        scores += evaluate_cine_ablation(args, args.out)
    if args.task in ("pair", "all"):
        scores += evaluate_pairs(args, args.out)
    table = markdown_table(scores)
    if args.task in ("pair", "all"):
        table += "\n\n" + pair_summary(scores)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "streamrecon evaluate " + " ".join(argv),
            "machine": machine(), "threads": torch.get_num_threads(),
            "normalisation": "magnitudes, no rescaling; PSNR peak = max of each reference frame; full FOV"}
    (args.out / "scores.json").write_text(json.dumps({"meta": meta, "scores": [s.row() for s in scores]}, indent=1))
    (args.out / "scores.md").write_text(f"{meta['command']}  \n{meta['date']}, {meta['machine']}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
