"""What the simulated scanner acquires: a fully sampled k-space series and its truth.

A :class:`Scan` is the common currency of the simulator: every reader
(files, images, phantoms) returns one (or a list for multi-contrast exams),
and the header, acquisition ordering and scoring all start from it.

Array conventions (as in :mod:`models.fft`): k-space centre at index
``n // 2`` on both axes, centered orthonormal FFTs; ``ky`` is the
phase-encode axis, ``kx`` the readout, which carries the readout
oversampling (``kx = readout_oversampling * nx``); the object fills the
central ``nx`` columns of the oversampled field of view.
"""
from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass, field

import numpy as np

from models.coils import rss, sense_combine
from models.fft import fft2c, ifft2c
from models.phantoms import brain_pair, cardiac_cine
from models.synthetic import coil_maps as synthetic_coil_maps
from models.synthetic import smooth_phase

TIME_DIMENSIONS = ("phase", "repetition")


@dataclass
class RawStream:
    """A file's own stream, replayed as it is: its XML header and every readout in file order.

    Noise, calibration and navigator readouts are kept, with their own
    acquisition headers, so a host sees exactly what the scanner measured
    (its pre-whitening works on the file's own noise scan).
    """

    xml: str
    acquisitions: list


def dicom_uid(name: str, seed: int, what: str) -> str:
    """A deterministic DICOM-style UID (2.25.<uuid int>) for reproducible runs."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamrecon/{what}/{name}/{seed}").int)


def _kspace_axis(axis: int, doc: str) -> property:
    """A read-only ``int`` property: the length of ``kspace`` along ``axis``."""
    return property(lambda self: int(self.kspace.shape[axis]), doc=doc)


@dataclass
class Scan:
    """One fully sampled (multi-)slice, multi-frame acquisition and its ground truth.

    ``kspace``: ``(slices, frames, coils, ky, kx)`` complex64, fully sampled;
    ``kx`` includes the readout oversampling.
    ``reference``: ``(slices, frames, ny, nx)`` complex64 coil-combined truth
    on the recon matrix (``nx = kx // readout_oversampling``, ``ny = ky``).
    ``coil_maps``: ``(slices, coils, ny, nx)`` true maps on the recon matrix
    (``None`` when unknown, e.g. measured data).
    ``fov_mm``: recon field of view (x readout, y phase encode, z slice thickness).
    ``frame_ms``: duration of one frame (real time) or one cardiac phase
    (gated: the temporal resolution; the RR interval is ``frames * frame_ms``).
    ``time_dimension``: ``"phase"`` (gated cine: frames go to ``idx.phase``)
    or ``"repetition"`` (real time: frames go to ``idx.repetition``).
    """

    kspace: np.ndarray
    reference: np.ndarray
    coil_maps: np.ndarray | None
    fov_mm: tuple[float, float, float]
    readout_oversampling: int
    slice_positions_mm: np.ndarray
    read_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    phase_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    slice_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
    frame_ms: float = 36.0
    time_dimension: str = "repetition"
    contrast: int = 0
    name: str = ""
    frame_of_reference_uid: str = field(default_factory=lambda: dicom_uid("anon", 0, "for"))
    measurement_id: str = "streamrecon_00000"
    protocol_name: str = ""
    field_strength_t: float = 1.5
    tr_ms: float | None = None
    te_ms: float | None = None
    flip_angle_deg: float | None = None
    # fastMRI-style data: phase-encode columns outside the encoding limits
    # (zero padding) are part of the matrix but never sent as readouts.
    encoded_lines: tuple[int, int] | None = None
    # Centre line of the phase-encode axis if it is not ky // 2 (asymmetric
    # or partial Fourier acquisitions read from files).
    ky_center: int | None = None
    # An undersampling mask shipped with the data (CMRxRecon masks, fastMRI
    # test sets), ``(frames, ky)`` bool, used when replay asks for the file's mask.
    file_mask: np.ndarray | None = None
    # Lines that hold measured data, ``(slices, frames, ky)`` bool, when the
    # source itself is undersampled (an undersampled ISMRMRD file, CMRxRecon
    # ``kus``); None = fully sampled. Such a source has no fully sampled
    # truth: ``reference`` is then only its zero-filled picture, never a score's.
    acquired: np.ndarray | None = None
    raw: RawStream | None = None
    # Trigger times of the frames (ms from the R wave) when the source stored them (a DICOM cine,
    # the Sunnybrook file); DICOM output uses them, else frame * frame_ms.
    trigger_times_ms: np.ndarray | None = None
    # Distinct k-space lines a file flagged as parallel-imaging calibration (its ACS block, also when
    # sent as separate calibration readouts the imaging mask does not show); None when not a file.
    calibration_lines: int | None = None
    # What a reader chose for the user (a dataset, a slice of several), printed by replay.
    notes: list[str] = field(default_factory=list)

    @property
    def has_truth(self) -> bool:
        """Whether ``reference`` is a fully sampled ground truth that scores may use."""
        return self.acquired is None

    def __post_init__(self) -> None:
        if self.kspace.ndim != 5:
            raise ValueError(f"kspace must be (slices, frames, coils, ky, kx), got {self.kspace.shape}")
        if self.time_dimension not in TIME_DIMENSIONS:
            raise ValueError(f"time_dimension must be one of {TIME_DIMENSIONS}, got {self.time_dimension!r}")
        s, f, _, ky, kx = self.kspace.shape
        if kx % self.readout_oversampling:
            raise ValueError(f"encoded readout {kx} is not a multiple of the oversampling {self.readout_oversampling}")
        if self.reference.shape[:2] != (s, f):
            raise ValueError(f"reference {self.reference.shape} does not match kspace {self.kspace.shape}")
        self.slice_positions_mm = np.asarray(self.slice_positions_mm, dtype=np.float32).reshape(s, 3)

    # The sizes are read off ``kspace`` (slices, frames, coils, ky, kx), never stored twice.
    slices = _kspace_axis(0, "slices")
    frames = _kspace_axis(1, "frames per slice")
    coils = _kspace_axis(2, "receiver coils")
    ny = _kspace_axis(3, "phase-encode lines (the encoded matrix)")
    kx_encoded = _kspace_axis(4, "readout samples, oversampling included")

    @property
    def recon_shape(self) -> tuple[int, int]:
        return self.reference.shape[-2], self.reference.shape[-1]

    @property
    def measurement_uid(self) -> int:
        """32-bit id of the measurement as carried in every acquisition header."""
        return zlib.crc32(self.measurement_id.encode()) & 0xFFFFFFFF


def crop_readout(coil_images: np.ndarray, nx: int) -> np.ndarray:
    """Central ``nx`` columns of images reconstructed on the oversampled readout (last axis)."""
    kx = coil_images.shape[-1]
    start = kx // 2 - nx // 2
    return coil_images[..., start:start + nx]


def pad_readout(images: np.ndarray, kx: int) -> np.ndarray:
    """Zero-pad the last axis from ``nx`` to ``kx`` around the centre (the inverse of :func:`crop_readout`)."""
    nx = images.shape[-1]
    start = kx // 2 - nx // 2
    out = np.zeros(images.shape[:-1] + (kx,), dtype=np.complex64)
    out[..., start:start + nx] = images
    return out


def coil_images_to_recon(kspace: np.ndarray, nx: int, maps: np.ndarray | None = None) -> np.ndarray:
    """Coil-combine ``(..., coils, ky, kx)`` k-space onto the recon matrix.

    Inverse FFT, crop of the readout oversampling, then SENSE combination
    with ``maps`` (``(coils, ny, nx)``, broadcast over leading axes) or
    root-sum-of-squares when ``maps`` is None.
    """
    imgs = crop_readout(ifft2c(kspace), nx)
    if maps is None:
        return rss(imgs, axis=-3).astype(np.complex64)
    flat = imgs.reshape(-1, *imgs.shape[-3:])
    out = np.stack([sense_combine(x, maps) for x in flat])
    return out.reshape(imgs.shape[:-3] + imgs.shape[-2:])


def square_fov_mm(ny: int, nx: int, pixel_mm: tuple[float, float] | None = None, thickness_mm: float | None = None,
                  longest_side_mm: float = 300.0) -> tuple[float, float, float]:
    """The field of view ``(x, y, z)`` of an ``ny`` x ``nx`` image: from its pixel spacing ``(dy, dx)`` when
    known, else square pixels with the longer side ``longest_side_mm`` (a 192 x 156 heart is not stretched)."""
    if pixel_mm is None:
        step = longest_side_mm / max(ny, nx)
        pixel_mm = (step, step)
    return (nx * float(pixel_mm[1]), ny * float(pixel_mm[0]), float(thickness_mm or 8.0))


def scan_from_images(
    images: np.ndarray,
    *,
    n_coils: int = 8,
    readout_oversampling: int = 2,
    noise_std: float = 0.0,
    fov_mm: tuple[float, float, float] | None = None,
    slice_gap_mm: float = 10.0,
    time_dimension: str = "repetition",
    frame_ms: float = 36.0,
    seed: int = 0,
    name: str = "",
    contrast: int = 0,
    maps: np.ndarray | None = None,
    phase_rad: float = 0.8 * np.pi,
    measurement_id: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> Scan:
    """Simulate fully sampled multi-coil k-space from images.

    ``images``: ``(slices, frames, ny, nx)`` (2-D and 3-D inputs are taken
    as one slice / one frame). Complex images are used as they are; real
    (magnitude) images get a smooth synthetic phase of at most
    ``phase_rad`` per slice, constant over frames. Each frame is multiplied by
    coil maps defined on the oversampled field of view (``n_coils`` loops
    around it, :func:`models.synthetic.coil_maps`, the same for all slices
    unless ``maps`` ``(coils, ny, kx)`` is given), zero-padded along the
    readout to ``readout_oversampling * nx`` and Fourier transformed.
    ``noise_std`` is the standard deviation of complex white Gaussian noise
    added to k-space (``noise_std / sqrt(2)`` per real and imaginary part),
    independent per coil; the reference stays noise-free.
    ``fov_mm`` (x readout, y phase encode, z thickness) defaults to square
    pixels, 300 mm along the longer side (:func:`square_fov_mm`).
    ``slice_gap_mm`` is the distance between neighbouring slice centres
    along the slice direction, centred on 0.
    Because the maps satisfy ``sum |S|^2 = 1``, the reference equals the
    (phased) input images: the true SENSE combination of the coil images.
    """
    images = np.asarray(images)
    while images.ndim < 4:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be (slices, frames, ny, nx), got {images.shape}")
    if readout_oversampling not in (1, 2):
        raise ValueError("readout_oversampling must be 1 or 2")
    n_sl, n_fr, ny, nx = images.shape
    rng = np.random.default_rng(seed)
    if np.iscomplexobj(images):
        ref = images.astype(np.complex64)
    else:
        mag = images.astype(np.float32)
        ref = np.empty(images.shape, dtype=np.complex64)
        for s in range(n_sl):
            ph = smooth_phase((ny, nx), seed=seed + 17 * s + 1 + 1000 * contrast, max_rad=phase_rad)
            ref[s] = mag[s] * np.exp(1j * ph)[None]
    kx = readout_oversampling * nx
    if maps is None:
        maps = synthetic_coil_maps(n_coils, ny, kx, seed=seed)
    maps = np.asarray(maps, dtype=np.complex64)
    if maps.shape[1:] != (ny, kx):
        raise ValueError(f"coil maps {maps.shape} must be (coils, {ny}, {kx}) on the oversampled grid")
    ncoil = maps.shape[0]
    kspace = np.empty((n_sl, n_fr, ncoil, ny, kx), dtype=np.complex64)
    for s in range(n_sl):
        padded = pad_readout(ref[s], kx)  # (frames, ny, kx)
        kspace[s] = fft2c(maps[None] * padded[:, None]).astype(np.complex64)
    if noise_std > 0:
        noise = rng.normal(size=kspace.shape) + 1j * rng.normal(size=kspace.shape)
        kspace += (noise * (noise_std / np.sqrt(2))).astype(np.complex64)
    recon_maps = crop_readout(maps, nx)
    positions = np.zeros((n_sl, 3), dtype=np.float32)
    positions[:, 2] = (np.arange(n_sl) - (n_sl - 1) / 2) * slice_gap_mm
    return Scan(
        kspace=kspace,
        reference=ref,
        coil_maps=np.repeat(recon_maps[None], n_sl, axis=0),
        fov_mm=tuple(float(v) for v in (fov_mm or square_fov_mm(ny, nx))),
        readout_oversampling=readout_oversampling,
        slice_positions_mm=positions,
        frame_ms=float(frame_ms),
        time_dimension=time_dimension,
        contrast=contrast,
        name=name,
        frame_of_reference_uid=frame_of_reference_uid or dicom_uid(name or "images", seed, "for"),
        measurement_id=measurement_id or f"streamrecon_{zlib.crc32(f'{name}/{seed}/{contrast}'.encode()) % 100000:05d}",
        protocol_name=name,
    )


def phantom_scan(
    name: str = "cine",
    *,
    ny: int = 128,
    nx: int = 128,
    frames: int = 20,
    slices: int = 1,
    n_coils: int = 8,
    seed: int = 0,
    **kw,
) -> Scan | list[Scan]:
    """A built-in phantom as a :class:`Scan`.

    ``"cine"``: :func:`models.phantoms.cardiac_cine` per slice; slices run
    from base to apex (the heart shrinks, anatomy varies with the seed).
    ``"brain"``: ``[reference Scan (contrast 0, T1w), target Scan (contrast 1, T2w)]``
    from :func:`models.phantoms.brain_pair` (``ny`` is the matrix; ``frames`` is
    ignored: one frame), same coils and frame of reference, different
    measurement ids. Other keyword arguments go to :func:`scan_from_images`.
    """
    if name == "cine":
        vols = np.stack([
            cardiac_cine(ny, nx, frames, seed=seed + s, heart_scale=1.0 - 0.35 * s / max(slices - 1, 1) if slices > 1 else 1.0)
            for s in range(slices)
        ])
        kw.setdefault("time_dimension", "repetition")
        return scan_from_images(vols, n_coils=n_coils, seed=seed, name=kw.pop("scan_name", "phantom_cine"), **kw)
    if name == "brain":
        pairs = [brain_pair(ny, seed=seed + s) for s in range(slices)]
        ref = np.stack([p[0] for p in pairs])[:, None]
        tgt = np.stack([p[1] for p in pairs])[:, None]
        kw.setdefault("fov_mm", (220.0, 220.0, 5.0))
        kw.setdefault("frame_ms", 1000.0)
        for_uid = dicom_uid("phantom_brain", seed, "for")
        scans = []
        for contrast, imgs, label in ((0, ref, "T1w"), (1, tgt, "T2w")):
            scans.append(scan_from_images(imgs, n_coils=n_coils, seed=seed, name=f"phantom_brain_{label}", contrast=contrast,
                                          frame_of_reference_uid=for_uid, **kw))
        return scans
    raise ValueError(f"unknown phantom {name!r}; known: cine, brain")


__all__ = ["Scan", "RawStream", "dicom_uid", "scan_from_images", "square_fov_mm", "phantom_scan", "crop_readout", "pad_readout", "coil_images_to_recon"]
