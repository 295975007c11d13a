"""Refusing a scan the gadgets cannot reconstruct, by what its header says.

The gadgets grid readouts by their line counters: only Cartesian data
makes sense to them. A spiral or radial scan would go through and come out
as a meaningless picture, so it is refused up front with its trajectory
named (the embedded host does it before any data is read; under Gadgetron
the frame accumulator does it when it starts).
"""
from __future__ import annotations

from typing import Any

SUPPORTED_TRAJECTORIES = ("cartesian",)


def trajectory_of(header: Any) -> str:
    """The first encoding's trajectory as the header spells it (``cartesian`` when absent)."""
    encoding = getattr(header, "encoding", None) or []
    traj = getattr(encoding[0], "trajectory", None) if encoding else None
    return str(getattr(traj, "value", traj) or "cartesian")


def unsupported_reason(header: Any) -> str | None:
    """Why the gadgets cannot reconstruct this scan, or None when they can."""
    traj = trajectory_of(header)
    if traj not in SUPPORTED_TRAJECTORIES:
        return (f"trajectory {traj!r} is not supported: streamrecon's gadgets reconstruct Cartesian data only "
                f"(encoding/trajectory must be {' or '.join(SUPPORTED_TRAJECTORIES)})")
    return None


def require_supported(header: Any) -> None:
    """Raise ``ValueError`` naming the trajectory when the gadgets cannot reconstruct the scan."""
    reason = unsupported_reason(header)
    if reason is not None:
        raise ValueError(reason)
