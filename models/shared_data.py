"""The real images in ``../shared/data`` as training and evaluation inputs for the networks.

Located relative to the repository (``<repo>/../shared/data``) or by the
``STREAMRECON_DATA`` environment variable. Every loader returns float32
magnitude arrays (the files hold magnitude images); simulation of phase,
coils and undersampling happens in ``models.training_data``.

Splits, fixed so nothing evaluated is trained on:
- cine evaluation: ``cine/giraf_sax_cine25.mat`` (192 x 156 x 25), never used
  for training;
- multi-contrast validation (``streamrecon evaluate --task pair``): the TCGA
  patient ``VALIDATION_TCGA`` (T1 -> T2 and T1 -> FLAIR on three axial
  slices) and the CDLMRI tumour slice ``T2_FLAIR_T1pre_T1post.mat`` (T1_pre ->
  T2 and T1_pre -> FLAIR), never used for training;
- multi-contrast training: every ordered pair of co-registered contrasts of
  the qMRLab subject (T1w, PDw, MTw; slices along all three axes), the other
  TCGA patient (T1, T1c, T2, FLAIR; axial slices) and the CDLMRI patientA
  slice (T1, T2);
- cine training: qMRLab slices put in periodic motion.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
from PIL import Image
from scipy.io import loadmat

DATA_SUBFOLDERS = ("cine", "multicontrast")


def shared_data_dir() -> Path:
    """``$STREAMRECON_DATA`` or ``../shared/data`` beside the repository.

    ``STREAMRECON_DATA`` names the data folder itself: the one that holds
    ``cine/`` and ``multicontrast/``, not its parent.
    """
    env = os.environ.get("STREAMRECON_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_dir_problem() -> str | None:
    """What is wrong with the data folder, in one line a user can act on; None when it looks right."""
    d = shared_data_dir()
    if any((d / sub).is_dir() for sub in DATA_SUBFOLDERS):
        return None
    where = f"STREAMRECON_DATA={d}" if os.environ.get("STREAMRECON_DATA") else f"the default data folder {d}"
    inner = [p for p in (d.iterdir() if d.is_dir() else []) if p.is_dir() and any((p / s).is_dir() for s in DATA_SUBFOLDERS)]
    hint = f" (did you mean {inner[0]}?)" if inner else ""
    return (f"{where} holds no {' or '.join(s + '/' for s in DATA_SUBFOLDERS)}; set STREAMRECON_DATA to the data "
            f"folder itself, the one that holds them{hint}")


def data_dir() -> Path:
    """The data folder (:func:`shared_data_dir`)."""
    return shared_data_dir()


def have_data() -> bool:
    return (data_dir() / "cine" / "giraf_sax_cine25.mat").exists()


def load_cine() -> np.ndarray:
    """The held-out real cine, ``(25, 192, 156)`` float32 (frames first), max 1."""
    data = loadmat(str(data_dir() / "cine" / "giraf_sax_cine25.mat"))["data"].astype(np.float32)
    cine = np.moveaxis(data, -1, 0)
    return cine / cine.max()


SUNNYBROOK_PATIENTS = ("SCD0000101", "SCD0000201", "SCD0000301", "SCD0000401", "SCD0000501")
SUNNYBROOK_VALIDATION = ("SCD0000501",)   # never trained on; with GIRAF, the cine validation split


def have_sunnybrook() -> bool:
    return (data_dir() / "cine" / "sunnybrook_sax_cine.h5").exists()


def load_sunnybrook(patients: tuple[str, ...] | list[str] | None = None) -> dict[str, list[np.ndarray]]:
    """Sunnybrook short-axis cines: ``{patient: [slice cine (20, 256, 256) float32, ...]}``.

    Each slice-cine is divided by its 99.5th percentile (the files are uint16
    with per-series scaling), so every cine has the same intensity range.
    Default: the training patients (all but :data:`SUNNYBROOK_VALIDATION`).
    """
    patients = [p for p in SUNNYBROOK_PATIENTS if p not in SUNNYBROOK_VALIDATION] if patients is None else list(patients)
    out: dict[str, list[np.ndarray]] = {}
    with h5py.File(data_dir() / "cine" / "sunnybrook_sax_cine.h5", "r") as f:
        for name in patients:
            if name not in f:
                raise KeyError(f"{name} is not in sunnybrook_sax_cine.h5 (has {', '.join(f)})")
            vol = np.asarray(f[name], dtype=np.float32)  # (slices, frames, ny, nx)
            out[name] = [s / max(float(np.percentile(s, 99.5)), 1e-6) for s in vol]
    return out


def cine_validation_hearts(slices_per_patient: int = 3) -> dict[str, np.ndarray]:
    """The held-out hearts ``{name: (T, ny, nx)}`` at their full matrix: GIRAF (another dataset, 192 x 156)
    and ``slices_per_patient`` slices spread from base to apex of each :data:`SUNNYBROOK_VALIDATION` patient."""
    hearts = {"GIRAF": load_cine()}
    if have_sunnybrook():
        for patient, cines in load_sunnybrook(SUNNYBROOK_VALIDATION).items():
            for i in np.linspace(0, len(cines) - 1, slices_per_patient + 2)[1:-1].round().astype(int):
                hearts[f"{patient}/slice{i}"] = cines[i]
    return hearts


def load_qmrlab() -> dict[str, np.ndarray]:
    """``{"T1w", "PDw", "MTw"}`` -> ``(128, 128, 96)`` float32 volumes (co-registered)."""
    out = {}
    for name in ("T1w", "PDw", "MTw"):
        v = np.asarray(nib.load(str(data_dir() / "multicontrast" / f"{name}.nii.gz")).get_fdata(), dtype=np.float32)
        out[name] = np.clip(v, 0, None)
    return out


def qmrlab_slices(volume: np.ndarray, min_fraction: float = 0.25) -> list[np.ndarray]:
    """2-D slices along all three axes that hold at least ``min_fraction`` of the busiest slice's signal."""
    out = []
    for axis in range(3):
        sl = np.moveaxis(volume, axis, 0)
        energy = sl.reshape(sl.shape[0], -1).sum(1)
        keep = energy >= min_fraction * energy.max()
        out += [np.ascontiguousarray(s) for s, k in zip(sl, keep) if k]
    return out


def cine_training_images(step: int = 3) -> list[np.ndarray]:
    """Static real images for synthetic cines: every ``step``-th qMRLab slice of every contrast."""
    vols = load_qmrlab()
    images = []
    for v in vols.values():
        images += qmrlab_slices(v)[::step]
    return [im / max(float(im.max()), 1e-6) for im in images]


TCGA_PATIENTS = ("TCGA-DU-7294", "TCGA-FG-6692")
TCGA_CONTRASTS = {"T1": "t1", "T1c": "t1c", "T2": "t2", "FLAIR": "fla"}
TRAINING_TCGA = "TCGA-DU-7294"
VALIDATION_TCGA = "TCGA-FG-6692"


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.clip(np.asarray(a, dtype=np.float32), 0, None)
    return a / max(float(a.max()), 1e-6)


def load_tcga(patient: str) -> dict[str, np.ndarray]:
    """``{"T1", "T1c", "T2", "FLAIR"}`` -> ``(240, 240, 155)`` float32 volumes of one patient (co-registered)."""
    d = data_dir() / "multicontrast" / "tcga"
    return {name: np.clip(np.asarray(nib.load(str(d / f"{patient}_{suffix}.nii.gz")).get_fdata(), dtype=np.float32), 0, None)
            for name, suffix in TCGA_CONTRASTS.items()}


def tcga_axial_slices(volumes: dict[str, np.ndarray], min_fraction: float = 0.3,
                      step: int = 1) -> list[dict[str, np.ndarray]]:
    """Axial slices ``{contrast: (ny, nx)}`` (image orientation: rows anterior-posterior) holding at least
    ``min_fraction`` of the busiest slice's T1 signal; every ``step``-th, each slice scaled to max 1."""
    energy = volumes["T1"].reshape(-1, volumes["T1"].shape[2]).sum(0)
    idx = np.nonzero(energy >= min_fraction * energy.max())[0][::step]
    return [{c: _unit(np.rot90(v[:, :, i])) for c, v in volumes.items()} for i in idx]


def _ordered_pairs(group: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every ordered (reference, target) pair of distinct contrasts; the arrays are shared, not copied."""
    return [(group[a], group[b]) for a in group for b in group if a != b]


def multicontrast_training_pairs(step: int = 1, tcga_step: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """(reference, target) slices, every ordered contrast pair of each co-registered set (module docstring)."""
    pairs = []
    vols = load_qmrlab()
    ref_energy = {axis: np.moveaxis(vols["T1w"], axis, 0) for axis in range(3)}
    for axis in range(3):
        # one slice selection for all contrasts (by T1w energy), so pairs stay co-registered
        sl = ref_energy[axis]
        energy = sl.reshape(sl.shape[0], -1).sum(1)
        for i in np.nonzero(energy >= 0.25 * energy.max())[0][::step]:
            pairs += _ordered_pairs({c: np.ascontiguousarray(np.moveaxis(v, axis, 0)[i]) for c, v in vols.items()})
    tcga = load_tcga(TRAINING_TCGA)
    for group in tcga_axial_slices(tcga, step=tcga_step):
        pairs += _ordered_pairs(group)
    for axis in (0, 1):  # sagittal and coronal slices too (every axis, as the qMRLab subject)
        energy = np.moveaxis(tcga["T1"], axis, 0).reshape(tcga["T1"].shape[axis], -1).sum(1)
        for i in np.nonzero(energy >= 0.3 * energy.max())[0][::max(tcga_step, 2)]:
            pairs += _ordered_pairs({c: _unit(np.rot90(np.take(v, i, axis=axis))) for c, v in tcga.items()})
    d = data_dir() / "multicontrast"
    patient_a = {c: _unit(np.asarray(Image.open(d / f"patientA_groundtruth_{c}.png").convert("L"))) for c in ("T1", "T2")}
    pairs += _ordered_pairs(patient_a)
    return pairs


def multicontrast_evaluation_pairs(tcga_slices: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Validation pairs ``name -> (reference, target)``, float32, each max 1: ``(ny, nx)`` or, for the TCGA
    patient, ``(tcga_slices, ny, nx)`` axial slices spread over the middle of the brain."""
    d = data_dir() / "multicontrast"
    mat = loadmat(str(d / "T2_FLAIR_T1pre_T1post.mat"))
    out = {
        "tumour_T1pre->T2": (_unit(mat["T1_pre"]), _unit(mat["T2"])),
        "tumour_T1pre->FLAIR": (_unit(mat["T1_pre"]), _unit(mat["FLAIR"])),
        "tumour_T2->FLAIR": (_unit(mat["T2"]), _unit(mat["FLAIR"])),
    }
    slices = tcga_axial_slices(load_tcga(VALIDATION_TCGA), min_fraction=0.6)
    pick = [slices[int(i)] for i in np.linspace(0, len(slices) - 1, tcga_slices + 2)[1:-1].round()]
    short = VALIDATION_TCGA.split("-", 1)[1]
    for ref, target in (("T1", "T2"), ("T1", "FLAIR"), ("T2", "FLAIR")):
        out[f"{short}_{ref}->{target}"] = (np.stack([s[ref] for s in pick]), np.stack([s[target] for s in pick]))
    return out


__all__ = ["data_dir", "have_data", "load_cine", "load_qmrlab", "qmrlab_slices", "cine_training_images",
           "multicontrast_training_pairs", "multicontrast_evaluation_pairs", "load_tcga", "tcga_axial_slices",
           "TRAINING_TCGA", "VALIDATION_TCGA"]
