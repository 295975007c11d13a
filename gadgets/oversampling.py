"""Removal of readout oversampling (encoded vs recon field of view).

Scanners oversample the readout (typically 2x) to keep aliasing out of the
image at no time cost; the extra field of view is cropped right after
reception so that everything downstream handles half the samples. The crop
is done per readout: inverse FFT along the readout, keep the central
``recon_fov / encoded_fov`` part, FFT back.
"""
from __future__ import annotations

import logging
from typing import Any

import ismrmrd
import numpy as np
from models.fft import fft1c, ifft1c

from . import host_settings
from .errors import reports_errors
from .header import oversampling_factor
from .runtime import single_threaded_blas

log = logging.getLogger(__name__)


def crop_readout(data: np.ndarray, keep: int) -> np.ndarray:
    """``(channels, samples)`` k-space -> ``(channels, keep)`` covering the central FOV."""
    n = data.shape[-1]
    image = ifft1c(data, axis=-1)
    start = n // 2 - keep // 2
    # Orthonormal transforms keep image-domain values, so no rescaling: the
    # cropped readout reconstructs to the same pixel intensities.
    return fft1c(image[..., start:start + keep], axis=-1).astype(np.complex64)


# Beyond this many samples the (n, keep) matrix costs more memory than it saves
# time (n = 1024: 4 MiB); longer readouts are cropped with two FFTs.
MAX_OPERATOR_SAMPLES = 1024


def crop_operator(n: int, keep: int) -> np.ndarray:
    """The ``(n, keep)`` matrix ``R`` with ``crop_readout(d, keep) == d @ R``.

    Per readout a matrix product is several times cheaper than two FFTs
    (and their shifts) at scanner readout rates of thousands per second.
    """
    return crop_readout(np.eye(n, dtype=np.complex64), keep)


@reports_errors
def remove_oversampling(connection: Any) -> None:
    """Gadget: crop every imaging readout to the recon field of view."""
    single_threaded_blas()
    settings = host_settings.for_connection(connection)
    factor = oversampling_factor(connection.header)
    operators: dict[tuple[int, int], np.ndarray] = {}
    if factor == 1.0:
        log.info("no readout oversampling in the header; passing readouts through")
    for item in connection:
        if factor == 1.0 or not isinstance(item, ismrmrd.Acquisition) or item.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            connection.send(item)
            continue
        n = item.number_of_samples
        host_settings.check_readout(n, item.active_channels, connection.header, settings)
        keep = int(round(n / factor))
        if keep < 1 or abs(keep * factor - n) > 0.5:
            raise ValueError(f"readout of {n} samples cannot be cropped by the oversampling factor {factor:g}")
        head = ismrmrd.AcquisitionHeader.from_buffer_copy(item.getHead())
        head.number_of_samples = keep
        head.center_sample = int(round(item.center_sample * keep / n))
        head.discard_pre = int(item.discard_pre * keep // n)
        head.discard_post = int(item.discard_post * keep // n)
        traj = np.zeros((keep, item.trajectory_dimensions), np.float32)
        if n > MAX_OPERATOR_SAMPLES:
            data = crop_readout(item.data, keep)
        else:
            op = operators.get((n, keep))
            if op is None:
                if len(operators) >= 4:  # a stream changing its readout length must not pile up matrices
                    operators.clear()
                op = operators[(n, keep)] = crop_operator(n, keep)
            data = np.ascontiguousarray(item.data @ op)
        connection.send(ismrmrd.Acquisition(head, data, traj))
