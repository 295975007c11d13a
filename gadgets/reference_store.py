"""A persistent store of reference-contrast images for multi-contrast reconstruction.

Gadgetron starts a new process per scan, so a reference contrast acquired
in an earlier scan of the same exam must outlive its process (and the host
restarting). Each reference is two files in one folder:

- ``<key>.npz``: the coil-combined reference image (``image``, complex64,
  on its recon matrix), written with ``np.savez`` and read with
  ``allow_pickle=False``;
- ``<key>.json``: frame of reference UID, slice position and orientation,
  field of view, contrast, measurement id, protocol and the time it was stored.

``key`` is a hash of the frame of reference UID and the slice position
rounded to 0.1 mm, so any UID text is safe as a file name. Files are written
to a temporary name and renamed, the JSON last, so a reader never sees half
an entry. Entries older than ``max_age_s`` are not used (and are deleted by
:meth:`ReferenceStore.purge`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

POSITION_DECIMALS = 1  # mm


def default_folder() -> Path:
    env = os.environ.get("STREAMRECON_REFERENCE_STORE")
    return Path(env) if env else Path.home() / ".cache" / "streamrecon" / "references"


def position_text(position: Sequence[float]) -> str:
    return ",".join(f"{float(v):.{POSITION_DECIMALS}f}" for v in position)


def store_key(frame_of_reference_uid: str, position: Sequence[float]) -> str:
    text = f"{frame_of_reference_uid}|{position_text(position)}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class StoredReference:
    image: np.ndarray
    meta: dict[str, Any]
    age_s: float


class ReferenceStore:
    """References by (frame of reference UID, slice position) in ``folder``."""

    def __init__(self, folder: str | Path | None = None, max_age_s: float = 7200.0) -> None:
        self.folder = Path(folder) if folder else default_folder()
        self.max_age_s = float(max_age_s)

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.npz", self.folder / f"{key}.json"

    def put(self, frame_of_reference_uid: str, position: Sequence[float], image: np.ndarray,
            meta: dict[str, Any] | None = None) -> Path:
        """Store (or replace) the reference of one slice; returns the JSON path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        key = store_key(frame_of_reference_uid, position)
        npz, card = self._paths(key)
        info = {**(meta or {}), "frame_of_reference_uid": frame_of_reference_uid,
                "position_mm": [float(v) for v in position], "shape": list(np.shape(image)),
                "stored_unix": time.time()}
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, image=np.asarray(image, dtype=np.complex64))
        os.replace(tmp, npz)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=1)
        os.replace(tmp, card)
        return card

    def get(self, frame_of_reference_uid: str, position: Sequence[float],
            now: float | None = None) -> tuple[StoredReference | None, str]:
        """``(reference, "")`` or ``(None, why not)``."""
        if not frame_of_reference_uid:
            return None, "the header has no frame of reference UID"
        npz, card = self._paths(store_key(frame_of_reference_uid, position))
        if not card.exists() or not npz.exists():
            return None, f"no stored reference for this frame of reference at slice position {position_text(position)} mm"
        try:
            info = json.loads(card.read_text())
            with np.load(npz, allow_pickle=False) as data:
                image = np.array(data["image"])
        except (OSError, ValueError, KeyError) as exc:
            return None, f"stored reference unreadable: {type(exc).__name__}: {exc}"
        if info.get("frame_of_reference_uid") != frame_of_reference_uid:
            return None, "stored reference belongs to another frame of reference (hash collision)"
        age = (time.time() if now is None else now) - float(info.get("stored_unix", 0))
        if age > self.max_age_s:
            return None, f"stored reference is {age:.0f} s old, over the {self.max_age_s:.0f} s age limit"
        return StoredReference(image, info, age), ""

    def purge(self, now: float | None = None) -> int:
        """Delete entries over the age limit; returns how many went."""
        if not self.folder.is_dir():
            return 0
        now = time.time() if now is None else now
        gone = 0
        for card in self.folder.glob("*.json"):
            try:
                stored = float(json.loads(card.read_text()).get("stored_unix", 0))
            except (OSError, ValueError):
                continue
            if now - stored > self.max_age_s:
                for p in self._paths(card.stem):
                    p.unlink(missing_ok=True)
                gone += 1
        return gone


__all__ = ["ReferenceStore", "StoredReference", "store_key", "default_folder"]
