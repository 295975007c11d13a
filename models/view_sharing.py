"""View sharing: fill the lines a frame did not measure from the nearest frame that did.

A real-time cine at 8x measures 1/8 of k-space per frame, but a stream that
has run for a few frames holds almost every line, measured recently. View
sharing puts each missing line of frame ``t`` together from the frame nearest
in time that measured it (ties between ``t-d`` and ``t+d``: the average of
both), looking no later than ``latest`` (``t`` for causal use, ``t+1`` for a
centred window with one frame of look-ahead). The result is a nearly full
k-space whose image has little aliasing but some temporal blurring; the
networks take it as input and data consistency keeps frame ``t``'s own
measured lines.

Two forms of the same rule:

- :func:`view_share` on a whole series in memory (training, evaluation);
- :class:`LineHistory` for a stream (the gadget): it keeps, per line, only
  the latest measurement, ``O(coils * ny * nx)`` whatever the scan length,
  and :func:`add_lookahead` adds frame ``t+1``'s lines to frame ``t``'s
  causal view sharing.

Both give identical k-space for the same series (tested).

Shapes: k-space ``(T, C, ny, nx)`` or ``(C, ny, nx)`` complex, line masks
``(T, ny)`` / ``(ny,)`` bool (phase-encode lines; readouts fully sampled).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEVER = -(1 << 30)  # source index of a line no frame measured yet


def view_share(kspace: np.ndarray, masks: np.ndarray, t: int, latest: int | None = None,
               earliest: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """View-shared k-space of frame ``t`` from frames ``earliest..latest`` of a series.

    Args:
        kspace: ``(T, C, ny, nx)`` measured k-space, zeros where not sampled.
        masks: ``(T, ny)`` line masks.
        t: the frame to fill.
        latest: the last frame that may be used (default ``t``: causal).
        earliest: the first frame that may be used.
    Returns:
        ``(C, ny, nx)`` k-space and ``(ny,)`` bool: lines filled (measured in
        some frame of the range).
    """
    n = kspace.shape[0]
    latest = t if latest is None else min(latest, n - 1)
    if not earliest <= t <= latest:
        raise ValueError(f"frame {t} outside the range {earliest}..{latest}")
    masks = np.asarray(masks, dtype=bool)
    out = kspace[t] * masks[t][None, :, None]
    filled = masks[t].copy()
    missing = ~filled
    for d in range(1, max(t - earliest, latest - t) + 1):
        if not missing.any():
            break
        before = masks[t - d] & missing if t - d >= earliest else np.zeros_like(missing)
        after = masks[t + d] & missing if t + d <= latest else np.zeros_like(missing)
        both = before & after
        only_b, only_a = before & ~both, after & ~both
        if only_b.any():
            out[:, only_b] = kspace[t - d][:, only_b]
        if only_a.any():
            out[:, only_a] = kspace[t + d][:, only_a]
        if both.any():
            out[:, both] = 0.5 * (kspace[t - d][:, both] + kspace[t + d][:, both])
        filled |= before | after
        missing &= ~(before | after)
    return out.astype(kspace.dtype, copy=False), filled


@dataclass
class SharedFrame:
    """A frame's causal view sharing: k-space, filled lines, and which frame each line came from."""

    kspace: np.ndarray    # (C, ny, nx)
    filled: np.ndarray    # (ny,) bool
    source: np.ndarray    # (ny,) int frame index, NEVER where not filled
    index: int


class LineHistory:
    """The latest measurement of every k-space line of one stream (one slice).

    ``share(kspace, mask, t)`` returns frame ``t``'s causal view sharing
    (its own lines, the rest from the latest earlier frame that measured
    them) and then remembers ``t``'s lines. Frames should come in time order
    (real time); one that comes late uses only earlier measurements and
    overwrites none that are later. A frame with a new matrix or coil count
    restarts the history.
    """

    def __init__(self) -> None:
        self.kspace: np.ndarray | None = None
        self.source: np.ndarray | None = None

    def share(self, kspace: np.ndarray, mask: np.ndarray, t: int) -> SharedFrame:
        mask = np.asarray(mask, dtype=bool)
        if self.kspace is None or self.kspace.shape != kspace.shape:
            self.kspace = np.zeros_like(kspace)
            self.source = np.full(kspace.shape[-2], NEVER, dtype=np.int64)
        older = self.source < t
        use = older & ~mask & (self.source != NEVER)
        out = kspace * mask[None, :, None]
        out[:, use] = self.kspace[:, use]
        source = np.where(mask, t, np.where(use, self.source, NEVER))
        newer = mask & (self.source <= t)  # a frame arriving late never overwrites a later measurement
        self.kspace[:, newer] = kspace[:, newer]
        self.source[newer] = t
        return SharedFrame(out, mask | use, source, t)


def add_lookahead(frame: SharedFrame, next_kspace: np.ndarray, next_mask: np.ndarray) -> np.ndarray:
    """Frame ``t``'s view sharing with frame ``t+1`` allowed (centred window): a line measured at
    ``t+1`` replaces one from ``t-2`` or earlier, and is averaged with one from ``t-1``."""
    next_mask = np.asarray(next_mask, dtype=bool)
    t = frame.index
    distance = np.where(frame.source == NEVER, 1 << 30, t - frame.source)
    replace = next_mask & (distance > 1)
    average = next_mask & (distance == 1)
    out = frame.kspace.copy()
    out[:, replace] = next_kspace[:, replace]
    out[:, average] = 0.5 * (out[:, average] + next_kspace[:, average])
    return out


__all__ = ["view_share", "LineHistory", "SharedFrame", "add_lookahead", "NEVER"]
