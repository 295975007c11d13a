"""Non-finite samples (NaN, Inf): zeroed where they enter, counted, and flagged on their readout.

One NaN in one readout would otherwise spread: through the noise covariance
into every whitened readout, through the coil maps into every later image of
the slice, and into the fallback images too. The readout keeps the flag
``ACQ_USER8`` in its header, which travels with the line through every gadget
(and across Gadgetron processes), so the images say how many lines were zeroed
and coil maps are never estimated from them.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

import ismrmrd
import numpy as np

log = logging.getLogger(__name__)

ZEROED_FLAG = ismrmrd.ACQ_USER8
# Finite samples this large are as broken as Inf: summed by an FFT or a coil
# combination they overflow float32 (3.4e38) into Inf pixels. Raw data of any
# scanner is many orders of magnitude below.
MAX_ABS = 1e20
META_KEY = "NonFiniteLinesZeroed"


def zero_nonfinite(acq: ismrmrd.Acquisition) -> int:
    """Zero ``acq``'s non-finite (or absurdly large, :data:`MAX_ABS`) samples in place and flag it; how many."""
    data = acq.data
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~(np.abs(data) <= MAX_ABS)  # NaN compares False, so it is caught too
    count = int(bad.sum())
    if count:
        data[bad] = 0
        acq.set_flag(ZEROED_FLAG)
    return count


def is_zeroed(header: Any) -> bool:
    return header is not None and bool(int(header.flags) & (1 << (ZEROED_FLAG - 1)))


def zeroed_lines(*line_headers: Iterable[Any] | None) -> int:
    """Phase-encode lines with zeroed samples in any of the per-line header arrays (imaging, calibration)."""
    return len({i for headers in line_headers if headers is not None for i, h in enumerate(headers) if is_zeroed(h)})


# Late readouts: a readout of a frame already reconstructed is dropped (a second image of the frame would
# confuse the scanner), and the next frame of the same slice says so. The count rides on that frame's line
# headers (flag ACQ_USER7, count in user_int[7]), so it crosses Gadgetron processes with the data.
LATE_FLAG = ismrmrd.ACQ_USER7
LATE_META_KEY = "LateReadoutsDropped"


def mark_late(headers: Iterable[Any], count: int) -> None:
    """Record on a frame's line headers that ``count`` readouts of earlier frames of its slice were dropped."""
    for h in headers:
        if h is not None and h.number_of_samples > 0:
            h.flags = int(h.flags) | (1 << (LATE_FLAG - 1))
            h.user_int[7] = min(int(count), 2**31 - 1)


def late_readouts(*line_headers: Iterable[Any] | None) -> int:
    """The late-readout count a frame's headers carry (0: none)."""
    counts = [int(h.user_int[7]) for headers in line_headers if headers is not None for h in headers
              if h is not None and int(h.flags) & (1 << (LATE_FLAG - 1))]
    return max(counts, default=0)


class NonFiniteCounter:
    """Zeroes and counts per gadget; logs the first occurrence and the total."""

    def __init__(self, where: str) -> None:
        self.where, self.samples, self.readouts = where, 0, 0

    def __call__(self, acq: ismrmrd.Acquisition) -> None:
        count = zero_nonfinite(acq)
        if count:
            if not self.readouts:
                log.warning("%s: readout with %d non-finite samples zeroed (flagged in the images' meta)",
                            self.where, count)
            self.samples += count
            self.readouts += 1

    def report(self) -> None:
        if self.readouts:
            log.warning("%s: %d non-finite samples zeroed in %d readouts", self.where, self.samples, self.readouts)
