"""The cine validation: KGMgT against the classical anchors on real hearts never trained on.

Cases (:func:`evaluation_cases`): whole held-out hearts at their full matrix
(the GIRAF human cine, 192 x 156, another dataset; slices from base to apex
of the held-out Sunnybrook patient ``SUNNYBROOK_VALIDATION``, 256 x 256) and
two of them played under conditions training never draws (rotated 30
degrees with a heart twice as fast, 24 coils and real-time noise; GIRAF
transposed, 12 coils, noise). Each gets a smooth synthetic phase and
synthetic coils (seeded), per-frame line masks (16 ACS lines; kt-Gaussian
and variable density at 4x, 8x and 10x by default), and is played as one
real-time pass: a frame's online methods see frames ``0..t`` (causal) or
``0..t+1`` (centred), never later ones.

Methods, all from the same k-space and the same estimated coil maps:

- online (what a scanner can show during the scan): zero-filled SENSE,
  view-sharing SENSE (centred and causal, :mod:`models.view_sharing`),
  CG-SENSE per frame, view sharing + SENSE DC (the network's input step
  with nothing learned), temporal TV over the 3-frame window
  ``t-1, t, t+1``, KGMgT centred and causal;
- offline (the whole series, after the scan): BART ``pics -R T`` (when
  ``bart`` is on PATH, else temporal TV in torch), whose lambda is chosen on
  the first case at the first configuration among :data:`BART_LAMBDAS`.

Scores: magnitude PSNR/SSIM/NMSE against the fully sampled SENSE image over
the full field of view, per frame then averaged (``models.evaluation.scores``), and
seconds per frame on this machine. :func:`headline_table` gives what the
network adds: centred minus its own input (centred view sharing), causal
minus causal view sharing, minus the best online anchor, and the distance
to BART.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from models import registry
from models import shared_data as model_data
from models.baselines import bart_available, bart_pics, cg_sense, tv_temporal
from models.cine_windows import ValidationCondition, condition_frames, frame_image, window_inputs, window_order
from models.dc import DataConsistency
from models.inference import set_dc, load_model
from models.masks import line_mask
from models.metrics import psnr
from models.synthetic import coil_maps, smooth_phase
from models.training_data import simulate_acquisition

from .strips import ERROR_GAIN, titled, to_uint8

BART_LAMBDAS = (0.003, 0.01, 0.03)
DEFAULT_CONFIGS = ("kt-gaussian:8", "vd-random:8", "kt-gaussian:4", "kt-gaussian:10")
SUNNYBROOK_SLICES = (4, 6)  # mid-ventricular slices of the validation patient
ONLINE_ANCHORS = ("zero-filled SENSE", "view-sharing SENSE (centred)", "view-sharing SENSE (causal)", "CG-SENSE",
                  "view sharing + SENSE DC (centred)", "TV temporal, 3-frame window")
INPUT_DC_WEIGHT = 30.0  # the DC weight the network's input step starts from (models/kgmgt.py dc_input)
OFFLINE_ANCHORS = ("TV temporal, whole series", "BART pics -R T, whole series")


@dataclass
class Acquisition:
    case: str
    family: str
    accel: float
    reference: np.ndarray   # (T, ny, nx) fully sampled SENSE image
    kspace: np.ndarray      # (T, C, ny, nx)
    masks: np.ndarray       # (T, ny)
    maps: np.ndarray        # (C, ny, nx)
    zero_filled: np.ndarray  # (T, ny, nx)


@dataclass(frozen=True)
class Case:
    """A held-out cine as played: ``coils``/``noise`` None take the configuration's (8 coils, no noise)."""

    name: str
    cine: np.ndarray
    coils: int | None = None
    noise: float | None = None


def evaluation_cases(slices_per_patient: int = 3, unseen_conditions: bool = True) -> list[Case]:
    """Whole held-out hearts at their full matrix (``model_data.cine_validation_hearts``) and, with
    ``unseen_conditions``, two of them played as training never draws them: the middle Sunnybrook slice
    rotated 30 degrees, its heart twice as fast, 24 coils and real-time noise (2 % of the RMS k-space);
    GIRAF transposed (phase encoding along the other axis), 12 coils, 1 % noise."""

    hearts = model_data.cine_validation_hearts(slices_per_patient)
    cases = [Case(name, cine) for name, cine in hearts.items()]
    if unseen_conditions:
        sunny = [n for n in hearts if n != "GIRAF"]
        if sunny:
            mid = sunny[len(sunny) // 2]
            cond = ValidationCondition("rot30", rotation_deg=30.0, stride=2)
            cases.append(Case(f"{mid} rot30 x2 speed", condition_frames(hearts[mid], cond), coils=24, noise=0.02))
        cases.append(Case("GIRAF transposed", condition_frames(hearts["GIRAF"], ValidationCondition("t", transpose=True)),
                          coils=12, noise=0.01))
    return cases


def validation_cases(sunnybrook_slices: tuple[int, ...] = SUNNYBROOK_SLICES) -> dict[str, np.ndarray]:
    """``{name: (T, ny, nx) float32 magnitude}`` of the validation split."""

    cases = {"GIRAF": model_data.load_cine()}
    if model_data.have_sunnybrook():
        for patient, cines in model_data.load_sunnybrook(model_data.SUNNYBROOK_VALIDATION).items():
            for s in sunnybrook_slices:
                if s < len(cines):
                    cases[f"{patient}/slice{s}"] = cines[s]
    return cases


def acquire(case: str, cine: np.ndarray, family: str, accel: float, acs: int = 16, coils: int = 8,
            noise: float = 0.0) -> Acquisition:
    """One seeded real-time acquisition of a magnitude cine (same seeds for every method)."""

    t, ny, nx = cine.shape
    video = (cine * np.exp(1j * smooth_phase((ny, nx), seed=7, max_rad=np.pi))[None]).astype(np.complex64)
    masks = line_mask(family, ny, t, accel=accel, acs=acs, seed=int(accel * 100) + len(family))
    acq = simulate_acquisition(np.random.default_rng(0), video, masks, coils, noise, maps=coil_maps(coils, ny, nx, seed=11))
    return Acquisition(case, family, accel, acq["target"], acq["kspace"], masks, acq["maps"], acq["zero_filled"])


def view_shared_series(a: Acquisition, causal: bool) -> np.ndarray:
    """View-sharing SENSE of every frame, as the stream has it (``t+1`` allowed when centred)."""

    return np.stack([frame_image(a.kspace, a.masks, a.maps, t, causal) for t in range(len(a.kspace))])


def tv_window_series(a: Acquisition, lam: float = 0.03, iterations: int = 100) -> np.ndarray:
    """Temporal TV over each 3-frame window ``t-1, t, t+1`` (as available), keeping frame ``t``."""

    n = len(a.kspace)
    out = np.empty_like(a.zero_filled)
    for t in range(n):
        frames = sorted(set(window_order(t, n, causal=False)))
        rec = tv_temporal(a.kspace[frames], a.masks[frames], a.maps, lam=lam, iterations=iterations)
        out[t] = rec[frames.index(t)]
    return out


def cine_series(rec, a: Acquisition, causal: bool, batch: int = 4) -> np.ndarray:
    """A loaded cine model (any registered model of the ``cine`` operation) over every frame, with the
    window images its weights take."""

    n = len(a.kspace)
    out = np.empty_like(a.zero_filled)
    for start in range(0, n, batch):
        idx = list(range(start, min(start + batch, n)))
        frames = []
        for t in idx:
            f = window_inputs(a.kspace, a.masks, a.maps, t, causal, rec.inputs)  # model order
            frames.append([f[2], f[1], f[0]] if causal else [f[1], f[0], f[2]])  # time order, as the gadget sends
        out[idx] = rec.reconstruct_cine_batch(np.asarray(frames), a.kspace[idx], a.masks[idx],
                                              np.repeat(a.maps[None], len(idx), 0), causal=causal)
    return out


def view_shared_dc_series(a: Acquisition, causal: bool = False, weight: float = INPUT_DC_WEIGHT) -> np.ndarray:
    """View-sharing SENSE with each frame's own lines enforced by the exact soft-DC step (5 CG iterations)
    at ``weight``: what the network's input step does before anything learned. An online classical anchor."""

    dc = DataConsistency("soft", weight, method="prox", cg_iterations=5)
    x = torch.from_numpy(view_shared_series(a, causal))
    maps = torch.from_numpy(a.maps)[None].expand(len(x), -1, -1, -1)
    with torch.no_grad():
        return dc(x, torch.from_numpy(a.kspace), torch.from_numpy(a.masks), maps).numpy()


def anchor_methods(a: Acquisition, bart_lambda: float | None) -> dict[str, Callable[[], np.ndarray]]:

    methods = {
        "zero-filled SENSE": lambda: a.zero_filled,
        "view-sharing SENSE (centred)": lambda: view_shared_series(a, causal=False),
        "view-sharing SENSE (causal)": lambda: view_shared_series(a, causal=True),
        "CG-SENSE": lambda: cg_sense(a.kspace, a.masks, a.maps, lam=1e-3, iterations=15),
        "view sharing + SENSE DC (centred)": lambda: view_shared_dc_series(a),
        "TV temporal, 3-frame window": lambda: tv_window_series(a),
    }
    if bart_available() and bart_lambda is not None:
        methods["BART pics -R T, whole series"] = lambda: bart_pics(a.kspace, a.masks, a.maps, lam=bart_lambda)
    else:  # the offline anchor without BART: the same regulariser in torch
        methods["TV temporal, whole series"] = lambda: tv_temporal(a.kspace, a.masks, a.maps, lam=0.03, iterations=100)
    return methods


def choose_bart_lambda(a: Acquisition, log: Callable[[str], None] = print) -> tuple[float | None, dict]:
    """The BART lambda of :data:`BART_LAMBDAS` with the best PSNR on ``a`` (the first case/configuration)."""

    if not bart_available():
        log("bart is not on PATH (apt-get install bart): BART pics not run; the torch temporal TV stands in")
        return None, {}
    tried = {}
    for lam in BART_LAMBDAS:
        tried[lam] = psnr(bart_pics(a.kspace, a.masks, a.maps, lam=lam), a.reference)
        log(f"BART lambda {lam:g}: PSNR {tried[lam]:.2f} dB on {a.case} {a.family} {a.accel:g}x")
    best = max(tried, key=tried.get)
    return best, {f"{k:g}": round(v, 3) for k, v in tried.items()}


def strip(columns: dict[str, np.ndarray], reference: np.ndarray, path: Path) -> None:
    """Labelled strip: reference and every method in columns, error maps (x5) below, one grey scale per row."""

    scale = float(np.percentile(np.abs(reference), 99.5))
    top = [titled(to_uint8(reference, scale), "reference")]
    bottom = [titled(np.zeros_like(to_uint8(reference, scale)), f"error x{ERROR_GAIN:g}")]
    for name, image in columns.items():
        top.append(titled(to_uint8(image, scale), name))
        bottom.append(titled(to_uint8(np.abs(np.abs(image) - np.abs(reference)), scale / ERROR_GAIN), "error"))
    Image.fromarray(np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)).save(path)


def cine_table(rows: list[dict]) -> str:
    """One markdown table per configuration: a row per method, PSNR/SSIM per case, means and time."""
    out = []
    configs = list(dict.fromkeys((r["family"], r["accel"]) for r in rows))
    for family, accel in configs:
        sel = [r for r in rows if (r["family"], r["accel"]) == (family, accel)]
        cases = list(dict.fromkeys(r["case"] for r in sel))
        out.append(f"**{family} {accel:g}x**, 8 coils, 16 ACS lines\n")
        out.append("| method | " + " | ".join(f"{c} PSNR / SSIM" for c in cases) + " | mean PSNR dB | mean SSIM | s/frame |")
        out.append("|---" * (len(cases) + 4) + "|")
        for method in dict.fromkeys(r["method"] for r in sel):
            mr = {r["case"]: r for r in sel if r["method"] == method}
            cells = [f"{mr[c]['psnr']:.2f} / {mr[c]['ssim']:.3f}" if c in mr else "-" for c in cases]
            vals = list(mr.values())
            out.append(f"| {method} | " + " | ".join(cells) + f" | {np.mean([v['psnr'] for v in vals]):.2f} | "
                       f"{np.mean([v['ssim'] for v in vals]):.3f} | {np.mean([v['seconds_per_frame'] for v in vals]):.3f} |")
        out.append("")
    return "\n".join(out)


def headline_table(rows: list[dict], label: str = "") -> str:
    """What the network adds, per case and configuration: centred minus its own input (centred view
    sharing), causal minus causal view sharing, centred minus the best online classical anchor, centred
    minus causal, and the distance to BART over the whole series (offline)."""
    label = label or registry.get(registry.default_model("cine")).label  # the network's rows: "LABEL centred [...]"
    by = {}
    for r in rows:
        by.setdefault((r["case"], r["family"], r["accel"]), {})[r["method"]] = r["psnr"]
    out = [f"| case | mask | input (VS centred) | {label} centred | **centred - input** | causal - VS causal | "
           "centred - best online anchor | centred - causal | centred - BART (offline) |", "|---" * 9 + "|"]
    for (case, family, accel), m in by.items():
        centred = next((v for k, v in m.items() if k.startswith(f"{label} centred")), None)
        causal = next((v for k, v in m.items() if k.startswith(f"{label} causal")), None)
        if centred is None or "view-sharing SENSE (centred)" not in m:
            continue
        online = {k: v for k, v in m.items() if k in ONLINE_ANCHORS}
        best = max(online, key=online.get)
        vs_causal = m.get("view-sharing SENSE (causal)")
        bart = m.get("BART pics -R T, whole series")

        def f(v):
            return "-" if v is None else f"{v:+.2f}"
        out.append(f"| {case} | {family} {accel:g}x | {m['view-sharing SENSE (centred)']:.2f} | {centred:.2f} | "
                   f"**{centred - m['view-sharing SENSE (centred)']:+.2f}** | "
                   f"{f(None if causal is None or vs_causal is None else causal - vs_causal)} | "
                   f"{centred - online[best]:+.2f} ({best}) | {f(None if causal is None else centred - causal)} | "
                   f"{f(None if bart is None else centred - bart)} |")
    return "\n".join(out)


def save_cache(path: Path, rows: list[dict], images: dict[str, np.ndarray], extra: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path.with_suffix(".npz"), **{k.replace("/", "~"): v for k, v in images.items()})
    path.with_suffix(".json").write_text(json.dumps({"rows": rows, **extra}, indent=1))


def load_cache(path: Path) -> tuple[list[dict], dict[str, np.ndarray], dict]:
    data = json.loads(path.with_suffix(".json").read_text())
    with np.load(path.with_suffix(".npz")) as z:
        images = {k.replace("~", "/"): z[k] for k in z.files}
    rows = data.pop("rows")
    return rows, images, data


__all__ = ["validation_cases", "evaluation_cases", "Case", "view_shared_dc_series", "headline_table", "acquire", "anchor_methods", "cine_series", "view_shared_series", "tv_window_series",
           "choose_bart_lambda", "strip", "Acquisition", "DEFAULT_CONFIGS", "ONLINE_ANCHORS", "OFFLINE_ANCHORS",
           "BART_LAMBDAS", "ABLATION_MODEL", "save_cache", "load_cache", "cine_table"]


ABLATION_MODEL = "kgmgt"  # the ablation's variants are this model's own switches (cascades, DC input step)


def ablation_variants(new_weights: str | None, old_weights: str | None, device: str = "cpu") -> dict[str, Callable]:
    """KGMgT variants for the ablation table: ``{label: (acquisition) -> images}``.

    Inference-side switches on the trained network (cascades, DC solver, the network itself removed) and
    the previous network (zero-filled inputs, trained on brains and a phantom).
    """

    def variant(weights, causal=False, cascades=None, dc=None, no_network=False):
        rec = load_model(ABLATION_MODEL, device=device, weights=weights)
        if cascades:
            rec.model.cfg.cascades = cascades
        if dc:
            rec.dc = set_dc(rec.model, dc, 5)
        if no_network:  # input (+DC) only: what the network starts from
            rec.model.scale_residual(0.0)
        return lambda a: cine_series(rec, a, causal=causal)

    out = {}
    if old_weights:
        out["v1: zero-filled inputs, brains+phantom, prox DC"] = variant(old_weights)
    out["view-shared input + DC, network removed"] = variant(new_weights, no_network=True)
    out["v2: view-shared inputs, real hearts, 1 cascade, prox DC"] = variant(new_weights)
    out["v2, causal window"] = variant(new_weights, causal=True)
    out["v2, 2 cascades at inference (shared weights)"] = variant(new_weights, cascades=2)
    out["v2, one-step gradient DC"] = variant(new_weights, dc="gradient")
    return out
