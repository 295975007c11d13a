"""``load_source``: one entry point from a command-line SOURCE to Scans.

SOURCE is a built-in phantom name (``cine``, ``brain``), a file (ISMRMRD or
fastMRI/M4Raw .h5, CMRxRecon or image .mat, NIfTI, PNG, .npy), a folder of
M4Raw files (paired by study id), or two image files joined by ``+``
(``reference+target``) for a multi-contrast exam. The result is always a
list of Scans: one for a single scan, ``[reference, target]`` for an exam.
"""
from __future__ import annotations

from pathlib import Path

import h5py

from .images import IMAGE_SUFFIXES, _suffix, image_pair_scans, scan_from_image_file
from .readers import pair_m4raw, read_cmrxrecon, read_fastmri, read_ismrmrd, read_m4raw_pair, read_mat_arrays
from .scan import Scan, phantom_scan

PHANTOMS = ("cine", "brain")

# Keyword arguments each kind of source understands (others are ignored, so
# one command line can carry options for any source).
_PHANTOM_KW = {"ny", "nx", "frames", "slices", "n_coils", "seed", "noise_std", "frame_ms", "time_dimension", "readout_oversampling"}
_IMAGE_KW = {"n_coils", "seed", "noise_std", "frame_ms", "time_dimension", "readout_oversampling", "matrix", "variable",
             "slice_index", "max_frames"}
_CMRX_KW = {"key", "readout_oversampling", "frame_ms", "mask_path"}


def _only(kw: dict, allowed: set[str]) -> dict:
    return {k: v for k, v in kw.items() if k in allowed and v is not None}


def _is_cmrxrecon(path: Path) -> bool:
    try:
        return any(k.startswith("kspace") or k == "kus" for k in read_mat_arrays(path))
    except Exception:
        return False


def load_source(source: str, **kw) -> list[Scan]:
    """Scans for ``source`` (module docstring); ``kw`` are reader options, filtered per kind."""
    name = source.removeprefix("phantom:")
    if name in PHANTOMS and not Path(source).exists():
        out = phantom_scan(name, **_only(kw, _PHANTOM_KW))
        return out if isinstance(out, list) else [out]
    if "+" in source and not Path(source).exists():
        ref, tgt = source.split("+", 1)
        return image_pair_scans(ref, tgt, **_only(kw, _IMAGE_KW - {"variable", "max_frames", "frame_ms", "time_dimension"}))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{source}: neither a file, a folder nor a phantom ({', '.join(PHANTOMS)})")
    if path.is_dir():
        if pair_m4raw(path):
            return read_m4raw_pair(path)
        raise ValueError(f"{path}: folder holds no M4Raw study (<study>_<T1|T2|FLAIR><n>.h5); give a file")
    suf = _suffix(path)
    if suf == ".h5":
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
        if "kspace" in keys:
            return [read_fastmri(path)]
        if "dataset" in keys:
            return read_ismrmrd(path)
        raise ValueError(f"{path}: an .h5 file that is neither fastMRI (kspace) nor ISMRMRD (dataset)")
    if suf == ".mat" and _is_cmrxrecon(path):
        return [read_cmrxrecon(path, **_only(kw, _CMRX_KW))]
    if suf in IMAGE_SUFFIXES:
        return [scan_from_image_file(path, **_only(kw, _IMAGE_KW))]
    raise ValueError(f"{path}: unknown file type {suf!r}")


__all__ = ["load_source", "PHANTOMS"]
