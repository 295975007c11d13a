"""Cartesian undersampling masks over phase-encode lines (NumPy only).

A mask is bool ``(frames, ny)``: ``mask[t, ky]`` says whether line ``ky``
of frame ``t`` is acquired (every readout sample of an acquired line is).
The k-space centre is line ``ny // 2`` as in :mod:`models.fft`; the
auto-calibration signal (ACS) block is the ``acs`` lines starting at
``ny // 2 - acs // 2``.

``accel`` is the *net* acceleration asked for, ACS included: the outer
lines are spread so that ``ny * frames / mask.sum()`` comes out at
``accel`` (within rounding). When the ACS block alone would exceed the line
budget (e.g. 24x with 24 ACS lines on 128 lines) it is shrunk to half the
budget so the asked acceleration stays reachable; :func:`acs_lines` tells
what a mask really holds. Pass ``net=False`` to get the challenge
convention instead (spacing ``accel`` plus ACS, so the achieved
acceleration is lower than nominal, as CMRxRecon's AccFactor masks are).

Families
--------
``uniform``      CMRxRecon 2023/2024 "Uniform": equispaced lines plus ACS, same for every frame.
``kt-uniform``   CMRxRecon 2024 "ktUniform": equispaced, offset sheared by one line per frame, plus ACS.
``kt-gaussian``  CMRxRecon 2024 "ktGaussian": Gaussian line density, fresh draw per frame, plus ACS.
``equispaced``   fastMRI equispaced with a centre fraction (random offset from the seed, same each frame).
``random``       fastMRI random with a centre fraction (fresh draw per frame).
``vd-random``    variable-density random per frame, polynomial density, ``acs`` central lines
                 (the dual U-Net paper's 5x with 11 central lines: ``accel=5, acs=11``).
"""
from __future__ import annotations

import numpy as np

FAMILIES = ("uniform", "kt-uniform", "kt-gaussian", "equispaced", "random", "vd-random")


def acs_block(ny: int, acs: int) -> tuple[int, int]:
    """``(start, stop)`` of ``acs`` central lines around ``ny // 2``."""
    acs = int(max(0, min(acs, ny)))
    start = ny // 2 - acs // 2
    return start, start + acs


def _budget(ny: int, accel: float, centre: int) -> tuple[int, int]:
    """Lines per frame for ``accel`` and the centre block that fits in it."""
    total = max(1, int(round(ny / accel)))
    if centre > 0.75 * total:
        # Keep a quarter of the budget or more for outer lines, else the
        # mask degenerates to a low-resolution block identical in every frame.
        centre = min(centre, max(min(2, total), total // 2))
    return total, centre


def _equispaced(ny: int, n_outer: int, spacing: float, offset: float, centre: tuple[int, int]) -> np.ndarray:
    """Line indices on a (possibly fractional) regular grid outside the centre block, at most ``n_outer``."""
    grid = np.unique(np.round(offset + np.arange(0, ny, spacing)).astype(int) % ny)
    outside = grid[(grid < centre[0]) | (grid >= centre[1])]
    if len(outside) > n_outer:
        # Keep the grid lines closest to the centre; drop the outermost extras.
        order = np.argsort(np.abs(outside - ny // 2), kind="stable")
        outside = np.sort(outside[order[:n_outer]])
    return outside


def line_mask(family: str, ny: int, frames: int = 1, *, accel: float = 4.0, acs: int = 24, seed: int = 0,
              center_fraction: float | None = None, net: bool = True) -> np.ndarray:
    """Undersampling mask ``(frames, ny)`` bool of the given family (module docstring).

    ``acs``: ACS lines for the CMRxRecon families and ``vd-random``;
    ``center_fraction``: fraction of central lines for the fastMRI families
    (default ``0.32 / accel``: fastMRI's 0.08 at 4x, 0.04 at 8x).
    ``seed`` makes random draws and offsets reproducible.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown mask family {family!r}; one of {', '.join(FAMILIES)}")
    if accel < 1:
        raise ValueError("accel must be >= 1")
    rng = np.random.default_rng(seed)
    mask = np.zeros((frames, ny), dtype=bool)
    if accel == 1:
        mask[:] = True
        return mask
    if family in ("equispaced", "random"):
        cf = center_fraction if center_fraction is not None else 0.32 / accel
        centre_n = int(round(ny * cf))
    else:
        centre_n = int(acs)
    total, centre_n = _budget(ny, accel, centre_n)
    centre = acs_block(ny, centre_n)
    n_outer = max(0, total - centre_n)
    outer_idx = np.array([k for k in range(ny) if not centre[0] <= k < centre[1]])
    mask[:, centre[0]:centre[1]] = True

    if family in ("uniform", "kt-uniform", "equispaced"):
        if net:
            spacing = (ny - centre_n) / max(n_outer, 1)
        else:
            spacing = float(accel)
            n_outer = ny
        base = float(rng.integers(0, max(1, int(np.ceil(spacing))))) if family == "equispaced" else 0.0
        for t in range(frames):
            offset = base + (t % max(1, int(round(spacing))) if family == "kt-uniform" else 0.0)
            mask[t, _equispaced(ny, n_outer, spacing, offset, centre)] = True
        return mask

    if family == "random":
        weights = np.ones(len(outer_idx))
    elif family == "kt-gaussian":
        sigma = ny / 6.0
        weights = np.exp(-0.5 * ((outer_idx - ny // 2) / sigma) ** 2)
    else:  # vd-random: polynomial decay of density towards the edges of k-space
        r = np.abs(outer_idx - ny // 2) / (ny / 2)
        weights = (1.0 - r) ** 2 + 1e-3
    p = weights / weights.sum()
    n_draw = min(n_outer, len(outer_idx))
    for t in range(frames):
        chosen = rng.choice(outer_idx, size=n_draw, replace=False, p=p) if n_draw else np.array([], dtype=int)
        mask[t, chosen] = True
    return mask


def achieved_acceleration(mask: np.ndarray) -> float:
    """Net acceleration of a line mask of any leading shape: lines available / lines acquired."""
    mask = np.asarray(mask, dtype=bool)
    return float(mask.size / max(int(mask.sum()), 1))


def centre_run(lines: np.ndarray) -> tuple[int, int]:
    """The contiguous run of true entries through ``ny // 2`` of a ``(ny,)`` line vector: ``(start, stop)``.

    ``stop`` is exclusive; when line ``ny // 2`` itself is false the run is
    empty, ``(ny // 2, ny // 2)``. The one centre-run rule behind the ACS
    length of a mask, the calibration lines of a frame and the calibration
    block a replay announces.
    """
    lines = np.asarray(lines, dtype=bool)
    ny = lines.shape[0]
    c = ny // 2
    if not lines[c]:
        return c, c
    start, stop = c, c + 1
    while start > 0 and lines[start - 1]:
        start -= 1
    while stop < ny and lines[stop]:
        stop += 1
    return start, stop


def lines_in_every_frame(mask: np.ndarray) -> np.ndarray:
    """``(ny,)``: the lines a ``(..., ny)`` mask samples in every frame."""
    return np.asarray(mask, dtype=bool).reshape(-1, np.shape(mask)[-1]).all(axis=0)


def acs_lines(mask: np.ndarray) -> int:
    """Length of the contiguous run of lines around ``ny // 2`` sampled in every frame."""
    start, stop = centre_run(lines_in_every_frame(mask))
    return stop - start


def line_mask_from_array(array: np.ndarray, ny: int, frames: int) -> np.ndarray:
    """Interpret a mask array from a file as ``(frames, ny)`` lines, used as it is.

    Accepts ``(ny,)``; a 2-D k-space mask ``(ky, kx)`` or ``(kx, ky)`` whose
    lines are constant along the readout; a 2-D ``(frames, ny)`` line mask;
    or a 3-D kt mask ``(frames, ky, kx)`` (CMRxRecon 2024 as h5py sees it).
    A single-frame mask is repeated over ``frames``.
    """
    a = np.asarray(array) != 0
    if a.ndim == 1:
        lines = a[None]
    elif a.ndim == 2:
        if a.shape == (frames, ny) and not (a.shape[0] == ny and np.all(a == a[:, :1])):
            lines = a
        elif a.shape[0] == ny and np.all(a == a[:, :1]):
            lines = a[:, 0][None]
        elif a.shape[1] == ny and np.all(a == a[:1, :]):
            lines = a[0][None]
        else:
            raise ValueError(f"cannot read a {a.shape} array as a line mask for ny={ny}, frames={frames}")
    elif a.ndim == 3:
        if a.shape[1] == ny:
            lines = a.any(axis=2)
        elif a.shape[2] == ny:
            lines = a.any(axis=1)
        else:
            raise ValueError(f"3-D mask {a.shape} has no axis of length ny={ny}")
    else:
        raise ValueError(f"mask must be 1-, 2- or 3-D, got {a.shape}")
    if lines.shape[-1] != ny:
        raise ValueError(f"mask has {lines.shape[-1]} lines, the scan {ny}")
    if lines.shape[0] == 1:
        lines = np.repeat(lines, frames, axis=0)
    if lines.shape[0] != frames:
        raise ValueError(f"mask has {lines.shape[0]} frames, the scan {frames}")
    return lines


__all__ = ["FAMILIES", "line_mask", "achieved_acceleration", "acs_lines", "acs_block", "line_mask_from_array"]
