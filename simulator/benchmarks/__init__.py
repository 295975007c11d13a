"""Benchmarks: scripts that measure and print, never assert (``streamrecon bench NAME``)."""
from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def record_path(path: str | os.PathLike) -> str:
    """A file as a record names it: relative to the repository when inside it, else its name alone
    (a record must not carry the machine's folders)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(REPOSITORY))
    except ValueError:
        return resolved.name
