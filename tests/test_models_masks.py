"""The one centre-run rule (models.masks.centre_run) behind the ACS length, the calibration lines and replay's block."""
from __future__ import annotations

import numpy as np

from models.coils import calibration_region
from models.masks import acs_lines, centre_run, line_mask


def test_centre_run_bounds_the_run_through_the_centre_line():
    lines = np.zeros(16, bool)
    lines[[0, 5, 6, 7, 8, 9, 12]] = True
    assert centre_run(lines) == (5, 10)
    assert centre_run(np.zeros(16, bool)) == (8, 8)  # centre unsampled: empty run at ny // 2
    assert centre_run(np.ones(16, bool)) == (0, 16)


def test_acs_lines_and_calibration_region_agree_with_the_centre_run():
    mask = line_mask("kt-gaussian", 96, 8, accel=6.0, acs=12, seed=3)
    every = mask.reshape(-1, 96).all(axis=0)
    start, stop = centre_run(every)
    assert acs_lines(mask) == stop - start >= 12
    kspace = np.zeros((2, 96, 4), np.complex64)
    kspace[:, every] = 1.0
    assert calibration_region(kspace) == (start, stop)
