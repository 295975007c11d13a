"""Images (magnitude) as scanner data: real MRI pictures, NIfTI volumes, .mat arrays.

The real images in ``../shared/data`` (see its README) and any user file:
the magnitude is normalised to a maximum of 1, optionally resized, given a
smooth synthetic phase, multiplied by synthetic coil maps, Fourier
transformed and optionally made noisy (:func:`simulator.scan.scan_from_images`).
"""
from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
from PIL import Image

from .readers import read_mat_arrays
from .scan import Scan, dicom_uid, scan_from_images, square_fov_mm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz", ".npy", ".mat")


def file_suffix(path: Path) -> str:
    """The lower-case suffix that says a file's format, ``.nii.gz`` as one."""
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix.lower()


def _resize(frames: np.ndarray, matrix: tuple[int, int]) -> np.ndarray:
    out = [np.asarray(Image.fromarray(f.astype(np.float32), mode="F").resize((matrix[1], matrix[0]), Image.BICUBIC)) for f in frames]
    return np.clip(np.stack(out), 0, None)


MIN_IMAGE_SIDE = 8


def _check_image_shape(path: Path, a: np.ndarray, *, frames_first: bool) -> None:
    """An image is 2-D ``(ny, nx)`` or a 3-D cine, big enough to reconstruct and score."""
    if a.ndim not in (2, 3):
        raise ValueError(f"{path}: a {a.ndim}-D array {a.shape} is not an image (2-D, or a 3-D cine)")
    sides = a.shape[-2:] if frames_first or a.ndim == 2 else a.shape[:2]
    if min(sides) == 1:
        raise ValueError(f"{path}: array {a.shape} is a vector, not an image (2-D, or a 3-D cine)")
    if min(sides) < MIN_IMAGE_SIDE:
        raise ValueError(f"{path}: array {a.shape} is too small for an image (each side at least {MIN_IMAGE_SIDE})")
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: array holds NaN or infinite values")
    if not a.any():
        raise ValueError(f"{path}: array holds only zeros: nothing to reconstruct or score")


def read_image_file(path: str | Path, *, variable: str | None = None, slice_index: int | None = None,
                    matrix: int | tuple[int, int] | None = None, max_frames: int | None = None) -> np.ndarray:
    """Magnitude frames ``(frames, ny, nx)`` float32 with maximum 1.

    - PNG/JPEG/...: one grey frame (colour converted to luminance);
    - NIfTI: a 3-D volume gives its axial slice ``slice_index`` (default
      middle) rotated to radiological display; 4-D takes the last axis as time;
    - .mat: ``variable`` (default: the largest numeric array); a 3-D array
      ``(ny, nx, frames)`` is a cine (as ``giraf_sax_cine25.mat``);
    - .npy: 2-D or ``(frames, ny, nx)``.
    ``matrix`` resizes (bicubic) to ``n`` x ``n`` or ``(ny, nx)``.
    """
    path = Path(path)
    suf = file_suffix(path)
    if suf in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        arr = np.asarray(Image.open(path).convert("L"), dtype=np.float32)[None]
    elif suf in (".nii", ".nii.gz"):
        vol = np.asarray(nibabel.load(str(path)).get_fdata(dtype=np.float32))
        if vol.ndim == 3:
            z = vol.shape[2] // 2 if slice_index is None else slice_index
            arr = np.rot90(vol[:, :, z])[None]
        elif vol.ndim == 4:
            z = vol.shape[2] // 2 if slice_index is None else slice_index
            arr = np.stack([np.rot90(vol[:, :, z, t]) for t in range(vol.shape[3])])
        else:
            arr = vol[None] if vol.ndim == 2 else vol
    elif suf == ".mat":
        arrays = read_mat_arrays(path)
        if not arrays:
            raise ValueError(f"{path}: holds no numeric array (only text, cells or structs)")
        if variable is None:
            variable = max(arrays, key=lambda k: arrays[k].size)
        if variable not in arrays:
            raise ValueError(f"{path}: no numeric variable {variable!r}; has {sorted(arrays)}")
        a = np.abs(np.transpose(arrays[variable])).astype(np.float32)  # back to MATLAB order (ny, nx[, frames])
        _check_image_shape(path, a, frames_first=False)
        arr = np.moveaxis(a, -1, 0) if a.ndim == 3 else a[None]
    elif suf == ".npy":
        try:
            loaded = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{path}: not a numeric NumPy array file: {exc}") from None
        if not np.issubdtype(loaded.dtype, np.number):
            raise ValueError(f"{path}: holds {loaded.dtype} data, not numbers")
        a = np.abs(loaded).astype(np.float32)
        _check_image_shape(path, a, frames_first=True)
        arr = a[None] if a.ndim == 2 else a
    else:
        raise ValueError(f"{path}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if max_frames is not None:
        arr = arr[:max_frames]
    if matrix is not None:
        arr = _resize(arr, (matrix, matrix) if isinstance(matrix, int) else tuple(matrix))
    return (arr / max(float(arr.max()), 1e-12)).astype(np.float32)


def image_file_geometry(path: str | Path) -> tuple[tuple[float, float] | None, float | None]:
    """``(pixel spacing (dy, dx), slice thickness)`` in mm of an image file as :func:`read_image_file`
    shows it, when the file says (NIfTI); ``(None, None)`` for PNG, .mat, .npy."""
    path = Path(path)
    if file_suffix(path) not in (".nii", ".nii.gz"):
        return None, None

    zooms = [float(z) for z in nibabel.load(str(path)).header.get_zooms()[:3]]
    if len(zooms) < 2:
        return None, None
    # read_image_file shows np.rot90(vol[:, :, z]): rows run along the volume's second axis.
    return (zooms[1], zooms[0]), (zooms[2] if len(zooms) > 2 else None)


def scan_from_image_file(path: str | Path, *, variable: str | None = None, slice_index: int | None = None,
                         matrix: int | tuple[int, int] | None = None, max_frames: int | None = None, **kw) -> Scan:
    """An image file as a fully sampled multi-coil Scan; ``kw`` go to :func:`scan_from_images`.

    A multi-frame file (a cine) is a real-time series by default. The field
    of view comes from the file's pixel spacing when it has one (NIfTI),
    else the pixels are square (:func:`simulator.scan.square_fov_mm`).
    """
    frames = read_image_file(path, variable=variable, slice_index=slice_index, matrix=matrix, max_frames=max_frames)
    kw.setdefault("name", Path(path).name.split(".")[0])
    if "fov_mm" not in kw:
        pixel, thickness = image_file_geometry(path)
        if pixel is not None and matrix is not None:
            # Resizing keeps the field of view: the pixels grow or shrink instead.
            shown = read_image_file(path, variable=variable, slice_index=slice_index, max_frames=1).shape[-2:]
            pixel = (pixel[0] * shown[0] / frames.shape[-2], pixel[1] * shown[1] / frames.shape[-1])
        kw["fov_mm"] = square_fov_mm(*frames.shape[-2:], pixel, thickness)
    return scan_from_images(frames[None], **kw)


def image_pair_scans(reference: str | Path, target: str | Path, *, variables: tuple[str | None, str | None] = (None, None),
                     **kw) -> list[Scan]:
    """Two co-registered image files as ``[reference (contrast 0), target (contrast 1)]`` of one exam.

    Same coils and frame of reference, separate measurements, separate phases.
    """
    seed = kw.pop("seed", 0)
    matrix = kw.pop("matrix", None)
    slice_index = kw.pop("slice_index", None)
    for_uid = dicom_uid(str(Path(reference).resolve()), seed, "for")
    out = []
    for c, (p, var) in enumerate(zip((reference, target), variables)):
        frames = read_image_file(p, variable=var, matrix=matrix, slice_index=slice_index)
        out.append(scan_from_images(frames[None], seed=seed, contrast=c, name=f"{Path(p).name.split('.')[0]}",
                                    frame_of_reference_uid=for_uid, phase_rad=0.5 * np.pi, **kw))
    # Separate scans get separate smooth phases (the coils stay: same seed).
    return out


__all__ = ["read_image_file", "scan_from_image_file", "image_pair_scans", "IMAGE_SUFFIXES"]
