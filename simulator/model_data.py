"""The real images in ``../shared/data`` as training and evaluation inputs for the networks.

Located relative to the repository (``<repo>/../shared/data``) or by the
``STREAMRECON_DATA`` environment variable. Every loader returns float32
magnitude arrays (the files hold magnitude images); simulation of phase,
coils and undersampling happens in ``models.training_data``.

Splits, fixed so nothing evaluated is trained on:
- cine evaluation: ``cine/giraf_sax_cine25.mat`` (192 x 156 x 25), never used
  for training;
- multi-contrast evaluation: the CDLMRI slices (``patientA`` T1 -> T2;
  ``T2_FLAIR_T1pre_T1post.mat`` T1_pre -> T2 and T1_pre -> FLAIR);
- training: qMRLab volumes (T1w, PDw, MTw) for both networks (cine: their
  slices put in periodic motion; multi-contrast: T1w guides PDw and MTw).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def data_dir() -> Path:
    """``$STREAMRECON_DATA`` or ``../shared/data`` beside the repository (one definition: :mod:`simulator.images`)."""
    from simulator.images import shared_data_dir

    return shared_data_dir()


def have_data() -> bool:
    return (data_dir() / "cine" / "giraf_sax_cine25.mat").exists()


def load_cine() -> np.ndarray:
    """The held-out real cine, ``(25, 192, 156)`` float32 (frames first), max 1."""
    from scipy.io import loadmat
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
    import h5py
    patients = [p for p in SUNNYBROOK_PATIENTS if p not in SUNNYBROOK_VALIDATION] if patients is None else list(patients)
    out: dict[str, list[np.ndarray]] = {}
    with h5py.File(data_dir() / "cine" / "sunnybrook_sax_cine.h5", "r") as f:
        for name in patients:
            if name not in f:
                raise KeyError(f"{name} is not in sunnybrook_sax_cine.h5 (has {', '.join(f)})")
            vol = np.asarray(f[name], dtype=np.float32)  # (slices, frames, ny, nx)
            out[name] = [s / max(float(np.percentile(s, 99.5)), 1e-6) for s in vol]
    return out


def load_qmrlab() -> dict[str, np.ndarray]:
    """``{"T1w", "PDw", "MTw"}`` -> ``(128, 128, 96)`` float32 volumes (co-registered)."""
    import nibabel as nib
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


def multicontrast_training_pairs(step: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """(reference, target) slices: T1w guides PDw and T1w guides MTw (qMRLab), all three axes."""
    vols = load_qmrlab()
    pairs = []
    for target in ("PDw", "MTw"):
        # same slice selection as T1w: select with the T1w energy so pairs stay co-registered
        for axis in range(3):
            ref_sl, tgt_sl = np.moveaxis(vols["T1w"], axis, 0), np.moveaxis(vols[target], axis, 0)
            energy = ref_sl.reshape(ref_sl.shape[0], -1).sum(1)
            idx = np.nonzero(energy >= 0.25 * energy.max())[0][::step]
            pairs += [(np.ascontiguousarray(ref_sl[i]), np.ascontiguousarray(tgt_sl[i])) for i in idx]
    return pairs


def multicontrast_evaluation_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CDLMRI evaluation pairs ``name -> (reference, target)``, 256 x 256 float32, each max 1."""
    from PIL import Image
    from scipy.io import loadmat
    d = data_dir() / "multicontrast"

    def norm(a):
        a = np.asarray(a, dtype=np.float32)
        return a / max(float(a.max()), 1e-6)

    def png(name):
        im = Image.open(d / name)
        return norm(np.asarray(im.convert("L")))

    mat = loadmat(str(d / "T2_FLAIR_T1pre_T1post.mat"))
    return {
        "patientA_T1->T2": (png("patientA_groundtruth_T1.png"), png("patientA_groundtruth_T2.png")),
        "tumour_T1pre->T2": (norm(mat["T1_pre"]), norm(mat["T2"])),
        "tumour_T1pre->FLAIR": (norm(mat["T1_pre"]), norm(mat["FLAIR"])),
    }


__all__ = ["data_dir", "have_data", "load_cine", "load_qmrlab", "qmrlab_slices", "cine_training_images",
           "multicontrast_training_pairs", "multicontrast_evaluation_pairs"]
