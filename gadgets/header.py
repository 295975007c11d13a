"""Reading the ISMRMRD header: one rule for the time dimension, one for readout oversampling.

The gadgets (streaming, header first) and the simulator's file readers
(whole files) read the same two facts from a header; both call these
functions so a file replayed through the host is framed and cropped the way
the reader understood it.

Time dimension. ISMRMRD counts frames of a series in one of two counters:
``phase`` (cardiac phases of an ECG-gated cine) or ``repetition`` (repeated
acquisitions: real-time imaging). The header's ``encodingLimits`` say which
spans frames. Rule: ``phase`` when the phase limit's maximum is above 0,
else ``repetition``. A header whose limits span neither (a single frame, or
limits left out) declares no cardiac phases, so its time counter is the
repetition; its frames are the same either way while both counters stay 0.

Readout oversampling. The ratio of the encoded to the recon field of view
along the readout (``encodedSpace.fieldOfView_mm.x / reconSpace.fieldOfView_mm.x``):
the ISMRMRD definition, and what Gadgetron's RemoveROOversamplingGadget uses.
The sample counts alone cannot tell oversampling from an interpolated recon
matrix (a recon matrix of the full readout at half the field of view).
"""
from __future__ import annotations

from typing import Any

TIME_DIMENSIONS = ("phase", "repetition")


def _limit_maximum(limits: Any, name: str) -> int:
    lim = getattr(limits, name, None) if limits is not None else None
    value = getattr(lim, "maximum", None) if lim is not None else None
    return int(value) if value is not None else 0


def time_dimension(header: Any, override: str = "") -> str:
    """``"phase"`` or ``"repetition"``: ``override`` when given (a pipeline property), else by the header's limits.

    ``header`` is an ``ismrmrd.xsd.ismrmrdHeader``; see the module docstring
    for the rule.
    """
    if override:
        if override not in TIME_DIMENSIONS:
            raise ValueError(f"time_dimension must be 'phase' or 'repetition', not {override!r}")
        return override
    limits = header.encoding[0].encodingLimits if header.encoding else None
    return "phase" if _limit_maximum(limits, "phase") > 0 else "repetition"


def oversampling_factor(header: Any) -> float:
    """Encoded over recon field of view along the readout; 1.0 when absent, unreadable or not above 1."""
    try:
        enc = header.encoding[0]
        ratio = float(enc.encodedSpace.fieldOfView_mm.x) / float(enc.reconSpace.fieldOfView_mm.x)
    except (AttributeError, IndexError, TypeError, ZeroDivisionError):
        return 1.0
    return ratio if ratio > 1.0 + 1e-3 else 1.0


__all__ = ["TIME_DIMENSIONS", "time_dimension", "oversampling_factor"]
