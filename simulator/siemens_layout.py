"""ISMRMRD files written in the layout Siemens' converter gives an iPAT (GRAPPA) scan (tests and `bench pi`).

What a real Siemens iPAT-2 file looks like, reproduced here on a phantom:
a header without ``<version>`` (siemens_to_ismrmrd leaves it out), vendor
SIEMENS, ``encoding.parallelImaging`` with ``accelerationFactor`` 2 and
the calibration mode, the readout 2x oversampled, noise-measurement readouts
first, then per slice every second phase-encode line (the k-space centre
line always among them) with

- ``embedded``: the 28 central calibration lines acquired inside the
  imaging scan; lines on the R=2 grid flagged
  ``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING``, the ones between them
  ``ACQ_IS_PARALLEL_CALIBRATION`` only;
- ``separate``: a reference scan of the 28 central lines (``ACQ_IS_PARALLEL_CALIBRATION``
  only) before the slice's imaging lines, which hold no calibration flag;
- ``interleaved``: no calibration lines; each repetition samples the other
  half of the lines (a time-interleaved, TSENSE-like calibration).

Flags as the converter sets them: FIRST/LAST_IN_SLICE and
FIRST/LAST_IN_REPETITION on the imaging lines, LAST_IN_MEASUREMENT on the
last readout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ismrmrd
import numpy as np

from models.phantoms import brain_pair
from simulator.header import make_header
from simulator.scan import Scan, scan_from_images
from simulator.writers import write_dataset

CALIBRATION_LINES = 28


@dataclass
class SiemensFile:
    path: Path
    scan: Scan                 # the fully sampled simulated truth (``scan.reference``: complex images)
    mode: str
    acceleration: int
    calibration: tuple[int, int]   # calibration lines [start, stop)
    noise_std: float


def _base(acq_data: np.ndarray, counter: int, dwell_us: float) -> ismrmrd.Acquisition:
    acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(acq_data, dtype=np.complex64))
    acq.version = 1
    acq.scan_counter = counter
    acq.acquisition_time_stamp = 4_000_000 + counter
    acq.sample_time_us = dwell_us
    acq.center_sample = acq_data.shape[1] // 2
    for c in range(acq_data.shape[0]):
        acq.setChannelActive(c)
    return acq


def write_siemens_pi(path: Path, mode: str = "embedded", *, matrix: int = 96, coils: int = 4, slices: int = 2,
                     repetitions: int = 1, acceleration: int = 2, calibration_lines: int = CALIBRATION_LINES,
                     noise_std: float = 0.05, seed: int = 0) -> SiemensFile:
    """Write a Siemens-layout iPAT file of the brain phantom (module docstring); returns what was written."""
    if mode not in ("embedded", "separate", "interleaved"):
        raise ValueError(mode)
    images = np.stack([np.repeat(brain_pair(matrix, seed=seed + s)[1][None], repetitions, axis=0) for s in range(slices)])
    scan = scan_from_images(images, n_coils=coils, noise_std=noise_std, seed=seed, name="siemens_ipat",
                            fov_mm=(230.0, 230.0, 5.0), frame_ms=300.0)
    ny, kx = scan.ny, scan.kx_encoded
    c = ny // 2
    calib = (c - calibration_lines // 2, c + calibration_lines // 2)
    header = make_header(scan, accel=acceleration, calib_lines=calibration_lines if mode != "interleaved" else 0,
                         calibration_mode=mode)
    header.version = None  # siemens_to_ismrmrd writes no <version>
    header.acquisitionSystemInformation.systemVendor = "SIEMENS"
    header.acquisitionSystemInformation.systemModel = "Avanto_fit"
    header.userParameters = None
    dwell_us = 1e6 / (500.0 * kx)
    rng = np.random.default_rng(seed + 99)
    acqs: list[ismrmrd.Acquisition] = []
    for _ in range(2):  # the noise measurement comes first, same readout
        noise = (rng.normal(size=(coils, kx)) + 1j * rng.normal(size=(coils, kx))) * noise_std / np.sqrt(2)
        acq = _base(noise, len(acqs) + 1, dwell_us)
        acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        acqs.append(acq)

    def line(s: int, t: int, k: int, *flags: int) -> None:
        acq = _base(scan.kspace[s, t, :, k, :], len(acqs) + 1, dwell_us)
        acq.idx.kspace_encode_step_1 = k
        acq.idx.slice = s
        acq.idx.repetition = t
        acq.position[:] = [float(v) for v in scan.slice_positions_mm[s]]
        acq.read_dir[:], acq.phase_dir[:], acq.slice_dir[:] = scan.read_dir, scan.phase_dir, scan.slice_dir
        for f in flags:
            acq.set_flag(f)
        acqs.append(acq)

    for t in range(repetitions):
        for s in range(slices):
            offset = c % acceleration
            if mode == "interleaved":
                offset = (c + t) % acceleration
            if mode == "separate" and t == 0:
                for k in range(*calib):
                    line(s, t, k, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
            ks = [k for k in range(ny) if k % acceleration == offset
                  or (mode == "embedded" and calib[0] <= k < calib[1])]
            for i, k in enumerate(ks):
                flags = []
                if mode == "embedded" and calib[0] <= k < calib[1]:
                    flags.append(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING if k % acceleration == offset
                                 else ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
                if i == 0:
                    flags += [ismrmrd.ACQ_FIRST_IN_SLICE, ismrmrd.ACQ_FIRST_IN_REPETITION]
                if i == len(ks) - 1:
                    flags += [ismrmrd.ACQ_LAST_IN_SLICE, ismrmrd.ACQ_LAST_IN_REPETITION]
                line(s, t, k, *flags)
    acqs[-1].set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    path = Path(path)
    path.unlink(missing_ok=True)  # ismrmrd.Dataset appends to an existing file
    write_dataset(path, header, acqs)
    return SiemensFile(path, scan, mode, acceleration, calib, noise_std)
