"""A persistent store of reference-contrast images for multi-contrast reconstruction.

Gadgetron starts a new process per scan, so a reference contrast acquired
in an earlier scan of the same exam must outlive its process (and the host
restarting). The store is the host's, not a client's: its folder, age limit
and size bounds come from the host operator (:meth:`StoreSettings.from_settings`:
the operator settings ``reference_store`` and ``reference_store_max_*``,
:mod:`gadgets.host_settings`), never from a pipeline property a client sends.

Each reference is two files in one folder:

- ``<key>.npz``: the coil-combined reference image (``image``, complex64,
  on its recon matrix), written with ``np.savez`` and read with
  ``allow_pickle=False``;
- ``<key>.json``: patient/study identity hash, frame of reference UID, slice
  position and orientation, field of view, contrast, measurement id and the
  time it was stored.

``key`` hashes the identity, the frame of reference UID and the slice
position rounded to 0.1 mm, so any header text is safe as a file name and a
reference of one patient can never be looked up under another's identity.
Files are written to a temporary name and renamed, the JSON last, so a
reader never sees half an entry. A match needs the same identity, frame of
reference, slice position (within the rounding) and slice orientation, and
an age under the limit; anything else is no match, with the reason.
Entries past the age limit are deleted by :meth:`ReferenceStore.purge`
(the host calls it at start and hourly, the gadget when it opens the store);
the store holds at most ``max_entries`` entries and ``max_bytes`` bytes, the
oldest going first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import host_settings

log = logging.getLogger(__name__)

POSITION_DECIMALS = 1  # mm
ORIENTATION_TOLERANCE = 1e-3  # direction cosines
PURGE_INTERVAL_S = 3600.0


def default_folder() -> Path:
    """Where the store lives when the operator names no folder."""
    return Path.home() / ".cache" / "streamrecon" / "references"


@dataclass(frozen=True)
class StoreSettings:
    """The host operator's settings for the store."""

    folder: Path
    max_age_s: float = 7200.0
    max_entries: int = 512
    max_bytes: int = 256 * 2 ** 20

    @classmethod
    def from_settings(cls, settings: host_settings.OperatorSettings | None = None) -> "StoreSettings":
        """The operator's store: ``settings`` (the host's), else those of this process (environment, config file)."""
        settings = settings if settings is not None else host_settings.load()
        for name in ("reference_store_max_age_s", "reference_store_max_entries", "reference_store_max_mb"):
            if not getattr(settings, name) > 0:
                raise ValueError(f"operator setting {name} must be positive, not {getattr(settings, name)!r}")
        folder = Path(settings.reference_store).expanduser() if settings.reference_store else default_folder()
        return cls(folder, float(settings.reference_store_max_age_s), int(settings.reference_store_max_entries),
                   int(settings.reference_store_max_mb * 2 ** 20))


def identity_hash(header: Any) -> str:
    """Hash of who and what was scanned, from the ISMRMRD header's subject, study and measurement fields;
    ``""`` when the header names neither a patient nor a study (then nothing may be paired across scans)."""
    subject = getattr(header, "subjectInformation", None)
    study = getattr(header, "studyInformation", None)
    info = getattr(header, "measurementInformation", None)

    def fields(obj: Any, names: Sequence[str]) -> list[str]:
        return [str(getattr(obj, n, None) or "").strip() for n in names]

    who = fields(subject, ("patientName", "patientID", "patientBirthdate", "patientGender"))
    what = fields(study, ("studyInstanceUID", "studyID", "accessionNumber", "studyDate"))
    if not any(who) and not any(what):
        return ""
    where = fields(info, ("frameOfReferenceUID", "patientPosition"))
    return hashlib.sha256("\x1f".join(who + what + where).encode()).hexdigest()


def position_text(position: Sequence[float]) -> str:
    return ",".join(f"{float(v):.{POSITION_DECIMALS}f}" for v in position)


def store_key(identity: str, frame_of_reference_uid: str, position: Sequence[float]) -> str:
    text = f"{identity}|{frame_of_reference_uid}|{position_text(position)}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class StoredReference:
    image: np.ndarray
    meta: dict[str, Any]
    age_s: float


class ReferenceStore:
    """References by (identity, frame of reference UID, slice position) in the host's folder."""

    def __init__(self, settings: StoreSettings | None = None, max_age_s: float | None = None) -> None:
        self.settings = settings or StoreSettings.from_settings()
        self.folder = Path(self.settings.folder)
        # a pipeline may ask for a stricter age limit, never a longer one than the host's
        self.max_age_s = min(self.settings.max_age_s, max_age_s) if max_age_s else self.settings.max_age_s

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.npz", self.folder / f"{key}.json"

    def put(self, identity: str, frame_of_reference_uid: str, position: Sequence[float], image: np.ndarray,
            meta: dict[str, Any] | None = None) -> Path | None:
        """Store (or replace) the reference of one slice; returns the JSON path, or None when refused."""
        image = np.asarray(image, dtype=np.complex64)
        if not identity or not frame_of_reference_uid:
            log.info("reference not stored: the header names no patient/study or no frame of reference")
            return None
        if image.nbytes > self.settings.max_bytes:
            log.warning("reference not stored: %d bytes over the store's %d", image.nbytes, self.settings.max_bytes)
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        key = store_key(identity, frame_of_reference_uid, position)
        npz, card = self._paths(key)
        info = {**(meta or {}), "identity": identity, "frame_of_reference_uid": frame_of_reference_uid,
                "position_mm": [float(v) for v in position], "shape": list(image.shape), "stored_unix": time.time()}
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, image=image)
        os.replace(tmp, npz)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=1)
        os.replace(tmp, card)
        self.enforce_bounds()
        return card

    def get(self, identity: str, frame_of_reference_uid: str, position: Sequence[float],
            slice_dir: Sequence[float] | None = None, now: float | None = None) -> tuple[StoredReference | None, str]:
        """``(reference, "")`` or ``(None, why not)``."""
        if not identity:
            return None, "the header names no patient or study, so no stored reference may be used"
        if not frame_of_reference_uid:
            return None, "the header has no frame of reference UID"
        npz, card = self._paths(store_key(identity, frame_of_reference_uid, position))
        if not card.exists() or not npz.exists():
            return None, (f"no stored reference of this patient and study in this frame of reference at slice "
                          f"position {position_text(position)} mm")
        try:
            info = json.loads(card.read_text())
            with np.load(npz, allow_pickle=False) as data:
                image = np.array(data["image"])
        except (OSError, ValueError, KeyError) as exc:
            return None, f"stored reference unreadable: {type(exc).__name__}: {exc}"
        if info.get("identity") != identity or info.get("frame_of_reference_uid") != frame_of_reference_uid:
            return None, "stored reference belongs to another patient, study or frame of reference"
        stored_pos = info.get("position_mm", [])
        if len(stored_pos) != 3 or not np.allclose(stored_pos, position, atol=10 ** -POSITION_DECIMALS):
            return None, "stored reference is at another slice position"
        if slice_dir is not None and not np.allclose(info.get("slice_dir", [np.nan] * 3), slice_dir,
                                                     atol=ORIENTATION_TOLERANCE):
            return None, "stored reference has another slice orientation"
        age = (time.time() if now is None else now) - float(info.get("stored_unix", 0))
        if age > self.max_age_s:
            return None, f"stored reference is {age:.0f} s old, over the {self.max_age_s:.0f} s age limit"
        return StoredReference(image, info, age), ""

    def _entries(self) -> list[tuple[float, str, int]]:
        """``(stored_unix, key, bytes)`` of every entry; unreadable cards count as oldest."""
        out = []
        for card in self.folder.glob("*.json"):
            npz = card.with_suffix(".npz")
            try:
                stored = float(json.loads(card.read_text()).get("stored_unix", 0))
            except (OSError, ValueError, AttributeError):
                stored = 0.0
            size = (npz.stat().st_size if npz.exists() else 0) + card.stat().st_size
            out.append((stored, card.stem, size))
        return sorted(out)

    def _remove(self, key: str) -> None:
        for p in self._paths(key):
            p.unlink(missing_ok=True)

    def purge(self, now: float | None = None) -> int:
        """Delete entries over the host's age limit; returns how many went."""
        if not self.folder.is_dir():
            return 0
        now = time.time() if now is None else now
        gone = 0
        for stored, key, _ in self._entries():
            if now - stored > self.settings.max_age_s:
                self._remove(key)
                gone += 1
        return gone

    def enforce_bounds(self) -> int:
        """Delete the oldest entries until at most ``max_entries`` and ``max_bytes`` remain; returns how many went."""
        entries = self._entries()
        total = sum(size for _, _, size in entries)
        gone = 0
        while entries and (len(entries) > self.settings.max_entries or total > self.settings.max_bytes):
            _, key, size = entries.pop(0)
            self._remove(key)
            total -= size
            gone += 1
        return gone


def start_purging(store: ReferenceStore, interval_s: float = PURGE_INTERVAL_S) -> threading.Event:
    """Purge now, then every ``interval_s`` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()

    def purge_once() -> None:
        try:
            gone = store.purge()
            if gone:
                log.info("reference store %s: purged %d entries past %.0f s", store.folder, gone, store.max_age_s)
        except OSError as exc:
            log.warning("reference store %s: purge failed: %s", store.folder, exc)

    def loop() -> None:
        while not stop.wait(interval_s):
            purge_once()

    purge_once()
    threading.Thread(target=loop, name="reference-store-purge", daemon=True).start()
    return stop


__all__ = ["ReferenceStore", "StoredReference", "StoreSettings", "identity_hash", "store_key", "default_folder",
           "position_text", "start_purging"]
