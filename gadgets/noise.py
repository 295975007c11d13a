"""Noise pre-whitening from the noise-measurement readouts at the start of a scan.

The noise readouts (flag ``ACQ_IS_NOISE_MEASUREMENT``) give the receiver
channels' covariance ``C``; every later readout is multiplied by
``W = L^-1`` with ``C = L L^H`` so its channels carry independent unit
variance noise, which is what SENSE combination and the models assume.
Noise variance scales with receiver bandwidth, i.e. inversely with the dwell
time, so ``W`` is scaled by ``sqrt(dwell_acq / dwell_noise)``. Noise
readouts are consumed; everything else is forwarded.
"""
from __future__ import annotations

import logging
from typing import Any

import ismrmrd
import numpy as np

from .errors import reports_errors
from .runtime import single_threaded_blas
from .samples import NonFiniteCounter

log = logging.getLogger(__name__)


class NoiseStatistics:
    """Running covariance of noise samples, ``(channels, channels)``."""

    def __init__(self) -> None:
        self.sum: np.ndarray | None = None
        self.samples = 0
        self.dwell_us = 0.0

    def add(self, data: np.ndarray, dwell_us: float) -> None:
        data = np.asarray(data, dtype=np.complex128)
        if self.sum is None:
            self.sum = np.zeros((data.shape[0], data.shape[0]), np.complex128)
        elif self.sum.shape[0] != data.shape[0]:
            raise ValueError(f"noise readouts changed channel count from {self.sum.shape[0]} to {data.shape[0]}")
        self.sum += data @ data.conj().T
        self.samples += data.shape[1]
        self.dwell_us = float(dwell_us) or self.dwell_us

    def whitening_matrix(self) -> np.ndarray:
        if self.sum is None or self.samples < 2:
            raise ValueError("not enough noise samples to estimate the noise covariance")
        covariance = self.sum / (self.samples - 1)
        # A dead channel makes the covariance singular; a tiny diagonal load
        # keeps the Cholesky factor finite without changing healthy channels.
        covariance = covariance + np.eye(len(covariance)) * 1e-9 * np.real(np.trace(covariance)) / len(covariance)
        lower = np.linalg.cholesky(covariance)
        return np.linalg.inv(lower)


def whiten(data: np.ndarray, matrix: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``(channels, samples)`` data with whitened channels."""
    return (scale * (matrix @ data)).astype(np.complex64)


@reports_errors
def prewhiten(connection: Any) -> None:
    """Gadget: consume noise readouts, whiten every following readout."""
    single_threaded_blas()
    stats = NoiseStatistics()
    matrix: np.ndarray | None = None
    nonfinite = NonFiniteCounter("prewhiten")
    for item in connection:
        if not isinstance(item, ismrmrd.Acquisition):
            connection.send(item)
            continue
        nonfinite(item)  # before the covariance: one NaN there would reach every readout
        if item.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            stats.add(item.data, item.sample_time_us)
            matrix = None
            continue
        if stats.samples == 0:
            connection.send(item)
            continue
        if matrix is None:
            matrix = stats.whitening_matrix()
            log.info("noise pre-whitening from %d samples of %d channels", stats.samples, matrix.shape[0])
        if item.active_channels != matrix.shape[0]:
            raise ValueError(f"readout has {item.active_channels} channels but the noise measurement had {matrix.shape[0]}")
        scale = np.sqrt(item.sample_time_us / stats.dwell_us) if item.sample_time_us and stats.dwell_us else 1.0
        head = ismrmrd.AcquisitionHeader.from_buffer_copy(item.getHead())
        connection.send(ismrmrd.Acquisition(head, whiten(item.data, matrix, scale), np.array(item.traj)))
    nonfinite.report()
