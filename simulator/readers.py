"""Dataset readers: files become fully sampled :class:`~simulator.scan.Scan` objects.

Formats (all read with h5py / ismrmrd / scipy / nibabel / Pillow):

- ISMRMRD .h5 (``/dataset/xml`` + ``/dataset/data``), any slices, phases or
  repetitions, contrasts (one Scan per contrast);
- fastMRI .h5 (knee, brain; M4Raw uses the same layout): ``kspace``
  ``(slices, coils, H, W)`` or ``(slices, H, W)`` with ``H`` the (2x
  oversampled) readout and ``W`` the phase encode, ``ismrmrd_header`` XML
  whose ``kspace_encoding_step_1`` centre/maximum locate the acquired
  columns (the rest is zero padding, never sent);
- CMRxRecon .mat, v7.3 (HDF5; complex as a ``real``/``imag`` compound; axes
  reversed: h5py sees ``(t, z, coils, ky, kx)``) and v5 (scipy; MATLAB
  order ``(kx, ky, coils, z, t)``): 2023 (``kspace_full``,
  ``kspace_sub04/08/10``, ``mask04/08/10``) and 2024 (``kspace_full``,
  ``kus``, ``mask``) layouts;
- images (.mat, .nii/.nii.gz, .png/.jpg, .npy): see :mod:`simulator.images`.

Array convention inside a Scan: rows are phase encode (ky), columns the
readout (kx), so fastMRI arrays (readout first) are transposed on reading.
References for measured data are root-sum-of-squares magnitudes on the
recon matrix (centre crop), as fastMRI and CMRxRecon evaluate.
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path

import h5py
import ismrmrd
import ismrmrd.xsd
import numpy as np
from scipy.io import loadmat

from gadgets.header import oversampling_factor, time_dimension
from models.coils import rss
from models.fft import ifft2c
from models.masks import line_mask_from_array

from .scan import RawStream, Scan, dicom_uid

# -- helpers -----------------------------------------------------------------


def center_crop(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre crop of the last two axes to ``shape`` (centres at ``n // 2`` stay centred)."""
    ny, nx = x.shape[-2:]
    cy, cx = shape
    y0, x0 = ny // 2 - cy // 2, nx // 2 - cx // 2
    return x[..., y0:y0 + cy, x0:x0 + cx]


def rss_reference(kspace: np.ndarray, recon_shape: tuple[int, int]) -> np.ndarray:
    """RSS magnitude of ``(..., coils, ky, kx)`` k-space, centre-cropped to ``recon_shape``, complex64."""
    img = rss(ifft2c(kspace), axis=-3)
    return center_crop(img, recon_shape).astype(np.complex64)


def _oversampling(hdr: ismrmrd.xsd.ismrmrdHeader, kx: int, path: str | Path) -> int:
    """The header's readout oversampling (:func:`gadgets.header.oversampling_factor`) as the whole
    number a :class:`Scan` holds; a ratio that is not one, or does not divide the readout, is refused."""
    factor = oversampling_factor(hdr)
    whole = int(round(factor))
    if abs(factor - whole) > 1e-3 or kx % whole:
        raise ValueError(f"{path}: readout oversampling {factor:g} (encoded / recon field of view) with {kx}-sample "
                         f"readouts; replay handles whole factors that divide the readout")
    return whole


def _geometry_from_header(hdr: ismrmrd.xsd.ismrmrdHeader) -> dict:
    enc = hdr.encoding[0]
    rf = enc.reconSpace.fieldOfView_mm
    mi = hdr.measurementInformation
    out = {"fov_mm": (float(rf.x), float(rf.y), float(rf.z))}
    if mi is not None:
        if mi.measurementID:
            out["measurement_id"] = mi.measurementID
        if mi.frameOfReferenceUID:
            out["frame_of_reference_uid"] = mi.frameOfReferenceUID
        if mi.protocolName:
            out["protocol_name"] = mi.protocolName
    if hdr.acquisitionSystemInformation is not None and hdr.acquisitionSystemInformation.systemFieldStrength_T:
        out["field_strength_t"] = float(hdr.acquisitionSystemInformation.systemFieldStrength_T)
    return out


# -- ISMRMRD .h5 ---------------------------------------------------------------

_SKIP_FLAGS = (ismrmrd.ACQ_IS_NOISE_MEASUREMENT, ismrmrd.ACQ_IS_NAVIGATION_DATA, ismrmrd.ACQ_IS_PHASECORR_DATA,
               ismrmrd.ACQ_IS_PARALLEL_CALIBRATION, ismrmrd.ACQ_IS_DUMMYSCAN_DATA)


def read_ismrmrd(path: str | Path, *, dataset: str = "dataset") -> list[Scan]:
    """An ISMRMRD .h5 file as one :class:`Scan` per contrast.

    Imaging readouts are re-gridded by their counters (noise, navigator,
    phase-correction and calibration-only readouts are skipped); frames come
    from ``idx.phase`` (gated) or ``idx.repetition`` (real time), whichever
    the header's limits (or the data) use. An undersampled file keeps its
    missing lines zero and says which lines it has (``scan.acquired``);
    every Scan also carries the file's own stream (``scan.raw``: XML header
    and all readouts, noise scans included), which replay sends as it is.
    Non-Cartesian files are refused: the readouts are gridded by line.
    """
    try:
        dset = ismrmrd.Dataset(str(path), dataset, create_if_needed=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable ISMRMRD file ({type(exc).__name__}: {exc})") from None
    try:
        xml = dset.read_xml_header()
        xml = xml.decode("utf-8") if isinstance(xml, bytes) else str(xml)
        hdr = ismrmrd.xsd.CreateFromDocument(xml)
        try:
            n = dset.number_of_acquisitions()
        except Exception:  # no /dataset/data: a header-only (metadata) file
            n = 0
        acqs = [dset.read_acquisition(i) for i in range(n)]
    finally:
        dset.close()
    if not hdr.encoding:
        raise ValueError(f"{path}: the ISMRMRD header has no <encoding>")
    traj = hdr.encoding[0].trajectory
    traj = str(getattr(traj, "value", traj) or "cartesian")
    if traj != "cartesian":
        raise ValueError(f"{path}: trajectory {traj!r}; replay re-grids readouts by line and handles Cartesian data only")
    all_acqs = acqs
    acqs = [a for a in acqs if not any(a.is_flag_set(f) for f in _SKIP_FLAGS)]
    if not acqs:
        raise ValueError(f"{path}: no imaging readouts ({n} readouts in the file, none of them imaging data)")
    enc = hdr.encoding[0]
    ny = int(enc.encodedSpace.matrixSize.y)
    recon = (int(enc.reconSpace.matrixSize.y), int(enc.reconSpace.matrixSize.x))
    kx = int(acqs[0].number_of_samples)
    coils = int(acqs[0].active_channels)
    if any(int(a.number_of_samples) != kx or int(a.active_channels) != coils for a in acqs):
        raise ValueError(f"{path}: imaging readouts differ in samples or channels; replay needs one readout shape")
    if max(a.idx.kspace_encode_step_1 for a in acqs) >= ny:
        raise ValueError(f"{path}: a readout's line counter exceeds the encoded matrix ({ny} lines)")
    time_dim = time_dimension(hdr)
    other = "repetition" if time_dim == "phase" else "phase"
    if max(getattr(a.idx, time_dim) for a in acqs) == 0 and max(getattr(a.idx, other) for a in acqs) > 0:
        # The host frames by the header's rule too: it would fold these frames into one.
        raise ValueError(f"{path}: readouts count frames in their {other} counter but the header's encoding limits "
                         f"declare {'no phase' if other == 'phase' else 'phases'}; the host would read the {time_dim} counter")
    frame_of = (lambda a: a.idx.phase) if time_dim == "phase" else (lambda a: a.idx.repetition)
    slices = max(a.idx.slice for a in acqs) + 1
    frames = max(frame_of(a) for a in acqs) + 1
    contrasts = sorted({a.idx.contrast for a in acqs})
    os_ = _oversampling(hdr, kx, path)
    lim = enc.encodingLimits.kspace_encoding_step_1
    geo = _geometry_from_header(hdr)
    first = acqs[0]
    positions = np.zeros((slices, 3), dtype=np.float32)
    for a in acqs:
        positions[a.idx.slice] = a.position[:]
    frame_ms = 36.0
    if hdr.userParameters is not None:
        for p in hdr.userParameters.userParameterDouble:
            if p.name == "frame_ms":
                frame_ms = float(p.value)
    raw = RawStream(xml=xml, acquisitions=all_acqs)
    calib_flags = (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
    calibration = {int(a.idx.kspace_encode_step_1) for a in all_acqs if any(a.is_flag_set(f) for f in calib_flags)}
    scans = []
    for c in contrasts:
        k = np.zeros((slices, frames, coils, ny, kx), dtype=np.complex64)
        got = np.zeros((slices, frames, ny), dtype=bool)
        for a in acqs:
            if a.idx.contrast == c:
                k[a.idx.slice, frame_of(a), :, a.idx.kspace_encode_step_1, :] = a.data
                got[a.idx.slice, frame_of(a), a.idx.kspace_encode_step_1] = True
        ref = rss_reference(k, (min(recon[0], ny), recon[1] if os_ == 1 else kx // os_))
        scans.append(Scan(
            kspace=k, reference=ref, coil_maps=None, readout_oversampling=os_, slice_positions_mm=positions,
            read_dir=tuple(first.read_dir), phase_dir=tuple(first.phase_dir), slice_dir=tuple(first.slice_dir),
            frame_ms=frame_ms, time_dimension=time_dim, contrast=int(c), name=Path(path).stem,
            ky_center=int(lim.center) if lim is not None else None, acquired=None if got.all() else got, raw=raw,
            calibration_lines=len(calibration) or None, **geo,
        ))
    return scans


# -- fastMRI / M4Raw -------------------------------------------------------------


def read_fastmri(path: str | Path, *, slices: slice | list[int] | None = None, contrast: int = 0) -> Scan:
    """A fastMRI (or M4Raw) .h5 file as a :class:`Scan` (one frame, many slices).

    ``kspace`` ``(slices, coils, H, W)`` (single-coil: ``(slices, H, W)``) is
    transposed to ``(slices, 1, coils, W, H)``; the phase-encode columns
    outside ``[W//2 - centre, W//2 - centre + maximum + 1)`` of the header's
    ``kspace_encoding_step_1`` limits are zero padding and are marked
    un-encoded (never sent). The reference is the RSS (single-coil:
    magnitude) of the full k-space cropped to the recon matrix, which is
    what ``reconstruction_rss``/``_esc`` hold (transposed). A ``mask`` in the
    file (test sets) is kept as ``scan.file_mask``.
    """
    with h5py.File(path, "r") as f:
        k = f["kspace"]
        sel = slice(None) if slices is None else slices
        kspace = np.asarray(k[sel], dtype=np.complex64)
        xml = f["ismrmrd_header"][()]
        hdr = ismrmrd.xsd.CreateFromDocument(xml.tobytes() if hasattr(xml, "tobytes") else xml)
        attrs = dict(f.attrs)
        file_mask = np.asarray(f["mask"][()], dtype=bool) if "mask" in f else None
    if kspace.ndim == 3:
        kspace = kspace[:, None]
    # (slices, coils, H=kx, W=ky) -> (slices, frames=1, coils, ky, kx)
    kspace = np.ascontiguousarray(np.transpose(kspace, (0, 1, 3, 2))[:, None])
    enc = hdr.encoding[0]
    ny, kx = kspace.shape[-2:]
    lim = enc.encodingLimits.kspace_encoding_step_1
    pad_left = ny // 2 - int(lim.center)
    pad_right = pad_left + int(lim.maximum) + 1
    recon = (int(enc.reconSpace.matrixSize.y), int(enc.reconSpace.matrixSize.x))
    os_ = _oversampling(hdr, kx, path)
    ref = rss_reference(kspace, (min(recon[0], ny), kx // os_))
    geo = _geometry_from_header(hdr)
    name = Path(path).stem
    geo.setdefault("measurement_id", f"fastmri_{zlib.crc32(name.encode()) % 100000:05d}")
    geo.setdefault("frame_of_reference_uid", dicom_uid(str(attrs.get("patient_id", name)), 0, "for"))
    n_sl = kspace.shape[0]
    thick = geo["fov_mm"][2]
    positions = np.zeros((n_sl, 3), dtype=np.float32)
    positions[:, 2] = (np.arange(n_sl) - (n_sl - 1) / 2) * thick
    scan = Scan(
        kspace=kspace, reference=ref, coil_maps=None, readout_oversampling=os_, slice_positions_mm=positions,
        frame_ms=1000.0, time_dimension="repetition", contrast=contrast, name=name,
        encoded_lines=(max(pad_left, 0), min(pad_right, ny)), ky_center=ny // 2, **geo,
    )
    if file_mask is not None:
        scan.file_mask = file_mask[None] if file_mask.ndim == 1 else file_mask
    return scan


M4RAW_NAME = re.compile(r"^(?P<study>\d+)_(?P<contrast>T1|T2|FLAIR)(?P<rep>\d*)$", re.IGNORECASE)


def pair_m4raw(folder: str | Path) -> dict[str, dict[str, list[Path]]]:
    """Group M4Raw files by study id: ``{study: {"T1": [...], "T2": [...], "FLAIR": [...]}}``.

    M4Raw names files ``<study id>_<contrast><repetition>.h5`` (e.g.
    ``2022061003_T102.h5``); repetitions are sorted.
    """
    out: dict[str, dict[str, list[Path]]] = {}
    for p in sorted(Path(folder).glob("*.h5")):
        m = M4RAW_NAME.match(p.stem)
        if m:
            out.setdefault(m["study"], {}).setdefault(m["contrast"].upper(), []).append(p)
    return out


def read_m4raw_pair(folder: str | Path, *, study: str | None = None, reference: str = "T1", target: str = "T2",
                    slices: slice | list[int] | None = None) -> list[Scan]:
    """``[reference Scan (contrast 0), target Scan (contrast 1)]`` of one M4Raw study.

    The first repetition of each contrast is used; both scans share the
    study's frame of reference.
    """
    groups = pair_m4raw(folder)
    if not groups:
        raise FileNotFoundError(f"no M4Raw files (<study>_<T1|T2|FLAIR><n>.h5) in {folder}")
    study = study or sorted(groups)[0]
    g = groups.get(study, {})
    if reference.upper() not in g or target.upper() not in g:
        raise FileNotFoundError(f"study {study} lacks {reference} or {target}: has {sorted(g)}")
    out = []
    for c, label in enumerate((reference.upper(), target.upper())):
        s = read_fastmri(g[label][0], slices=slices, contrast=c)
        s.frame_of_reference_uid = dicom_uid(study, 0, "for")
        s.name = f"m4raw_{study}_{label}"
        out.append(s)
    return out


# -- CMRxRecon .mat ---------------------------------------------------------------

CMRX_KSPACE_KEYS = ("kspace_full", "kspace_sub04", "kspace_sub08", "kspace_sub10", "kus")


def _is_hdf5(path: str | Path) -> bool:
    return h5py.is_hdf5(str(path))


def _h5_complex(ds: h5py.Dataset) -> np.ndarray:
    """A MATLAB v7.3 complex dataset (compound of real/imag) as complex64."""
    raw = ds[()]
    if raw.dtype.names and "real" in raw.dtype.names:
        return (raw["real"] + 1j * raw["imag"]).astype(np.complex64)
    return np.asarray(raw).astype(np.complex64)


def _matlab_class(ds: h5py.Dataset) -> str:
    value = ds.attrs.get("MATLAB_class", b"")
    return value.decode() if isinstance(value, bytes) else str(value)


def read_mat_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every numeric array of a .mat file, axes as h5py sees them (reversed MATLAB order).

    v7.3 files go through h5py (complex compounds become complex64); v5
    files through ``scipy.io.loadmat`` and are transposed to the same
    reversed order, so both versions give identical arrays.
    """
    out: dict[str, np.ndarray] = {}
    if _is_hdf5(path):
        with h5py.File(path, "r") as f:
            for key, ds in f.items():
                # MATLAB stores char arrays as uint16 with MATLAB_class "char": text, not numbers.
                if isinstance(ds, h5py.Dataset) and _matlab_class(ds) != "char" and (
                        ds.dtype.names or np.issubdtype(ds.dtype, np.number) or ds.dtype == bool):
                    out[key] = _h5_complex(ds) if ds.dtype.names else np.asarray(ds[()])
        return out

    try:
        contents = loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError, TypeError or NotImplementedError on non-.mat bytes
        raise ValueError(f"{path}: not a MATLAB .mat file (v5 or v7.3): {exc}") from None
    for key, val in contents.items():
        if not key.startswith("__") and isinstance(val, np.ndarray) and np.issubdtype(val.dtype, np.number):
            out[key] = np.transpose(val)
    return out


def read_cmrxrecon(path: str | Path, *, key: str = "kspace_full", readout_oversampling: int = 1,
                   frame_ms: float | None = None, mask_path: str | Path | None = None,
                   fov_mm: tuple[float, float, float] = (340.0, 290.0, 8.0)) -> Scan:
    """A CMRxRecon cine .mat (2023 or 2024 layout, v7.3 or v5) as a gated :class:`Scan`.

    ``kspace_full`` (or ``key``) is ``(t, z, coils, ky, kx)`` (multi-coil) or
    ``(t, z, ky, kx)`` (single-coil) as h5py sees it. Frames are cardiac
    phases (``time_dimension="phase"``, default 50 ms per phase, a 1 s RR
    spread over the frames unless ``frame_ms`` is given). The reference is
    the RSS of the full k-space. A mask from the same file (``mask04``..,
    ``mask``) or from ``mask_path`` is kept as ``scan.file_mask``
    ``(frames, ky)``. The challenge does not document readout oversampling
    in its k-space; ``readout_oversampling`` says how to treat it.
    """
    arrays = read_mat_arrays(path)
    if key == "kspace_full" and key not in arrays and "kus" in arrays:
        key = "kus"  # CMRxRecon 2024 test/validation files ship only the undersampled k-space
    if key not in arrays:
        raise ValueError(f"{path}: no {key!r} k-space; has {sorted(arrays)}")
    k = np.asarray(arrays[key], dtype=np.complex64)
    if k.ndim == 4:
        k = k[:, :, None]
    if k.ndim != 5:
        raise ValueError(f"{path}:{key} has shape {k.shape}; expected (t, z, coils, ky, kx) or (t, z, ky, kx)")
    t, z, c, ny, kx = k.shape
    kspace = np.ascontiguousarray(np.transpose(k, (1, 0, 2, 3, 4)))  # (z, t, coils, ky, kx)
    ref = rss_reference(kspace, (ny, kx // readout_oversampling))
    positions = np.zeros((z, 3), dtype=np.float32)
    positions[:, 2] = (np.arange(z) - (z - 1) / 2) * 10.0
    name = Path(path).stem
    scan = Scan(
        kspace=kspace, reference=ref, coil_maps=None, fov_mm=fov_mm, readout_oversampling=readout_oversampling,
        slice_positions_mm=positions, frame_ms=frame_ms or 1000.0 / t, time_dimension="phase", name=f"cmrxrecon_{name}",
        frame_of_reference_uid=dicom_uid(str(Path(path).resolve().parent), 0, "for"),
        measurement_id=f"cmrx_{zlib.crc32(str(path).encode()) % 100000:05d}",
    )
    mask_arrays = read_mat_arrays(mask_path) if mask_path is not None else arrays
    mask_key = next((m for m in ("mask", "mask04", "mask08", "mask10") if m in mask_arrays), None)
    if key.startswith("kspace_sub"):
        mask_key = "mask" + key[-2:] if "mask" + key[-2:] in mask_arrays else mask_key
    if mask_key is not None:
        scan.file_mask = line_mask_from_array(mask_arrays[mask_key], ny, t)
    if key != "kspace_full":
        # Undersampled k-space: only its acquired lines are measurements.
        sampled = scan.file_mask if scan.file_mask is not None else None
        if sampled is None:
            lines = np.abs(kspace).sum(axis=(2, 4)) > 0  # (z, t, ky)
        else:
            lines = np.broadcast_to(np.asarray(sampled, dtype=bool)[None], (z, t, ny)).copy()
        if not lines.all():
            scan.acquired = lines
    return scan


def read_mask_file(path: str | Path, ny: int, frames: int) -> np.ndarray:
    """A mask file (.mat v5/v7.3 with ``mask*``, or .npy) as ``(frames, ny)``, used as it is."""

    path = Path(path)
    if path.suffix == ".npy":
        return line_mask_from_array(np.load(path), ny, frames)
    arrays = read_mat_arrays(path)
    key = next((k for k in arrays if k.lower().startswith("mask")), None) or next(iter(arrays))
    return line_mask_from_array(arrays[key], ny, frames)


__all__ = ["read_ismrmrd", "read_fastmri", "pair_m4raw", "read_m4raw_pair", "read_cmrxrecon", "read_mat_arrays",
           "read_mask_file", "rss_reference", "center_crop"]
