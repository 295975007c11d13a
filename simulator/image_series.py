"""Magnitude image series that carry their own geometry: DICOM series folders and image HDF5 files.

How most sites hold a cine: a folder of DICOM files (one file per image,
any names), or an HDF5 file of magnitude arrays such as the shared
Sunnybrook file (one dataset per patient, ``(slices, frames, rows, cols)``,
attributes ``pixel_spacing_mm``, ``slice_locations_mm``,
``trigger_times_ms``). Both become an :class:`ImageSeries`: magnitude
frames plus the pixel spacing, slice positions, orientation and trigger
times they were stored with, which :func:`scan_from_series` keeps in the
simulated scan (so PixelSpacing and TriggerTime survive a replay into
DICOM).

Selecting inside a source: ``FOLDER[:SERIES[:SLICE]]`` and
``FILE.h5[:DATASET[:SLICE]]`` (:func:`simulator.sources.split_selector`);
SERIES is a DICOM SeriesNumber, SLICE an index from 0 or ``all``. By
default: the only series (several are refused with their list), the first
dataset, the middle slice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .scan import Scan, dicom_uid, scan_from_images, square_fov_mm


@dataclass
class ImageSeries:
    """Magnitude frames ``(slices, frames, ny, nx)`` float32 (maximum 1) and where they are."""

    frames: np.ndarray
    name: str
    pixel_mm: tuple[float, float] | None = None  # (row spacing dy, column spacing dx)
    thickness_mm: float | None = None
    positions_mm: np.ndarray | None = None        # (slices, 3) image centres
    read_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    phase_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    trigger_times_ms: np.ndarray | None = None   # (frames,)
    notes: list[str] = field(default_factory=list)  # what was chosen for the user (printed by replay)

    @property
    def frame_ms(self) -> float | None:
        t = self.trigger_times_ms
        if t is None or len(t) < 2:
            return None
        step = float(np.median(np.diff(np.asarray(t, dtype=np.float64))))
        return step if step > 0 else None


def _slice_choice(n: int, choice: str | None, what: str) -> list[int]:
    if choice is None:
        return [n // 2]
    if choice == "all":
        return list(range(n))
    try:
        index = int(choice)
    except ValueError:
        raise ValueError(f"{what}: slice {choice!r} is neither an index nor 'all'") from None
    if not 0 <= index < n:
        raise ValueError(f"{what}: slice {index} does not exist (it has {n}: 0..{n - 1})")
    return [index]


def _normalised(frames: np.ndarray, what: str) -> np.ndarray:
    frames = np.abs(np.asarray(frames, dtype=np.float32))
    if not np.isfinite(frames).all():
        raise ValueError(f"{what}: holds NaN or infinite values")
    peak = float(frames.max()) if frames.size else 0.0
    if peak <= 0:
        raise ValueError(f"{what}: holds only zeros: nothing to reconstruct or score")
    return frames / peak


# -- image HDF5 (the shared Sunnybrook file and any file laid out like it) -------


def image_h5_datasets(path: str | Path) -> list[str]:
    """The names of the image datasets (2-D to 4-D, numeric) of an HDF5 file."""
    names: list[str] = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and 2 <= obj.ndim <= 4 and np.issubdtype(obj.dtype, np.number):
                names.append(name)
        f.visititems(visit)
    return names


def read_h5_series(path: str | Path, dataset: str | None = None, slice_choice: str | None = None,
                   max_frames: int | None = None) -> ImageSeries:
    """One dataset of an image HDF5 file: ``(slices, frames, rows, cols)``, ``(frames, rows, cols)`` or 2-D."""
    path = Path(path)
    names = image_h5_datasets(path)
    if not names:
        raise ValueError(f"{path}: an HDF5 file with no image dataset (2-D to 4-D numbers), "
                         "and neither fastMRI (kspace) nor ISMRMRD (dataset)")
    notes = []
    if dataset is None:
        dataset = names[0]
        if len(names) > 1:
            notes.append(f"{path.name}: dataset {dataset} (of {len(names)}: {', '.join(names[:8])}"
                         f"{' ...' if len(names) > 8 else ''}); {path.name}:DATASET picks another")
    if dataset not in names:
        raise ValueError(f"{path}: no image dataset {dataset!r}; has {', '.join(names)}")
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        attrs = dict(ds.attrs)
        shape, ndim = ds.shape, ds.ndim
        cube = (None,) * (4 - ds.ndim)  # read as (slices, frames, rows, cols)
        n_slices = shape[0] if ds.ndim == 4 else 1
        chosen = _slice_choice(n_slices, slice_choice, f"{path.name}:{dataset}")
        if ds.ndim == 4:
            frames = np.stack([np.asarray(ds[s, :max_frames]) for s in chosen])
        else:
            frames = np.asarray(ds[()])[cube]
            frames = frames[:, :max_frames]
    if ndim == 4 and slice_choice is None and n_slices > 1:
        notes.append(f"{path.name}:{dataset}: slice {chosen[0]} of {n_slices} (0..{n_slices - 1}); "
                     f"{path.name}:{dataset}:SLICE picks another, :all every one")
    spacing = attrs.get("pixel_spacing_mm")
    locations = attrs.get("slice_locations_mm")
    trig = attrs.get("trigger_times_ms")
    positions = None
    if locations is not None and len(np.ravel(locations)) == n_slices:
        positions = np.zeros((len(chosen), 3), dtype=np.float32)
        positions[:, 2] = np.ravel(locations)[chosen]
    if trig is not None:
        trig = np.asarray(trig, dtype=np.float64)
        trig = (trig[chosen[0]] if trig.ndim == 2 else trig)[: frames.shape[1]]
    del shape
    thickness = None
    if locations is not None and len(np.ravel(locations)) > 1:
        thickness = float(np.median(np.abs(np.diff(np.ravel(locations)))))
    return ImageSeries(
        frames=_normalised(frames, f"{path}:{dataset}"), name=f"{path.stem}_{dataset.replace('/', '_')}",
        pixel_mm=(float(spacing[0]), float(spacing[1])) if spacing is not None and len(spacing) == 2 else None,
        thickness_mm=thickness, positions_mm=positions, trigger_times_ms=trig, notes=notes)


# -- DICOM series folders ------------------------------------------------------------


def _pydicom():
    try:
        import pydicom  # optional (pip install 'streamrecon[dicom]'): only DICOM sources need it
    except ImportError:
        raise ValueError("reading DICOM needs pydicom: pip install 'streamrecon[dicom]'") from None
    return pydicom


def dicom_files(folder: str | Path) -> list:
    """Every DICOM image in ``folder`` (not its subfolders), whatever the file names; others are skipped."""
    pydicom = _pydicom()
    out = []
    for p in sorted(Path(folder).iterdir()):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # not DICOM (a README, a DICOMDIR's neighbours): not part of the series
            continue
        if "Rows" in ds and "Columns" in ds and getattr(ds, "SeriesInstanceUID", None):
            out.append((p, ds))
    return out


def _series_label(ds) -> str:
    return f"{getattr(ds, 'SeriesNumber', '?')} ({getattr(ds, 'SeriesDescription', '') or 'no description'})"


def read_dicom_series(folder: str | Path, series: str | None = None, slice_choice: str | None = None,
                      max_frames: int | None = None) -> ImageSeries:
    """A DICOM series folder as magnitude frames with its PixelSpacing, orientation, positions and TriggerTime.

    Slices are the distinct image positions along the slice normal; within
    a slice the frames are ordered by TriggerTime, else InstanceNumber.
    Stored values go through the modality LUT (RescaleSlope/Intercept).
    """
    pydicom = _pydicom()
    from pydicom.pixels import apply_modality_lut  # pydicom is optional: _pydicom() said so if it is missing

    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise ValueError(f"{folder}: a folder with no DICOM images")
    by_series: dict[str, list] = {}
    for p, ds in files:
        by_series.setdefault(str(getattr(ds, "SeriesNumber", "")) or ds.SeriesInstanceUID, []).append((p, ds))
    if series is None:
        if len(by_series) > 1:
            listed = ", ".join(_series_label(v[0][1]) for v in by_series.values())
            raise ValueError(f"{folder}: holds {len(by_series)} DICOM series ({listed}); pick one: {folder}:SERIESNUMBER")
        series = next(iter(by_series))
    if series not in by_series:
        raise ValueError(f"{folder}: no DICOM series {series!r}; has "
                         + ", ".join(_series_label(v[0][1]) for v in by_series.values()))
    members = by_series[series]
    first = members[0][1]
    orient = np.asarray(getattr(first, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=np.float64)
    row_dir, col_dir = orient[:3], orient[3:]
    normal = np.cross(row_dir, col_dir)
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in members}
    if len(shapes) > 1:
        raise ValueError(f"{folder}: series {series} mixes image sizes {sorted(shapes)}")

    def where(ds) -> float:
        pos = getattr(ds, "ImagePositionPatient", None)
        if pos is not None:
            return round(float(np.dot(np.asarray(pos, dtype=np.float64), normal)), 3)
        return round(float(getattr(ds, "SliceLocation", 0.0)), 3)

    slices: dict[float, list] = {}
    for p, ds in members:
        slices.setdefault(where(ds), []).append((p, ds))
    locations = sorted(slices)
    chosen = _slice_choice(len(locations), slice_choice, f"{folder}:{series}")
    notes = []
    if slice_choice is None and len(locations) > 1:
        notes.append(f"{folder.name}: slice {chosen[0]} of {len(locations)} (0..{len(locations) - 1}); "
                     f"{folder.name}:{series}:SLICE picks another, :all every one")

    def order(item) -> tuple:
        ds = item[1]
        return (float(getattr(ds, "TriggerTime", 0.0) or 0.0), int(getattr(ds, "InstanceNumber", 0) or 0))

    stacks, trig, positions = [], None, []
    counts = {len(slices[locations[i]]) for i in chosen}
    n_frames = min(counts)
    if len(counts) > 1:
        notes.append(f"{folder.name}: slices have {sorted(counts)} frames; the first {n_frames} of each are used")
    n_frames = min(n_frames, max_frames or n_frames)
    spacing = getattr(first, "PixelSpacing", None)
    dy, dx = (float(spacing[0]), float(spacing[1])) if spacing is not None else (1.0, 1.0)
    ny, nx = int(first.Rows), int(first.Columns)
    for i in chosen:
        items = sorted(slices[locations[i]], key=order)[:n_frames]
        frames = []
        for p, _ in items:
            ds = pydicom.dcmread(p)
            frames.append(np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32))
        stacks.append(np.stack(frames))
        ds0 = items[0][1]
        corner = np.asarray(getattr(ds0, "ImagePositionPatient", [0, 0, locations[i]]), dtype=np.float64)
        # DICOM's position is the centre of the first pixel; ISMRMRD's the centre of the image.
        positions.append(corner + row_dir * dx * (nx / 2 - 0.5) + col_dir * dy * (ny / 2 - 0.5))
        if trig is None and all(getattr(d, "TriggerTime", None) not in (None, "") for _, d in items):
            trig = np.asarray([float(d.TriggerTime) for _, d in items])
    thickness = getattr(first, "SliceThickness", None)
    return ImageSeries(
        frames=_normalised(np.stack(stacks), f"{folder}:{series}"), name=f"{folder.name}_s{series}",
        pixel_mm=(dy, dx) if spacing is not None else None,
        thickness_mm=float(thickness) if thickness not in (None, "") else None,
        positions_mm=np.asarray(positions, dtype=np.float32),
        read_dir=tuple(float(v) for v in row_dir), phase_dir=tuple(float(v) for v in col_dir),
        trigger_times_ms=trig, notes=notes)


# -- into a simulated scan -----------------------------------------------------------------


def scan_from_series(series: ImageSeries, **kw) -> Scan:
    """The series as a fully sampled multi-coil scan (:func:`simulator.scan.scan_from_images`) that keeps its
    geometry: field of view from the pixel spacing, slice positions, orientation, frame time and trigger times."""
    frames = series.frames
    _, _, ny, nx = frames.shape
    if series.frame_ms is not None:
        kw.setdefault("frame_ms", series.frame_ms)
    if series.trigger_times_ms is not None and not kw.get("time_dimension"):
        kw["time_dimension"] = "phase"  # stored with trigger times: an ECG-gated cine
    kw.setdefault("name", series.name)
    kw.setdefault("frame_of_reference_uid", dicom_uid(series.name, int(kw.get("seed", 0)), "for"))
    scan = scan_from_images(frames, fov_mm=square_fov_mm(ny, nx, series.pixel_mm, series.thickness_mm), **kw)
    if series.positions_mm is not None:
        scan.slice_positions_mm = np.asarray(series.positions_mm, dtype=np.float32).reshape(scan.slices, 3)
    scan.read_dir, scan.phase_dir = series.read_dir, series.phase_dir
    scan.slice_dir = tuple(float(v) for v in np.cross(series.read_dir, series.phase_dir))
    if series.trigger_times_ms is not None:
        scan.trigger_times_ms = np.asarray(series.trigger_times_ms, dtype=np.float64)[: scan.frames]
    return scan


__all__ = ["ImageSeries", "read_h5_series", "read_dicom_series", "dicom_files", "image_h5_datasets",
           "scan_from_series"]
