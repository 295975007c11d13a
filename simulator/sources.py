"""``load_source``: one entry point from a command-line SOURCE to Scans.

SOURCE is a built-in phantom name (``cine``, ``brain``), a file (ISMRMRD or
fastMRI/M4Raw .h5, an image .h5 such as the shared Sunnybrook file,
CMRxRecon or image .mat, NIfTI, PNG, .npy), a folder of DICOM images (one
series) or of M4Raw files (paired by study id), or two of these joined by
``+`` (``reference+target``) for a multi-contrast exam. The result is always
a list of Scans: one for a single scan, ``[reference, target]`` for an exam.

A selector after the path picks inside it (:func:`split_selector`):
``FILE.h5:DATASET[:SLICE]``, ``FOLDER:SERIES[:SLICE]``, ``FILE.mat:VARIABLE``,
``FILE.nii.gz:SLICE``; SLICE is an index from 0 or ``all``.
"""
from __future__ import annotations

from pathlib import Path

import h5py

from .image_series import dicom_files, read_dicom_series, read_h5_series, scan_from_series
from .images import IMAGE_SUFFIXES, file_suffix, image_pair_scans, scan_from_image_file
from .readers import pair_m4raw, read_cmrxrecon, read_fastmri, read_ismrmrd, read_m4raw_pair, read_mat_arrays
from .scan import Scan, dicom_uid, phantom_scan

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


def split_selector(source: str) -> tuple[str, list[str]]:
    """``"file.h5:SCD0000501:4"`` -> ``("file.h5", ["SCD0000501", "4"])``: the longest existing path, then
    what follows it, split at ``:``. A source that exists as it is has no selector."""
    if Path(source).exists() or ":" not in source:
        return source, []
    parts = source.split(":")
    for cut in range(len(parts) - 1, 0, -1):
        head = ":".join(parts[:cut])
        if Path(head).exists():
            return head, parts[cut:]
    return source, []


def _h5_keys(path: Path) -> set[str]:
    try:
        with h5py.File(path, "r") as f:
            return set(f.keys())
    except OSError as exc:  # h5py's own text names neither the file nor what it expected
        raise ValueError(f"{path}: not an HDF5 file (ISMRMRD, fastMRI or image .h5): {exc}") from None


def _image_series_kw(kw: dict) -> dict:
    return _only(kw, _IMAGE_KW - {"variable", "slice_index", "matrix", "max_frames"})


def load_source(source: str, **kw) -> list[Scan]:
    """Scans for ``source`` (module docstring); ``kw`` are reader options, filtered per kind."""
    name = source.removeprefix("phantom:")
    if name in PHANTOMS and not Path(source).exists():
        out = phantom_scan(name, **_only(kw, _PHANTOM_KW))
        return out if isinstance(out, list) else [out]
    if "+" in source and not Path(source).exists():
        ref, tgt = source.split("+", 1)
        pair_kw = dict(kw, time_dimension=None, frame_ms=None, max_frames=None)
        if all(file_suffix(Path(split_selector(p)[0])) in IMAGE_SUFFIXES and not split_selector(p)[1] for p in (ref, tgt)):
            return image_pair_scans(ref, tgt, **_only(pair_kw, _IMAGE_KW - {"variable"}))
        return pair_from_sources(ref, tgt, **pair_kw)
    source, selector = split_selector(source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{source}: neither a file, a folder nor a phantom ({', '.join(PHANTOMS)})")
    first = selector[0] if selector else None
    second = selector[1] if len(selector) > 1 else None
    if path.is_dir():
        if pair_m4raw(path):
            return read_m4raw_pair(path)
        if dicom_files(path):
            series = read_dicom_series(path, first, second, max_frames=kw.get("max_frames"))
            return [_announce(scan_from_series(series, **_image_series_kw(kw)), series.notes)]
        raise ValueError(f"{path}: a folder with neither DICOM images nor an M4Raw study "
                         "(<study>_<T1|T2|FLAIR><n>.h5); give a file or a DICOM series folder")
    suf = file_suffix(path)
    if suf == ".h5":
        keys = _h5_keys(path)
        if "kspace" in keys:
            return [read_fastmri(path)]
        if "dataset" in keys:
            return read_ismrmrd(path)
        series = read_h5_series(path, first, second, max_frames=kw.get("max_frames"))
        return [_announce(scan_from_series(series, **_image_series_kw(kw)), series.notes)]
    if suf == ".mat" and _is_cmrxrecon(path):
        return [read_cmrxrecon(path, **_only(kw, _CMRX_KW))]
    if suf in IMAGE_SUFFIXES:
        if first is not None:
            if suf == ".mat":
                kw = dict(kw, variable=first)
            elif suf in (".nii", ".nii.gz"):
                kw = dict(kw, slice_index=int(first))
        return [scan_from_image_file(path, **_only(kw, _IMAGE_KW))]
    raise ValueError(f"{path}: unknown file type {suf!r}")


def _announce(scan: Scan, notes: list[str]) -> Scan:
    """Keep what a reader chose for the user (a dataset, a slice) on the scan, for replay to print."""
    scan.notes = list(notes)
    return scan



def pair_from_sources(reference: str, target: str, **kw) -> list[Scan]:
    """Two single-frame sources of any kind (``FILE.mat:T1_pre``, a DICOM folder, ...) as
    ``[reference (contrast 0), target (contrast 1)]`` of one exam: same coils, same frame of reference."""
    scans = []
    for c, src in enumerate((reference, target)):
        one = load_source(src, **dict(kw, seed=kw.get("seed", 0)))
        if len(one) != 1 or one[0].raw is not None:
            raise ValueError(f"{src}: a pair takes two image sources (one scan each)")
        scans.append(one[0])
    for_uid = dicom_uid(str(reference), int(kw.get("seed") or 0), "for")
    for c, scan in enumerate(scans):
        scan.contrast, scan.frame_of_reference_uid = c, for_uid
        scan.kspace, scan.reference = scan.kspace[:, :1], scan.reference[:, :1]
    if scans[0].recon_shape != scans[1].recon_shape:
        raise ValueError(f"{reference} {scans[0].recon_shape} and {target} {scans[1].recon_shape}: a pair needs one matrix")
    return scans


__all__ = ["load_source", "split_selector", "pair_from_sources", "PHANTOMS"]
