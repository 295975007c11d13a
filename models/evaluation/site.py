"""A site's own data as evaluation cases: ``streamrecon evaluate --data SOURCE``.

A cine (any SOURCE replay reads: a DICOM series folder, ``FILE.h5[:DATASET[:SLICE]]``
such as the shared Sunnybrook file, a .mat or .npy cine, a fully sampled
ISMRMRD file) becomes one cine case per slice: its magnitude frames, played
exactly like the built-in validation cases (synthetic smooth phase, 8
seeded coils, the same masks, the same anchors, the same network-minus-input
headline). A pair (``REFERENCE+TARGET``, two single-frame image sources of
one matrix, e.g. ``T2_FLAIR_T1pre_T1post.mat:T1_pre+T2_FLAIR_T1pre_T1post.mat:FLAIR``
or two DICOM folders) becomes a pair case for the multi-contrast table.

Sources without a fully sampled truth (an undersampled ISMRMRD file) cannot
be scored and are refused with the reason.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .cine import Case


class SiteDataError(ValueError):
    """The source cannot be an evaluation case; the text says why, naming the source."""


def _unit(frames: np.ndarray) -> np.ndarray:
    frames = np.abs(np.asarray(frames)).astype(np.float32)
    return frames / max(float(frames.max()), 1e-12)


def _scans(source: str):
    from simulator.sources import load_source  # inside: models sits below simulator; a site's files are read its way

    # One coil: only the truth is used here; evaluation simulates its own coils, seeded like the
    # built-in cases.
    return load_source(source, n_coils=1, seed=0)


def _label(source: str) -> str:
    head = source.rstrip("/")
    name = Path(head.split(":")[0]).name.split(".")[0] if ":" in head else Path(head).name.split(".")[0]
    rest = head.split(":", 1)[1].removesuffix(":all").replace(":", "/") if ":" in head and not Path(head).exists() else ""
    return f"{name}/{rest}" if rest else name


def site_cine_cases(source: str, frames: int | None = None) -> list:
    """``[Case]``: one per slice of ``source``'s cine (magnitude, max 1), the first ``frames`` frames."""

    scans = _scans(source)
    if len(scans) != 1:
        raise SiteDataError(f"{source}: a multi-contrast exam, not a cine; give one contrast (or use --task pair)")
    scan = scans[0]
    if not scan.has_truth:
        raise SiteDataError(f"{source}: undersampled, so there is no fully sampled truth to score against")
    if scan.frames < 3:
        raise SiteDataError(f"{source}: {scan.frames} frame(s); a cine case needs at least 3 (the network's window)")
    label = _label(source)
    cases = []
    for s in range(scan.slices):
        name = label if scan.slices == 1 else f"{label}/slice{s}"
        cases.append(Case(name, _unit(scan.reference[s, :frames])))
    return cases


def site_pairs(source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (reference (slices, ny, nx), target (slices, ny, nx))}`` from ``REFERENCE+TARGET``."""
    if "+" not in source or Path(source).exists():
        raise SiteDataError(f"{source}: a pair is REFERENCE+TARGET (two image sources joined by '+')")
    scans = _scans(source)
    if len(scans) != 2:
        raise SiteDataError(f"{source}: expected a reference and a target, got {len(scans)} scans")
    ref, tgt = scans
    if not (ref.has_truth and tgt.has_truth):
        raise SiteDataError(f"{source}: a side is undersampled, so there is no fully sampled truth to score against")
    if ref.recon_shape != tgt.recon_shape:
        raise SiteDataError(f"{source}: reference {ref.recon_shape} and target {tgt.recon_shape} differ in matrix")
    name = "->".join(_label(p) for p in source.split("+", 1))
    return {name: (_unit(ref.reference[:, 0]), _unit(tgt.reference[:, 0]))}


__all__ = ["site_cine_cases", "site_pairs", "SiteDataError"]
