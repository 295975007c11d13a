"""Writers for the dataset layouts :mod:`simulator.readers` reads.

Tests build small files in the exact on-disk layouts with these (and
users can convert a phantom into any of them to try another tool).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import h5py
import ismrmrd
import numpy as np
from scipy.io import savemat

from models.coils import rss
from models.fft import fft2c, ifft2c

from .acquire import acquisitions
from .header import make_header
from .readers import center_crop
from .scan import Scan, pad_readout

MAT73_USERBLOCK = 512


def write_ismrmrd(path: str | Path, scan: Scan, mask: np.ndarray | None = None, *, order: str = "realtime",
                  dataset: str = "dataset", **acq_kw) -> int:
    """Write ``scan`` as an ISMRMRD .h5 dataset (header + readouts as they would be streamed); returns the readout count."""
    return write_dataset(path, make_header(scan), acquisitions(scan, mask, order=order, **acq_kw), dataset=dataset)


def write_dataset(path: str | Path, header: Any, items: Iterable[Any], *, dataset: str = "dataset") -> int:
    """An ISMRMRD .h5 dataset of ``header`` (an ``ismrmrdHeader`` or its XML) and the acquisitions among ``items``
    (other items, such as waveforms, are not stored); returns the acquisition count."""
    dset = ismrmrd.Dataset(str(path), dataset, create_if_needed=True)
    n = 0
    try:
        dset.write_xml_header(header if isinstance(header, (str, bytes)) else header.toXML())
        for item in items:
            if isinstance(item, ismrmrd.Acquisition):
                dset.append_acquisition(item)
                n += 1
    finally:
        dset.close()
    return n


def fastmri_header_xml(scan: Scan, padded_ny: int, pad_left: int) -> str:
    """The ``ismrmrd_header`` of a fastMRI file: encoded matrix incl. padding, limits of the acquired columns."""
    hdr = make_header(scan)
    enc = hdr.encoding[0]
    enc.encodedSpace.matrixSize.y = padded_ny
    lim = enc.encodingLimits.kspace_encoding_step_1
    lim.minimum, lim.maximum = 0, scan.ny - 1
    lim.center = padded_ny // 2 - pad_left
    return hdr.toXML()


def write_fastmri(path: str | Path, scan: Scan, *, pad_columns: int = 0, single_coil: bool = False,
                  acquisition: str = "CORPD_FBK", mask: np.ndarray | None = None) -> None:
    """Write frame 0 of every slice of ``scan`` in the fastMRI layout.

    ``kspace`` ``(slices, coils, H=kx, W=ky + 2 * pad_columns)`` complex64 with
    ``pad_columns`` zero columns on each side (as fastMRI pads to its
    encoded matrix), ``reconstruction_rss`` (multi-coil) or
    ``reconstruction_esc`` (single-coil: coil-combined k-space of the
    reference) ``(slices, ny, nx)`` in fastMRI orientation (readout down),
    ``ismrmrd_header``, attributes ``acquisition``, ``max``, ``norm``,
    ``patient_id``; ``mask`` ``(W,)`` if given (test-set style).
    """
    k = scan.kspace[:, 0]  # (slices, coils, ky, kx)
    if single_coil:
        k = fft2c(pad_readout(scan.reference[:, 0], scan.kx_encoded))[:, None]
    k = np.pad(k, ((0, 0), (0, 0), (pad_columns, pad_columns), (0, 0)))
    k = np.transpose(k, (0, 1, 3, 2)).astype(np.complex64)  # -> (slices, coils, kx, W)
    img = rss(ifft2c(k), axis=1)  # (slices, kx, W)
    recon = center_crop(img, (scan.kx_encoded // scan.readout_oversampling, scan.recon_shape[0])).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k[:, 0] if single_coil else k)
        f.create_dataset("reconstruction_esc" if single_coil else "reconstruction_rss", data=recon)
        f["ismrmrd_header"] = np.bytes_(fastmri_header_xml(scan, k.shape[-1], pad_columns))
        if mask is not None:
            f.create_dataset("mask", data=np.asarray(mask, dtype=bool))
        f.attrs["acquisition"] = acquisition
        f.attrs["max"] = float(recon.max())
        f.attrs["norm"] = float(np.linalg.norm(recon))
        f.attrs["patient_id"] = scan.frame_of_reference_uid


def _write_mat73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """MATLAB v7.3: HDF5 with a 512-byte MATLAB user block; complex as real/imag compounds.

    ``arrays`` are given as h5py will see them (reversed MATLAB axis order).
    """
    with h5py.File(path, "w", userblock_size=MAT73_USERBLOCK) as f:
        for name, a in arrays.items():
            a = np.asarray(a)
            if np.iscomplexobj(a):
                comp = np.dtype([("real", "<f4"), ("imag", "<f4")])
                data = np.empty(a.shape, dtype=comp)
                data["real"], data["imag"] = a.real, a.imag
                ds = f.create_dataset(name, data=data)
                ds.attrs["MATLAB_class"] = np.bytes_("single")
            else:
                ds = f.create_dataset(name, data=a.astype(np.float64) if a.dtype == bool else a)
                ds.attrs["MATLAB_class"] = np.bytes_("double")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: streamrecon HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM")


def write_cmrxrecon(path: str | Path, kspace_full: np.ndarray, *, version: str = "7.3", layout: str = "2023",
                    masks: dict[str, np.ndarray] | None = None, undersampled: dict[str, np.ndarray] | None = None) -> None:
    """Write a CMRxRecon cine .mat.

    ``kspace_full`` is ``(t, z, coils, ky, kx)`` or single-coil ``(t, z, ky, kx)``
    as h5py sees a v7.3 file; v5 files (``version="5"``, scipy) store the
    MATLAB order, i.e. the axes reversed. ``masks``/``undersampled`` add
    e.g. ``{"mask04": (ky, kx)}`` / ``{"kspace_sub04": ...}`` (2023) or
    ``{"mask": (t, ky, kx)}`` / ``{"kus": ...}`` (2024), in the same h5py view.
    """
    path = Path(path)
    if layout not in ("2023", "2024"):
        raise ValueError("layout must be 2023 or 2024")
    arrays = {"kspace_full": np.asarray(kspace_full, dtype=np.complex64)}
    arrays.update(undersampled or {})
    arrays.update(masks or {})
    if version == "7.3":
        _write_mat73(path, arrays)
    elif version == "5":
        savemat(str(path), {k: np.transpose(v) for k, v in arrays.items()}, do_compression=False)
    else:
        raise ValueError("version must be '7.3' or '5'")


__all__ = ["write_ismrmrd", "write_fastmri", "write_cmrxrecon", "fastmri_header_xml"]
