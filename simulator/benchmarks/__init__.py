"""Benchmarks: scripts that measure and print, never assert (``streamrecon bench NAME``)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def scan_arguments(parser: argparse.ArgumentParser, *, matrix: int, frames: int, coils: int,
                   frame_ms: float = 36.0) -> None:
    """``--matrix``, ``--frames``, ``--coils``, ``--frame-ms``: the phantom scan a benchmark streams."""
    parser.add_argument("--matrix", type=int, default=matrix)
    parser.add_argument("--frames", type=int, default=frames)
    parser.add_argument("--coils", type=int, default=coils)
    parser.add_argument("--frame-ms", type=float, default=frame_ms)


def record_path(path: str | os.PathLike) -> str:
    """A file as a record names it: relative to the repository when inside it, else its name alone
    (a record must not carry the machine's folders)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(REPOSITORY))
    except ValueError:
        return resolved.name
