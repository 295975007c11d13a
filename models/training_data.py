"""Synthetic training samples from images: k-space simulation and augmentation (NumPy).

Everything a retrospective-undersampling study does, for one sample at a
time: augment an image (random crop and resize, flips, 90-degree rotations,
smooth random phase), put it in periodic cardiac-like motion (cine) or pair
it with its co-registered reference contrast (multi-contrast), simulate a
random number of coils with random synthetic maps, sample k-space with a
random mask family and acceleration (4x..12x by default), add noise, estimate
coil maps from the data as a scanner would, and form the zero-filled
SENSE-combined inputs and the fully sampled SENSE-combined target.

Scaling: each sample is divided by the robust maximum (99th percentile) of
its zero-filled target frame, exactly as ``models.inference`` does, so the
network sees the same intensity range in training and in use.

Masks come from ``models.masks.line_mask`` when that module is present;
otherwise from :func:`variable_density_lines` here (a Gaussian
variable-density line sampler with a fully sampled centre, different per
frame), so training never depends on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .coils import estimate_coil_maps
from .fft import fft2c, ifft2c

MASK_FAMILIES = ("kt-gaussian", "vd-random", "kt-uniform", "uniform", "equispaced", "random")


def variable_density_lines(rng: np.random.Generator, ny: int, frames: int, accel: float, acs: int) -> np.ndarray:
    """``(frames, ny)`` bool: ``acs`` central lines plus Gaussian-density random lines, about ``ny/accel`` per frame."""
    n_lines = max(int(round(ny / accel)), acs + 1)
    c = ny // 2
    out = np.zeros((frames, ny), dtype=bool)
    centre = np.arange(c - acs // 2, c - acs // 2 + acs)
    others = np.setdiff1d(np.arange(ny), centre)
    p = np.exp(-0.5 * ((others - c) / (0.28 * ny)) ** 2)
    p /= p.sum()
    for t in range(frames):
        out[t, centre] = True
        k = min(n_lines - acs, len(others))
        if k > 0:
            out[t, rng.choice(others, size=k, replace=False, p=p)] = True
    return out


def sample_line_masks(rng: np.random.Generator, ny: int, frames: int, accel: float, acs: int,
                      families: Sequence[str] = MASK_FAMILIES) -> tuple[np.ndarray, str]:
    """Random family, ``(frames, ny)`` bool masks; uses ``models.masks`` when available."""
    family = str(rng.choice(list(families)))
    try:
        from .masks import line_mask  # written by the physics owner; optional here
    except ImportError:
        return variable_density_lines(rng, ny, frames, accel, acs), "vd-gaussian(internal)"
    mask = np.asarray(line_mask(family, ny, frames, accel=accel, acs=acs, seed=int(rng.integers(1 << 31))), dtype=bool)
    return mask.reshape(frames, ny), family


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize over the last two axes of a real or complex array (separable linear interpolation)."""
    ny, nx = image.shape[-2:]
    ry = np.linspace(0, ny - 1, shape[0])
    rx = np.linspace(0, nx - 1, shape[1])
    y0 = np.clip(np.floor(ry).astype(int), 0, max(ny - 2, 0))
    x0 = np.clip(np.floor(rx).astype(int), 0, max(nx - 2, 0))
    fy, fx = (ry - y0)[:, None], (rx - x0)[None, :]
    y1, x1 = np.minimum(y0 + 1, ny - 1), np.minimum(x0 + 1, nx - 1)
    a, b = image[..., y0, :][..., x0], image[..., y0, :][..., x1]
    c, d = image[..., y1, :][..., x0], image[..., y1, :][..., x1]
    return (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)


def augment_geometry(rng: np.random.Generator, images: Sequence[np.ndarray], shape: tuple[int, int],
                     min_crop: float = 0.6) -> list[np.ndarray]:
    """The same random crop (fraction ``min_crop``..1 of each side), resize, flips and rot90 on every image."""
    ny, nx = images[0].shape[-2:]
    fy = rng.uniform(min_crop, 1.0)
    fx = float(np.clip(fy * rng.uniform(0.85, 1.15), min_crop, 1.0))
    cy, cx = max(int(ny * fy), 8), max(int(nx * fx), 8)
    y0, x0 = int(rng.integers(0, ny - cy + 1)), int(rng.integers(0, nx - cx + 1))
    k, flip_y, flip_x = int(rng.integers(4)), bool(rng.integers(2)), bool(rng.integers(2))
    out = []
    for im in images:
        im = im[..., y0:y0 + cy, x0:x0 + cx]
        im = np.rot90(im, k, axes=(-2, -1))
        if flip_y:
            im = im[..., ::-1, :]
        if flip_x:
            im = im[..., :, ::-1]
        out.append(resize(np.ascontiguousarray(im), shape))
    return out


def smooth_random_phase(rng: np.random.Generator, shape: tuple[int, int], max_rad: float = np.pi) -> np.ndarray:
    try:
        from .synthetic import smooth_phase
        return smooth_phase(shape, seed=int(rng.integers(1 << 31)), max_rad=max_rad).astype(np.float32)
    except ImportError:  # a low-order polynomial phase
        yy, xx = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
        c = rng.uniform(-1, 1, 6)
        ph = c[0] + c[1] * yy + c[2] * xx + c[3] * yy * xx + c[4] * yy ** 2 + c[5] * xx ** 2
        return (max_rad * ph / max(np.abs(ph).max(), 1e-6)).astype(np.float32)


def random_coil_maps(rng: np.random.Generator, n_coils: int, ny: int, nx: int) -> np.ndarray:
    from .synthetic import coil_maps
    return coil_maps(n_coils, ny, nx, seed=int(rng.integers(1 << 31)))


@dataclass
class SimulationSettings:
    """Ranges the augmentation draws from."""

    accel: tuple[float, float] = (4.0, 12.0)
    coils: tuple[int, int] = (4, 12)
    acs_fraction: float = 0.05           # central lines as a fraction of ny (>= 4 lines)
    noise: tuple[float, float] = (0.0, 0.02)  # k-space noise std relative to the image's RMS k-space
    families: tuple[str, ...] = MASK_FAMILIES

    def acs(self, ny: int) -> int:
        return max(4, int(round(self.acs_fraction * ny)))


def simulate_acquisition(rng: np.random.Generator, images: np.ndarray, masks: np.ndarray, n_coils: int,
                         noise_rel: float, maps: np.ndarray | None = None,
                         frames_out: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Multi-coil undersampled acquisition of ``images (T, ny, nx)`` with line ``masks (T, ny)``.

    Coil maps are estimated from the time-averaged sampled k-space (as the
    gadgets do); inputs are their SENSE zero-filled images, targets the
    SENSE combination of the fully sampled coil images with the same maps.
    Returns ``kspace (T, C, ny, nx)``, ``maps (C, ny, nx)``, ``zero_filled
    (T, ny, nx)``, ``target (T, ny, nx)``, all complex64.

    ``frames_out``: compute ``target`` only for these frames (``(len(frames_out), ny, nx)``, in that
    order) and no ``zero_filled``; noise is then drawn only where a frame is sampled, except on those
    frames (their fully sampled target carries its own noise). Samplers that need one frame's target
    use it: a window's simulation costs a fraction of the whole series'.
    """
    t, ny, nx = images.shape
    true_maps = random_coil_maps(rng, n_coils, ny, nx) if maps is None else maps
    full = fft2c(true_maps[None] * images[:, None])  # (T, C, ny, nx)
    rms = np.sqrt(np.mean(np.abs(full) ** 2))
    m = masks[:, None, :, None]
    if frames_out is None:
        noise = noise_rel * rms * (rng.standard_normal(full.shape) + 1j * rng.standard_normal(full.shape)) / np.sqrt(2)
        full = full + noise
        kspace = (full * m).astype(np.complex64)
    else:
        kspace = (full * m).astype(np.complex64)
        if noise_rel > 0:
            sigma = np.float32(noise_rel * rms / np.sqrt(2))
            for f in range(t):
                lines = np.nonzero(masks[f])[0]
                shape = (full.shape[1], len(lines), nx)
                kspace[f][:, lines] += sigma * (rng.standard_normal(shape, dtype=np.float32)
                                                + 1j * rng.standard_normal(shape, dtype=np.float32))
        full = full[list(frames_out)].astype(np.complex64)
        if noise_rel > 0:  # the fully sampled targets: the measured lines' noise, fresh noise elsewhere
            sigma = np.float32(noise_rel * rms / np.sqrt(2))
            extra = sigma * (rng.standard_normal(full.shape, dtype=np.float32)
                             + 1j * rng.standard_normal(full.shape, dtype=np.float32))
            for i, f in enumerate(frames_out):
                full[i] = np.where(m[f], kspace[f], full[i] + extra[i])
    counts = np.maximum(masks.sum(0), 1)[None, :, None]
    averaged = kspace.sum(0) / counts
    try:
        est = estimate_coil_maps(averaged)
    except ValueError:  # tiny matrices at high acceleration: no contiguous centre; use the central 4 lines anyway
        est = estimate_coil_maps(averaged, calib_lines=(ny // 2 - 2, ny // 2 + 2))
    target = np.sum(np.conj(est)[None] * ifft2c(full), axis=1).astype(np.complex64)
    if frames_out is not None:
        return {"kspace": kspace, "maps": est, "target": target}
    zf = np.sum(np.conj(est)[None] * ifft2c(kspace), axis=1)
    return {"kspace": kspace, "maps": est, "zero_filled": zf.astype(np.complex64), "target": target}


def _scale(zf_target: np.ndarray) -> float:
    return float(max(np.percentile(np.abs(zf_target), 99), 1e-8))


@dataclass
class CineSampler:
    """Random 3-frame cine windows for KGMgT.

    ``static_images``: real 2-D magnitude images put in periodic motion
    (real tissue texture with cardiac-like deformation). With probability
    ``phantom_fraction`` the built-in beating-heart phantom is used instead.
    ``causal_fraction`` of the windows are causal ``(t-2, t-1, t)``.
    A sample: ``frames (3, ny, nx)`` complex zero-filled in the order the
    model takes them ``(target, ref_mentor, ref_learner)``, ``target_image
    (ny, nx)``, ``kspace (C, ny, nx)``, ``mask (ny,)``, ``maps (C, ny, nx)``,
    all scaled by the robust maximum of the zero-filled target frame.
    """

    static_images: Sequence[np.ndarray]
    size: tuple[int, int] = (80, 80)
    frames: tuple[int, int] = (12, 25)
    phantom_fraction: float = 0.3
    cines: Sequence[np.ndarray] = ()   # real cines (T, ny, nx), e.g. CMRxRecon references; used with cine_fraction
    cine_fraction: float = 0.5
    causal_fraction: float = 0.3
    motion_px: tuple[float, float] = (1.0, 4.0)
    settings: SimulationSettings = field(default_factory=SimulationSettings)

    def cine(self, rng: np.random.Generator, n_frames: int) -> np.ndarray:
        ny, nx = self.size
        if self.cines and (rng.random() < self.cine_fraction or not self.static_images):
            real = np.asarray(self.cines[int(rng.integers(len(self.cines)))])
            video = augment_geometry(rng, [real], self.size, min_crop=0.6)[0]
            if not np.iscomplexobj(real):  # magnitude references get a smooth phase
                video = video * np.exp(1j * smooth_random_phase(rng, self.size))[None]
            return (video / max(float(np.abs(video).max()), 1e-8)).astype(np.complex64)
        if not self.static_images or rng.random() < self.phantom_fraction:
            from .phantoms import cardiac_cine
            big = cardiac_cine(ny + ny // 4, nx + nx // 4, n_frames, seed=int(rng.integers(1 << 31)))
            return augment_geometry(rng, [big], self.size, min_crop=0.75)[0].astype(np.complex64)
        from .synthetic import periodic_motion
        img = self.static_images[int(rng.integers(len(self.static_images)))]
        img = augment_geometry(rng, [img.astype(np.float32)], self.size)[0]
        img = img / max(float(np.abs(img).max()), 1e-8)
        img = img * np.exp(1j * smooth_random_phase(rng, self.size))
        return periodic_motion(img.astype(np.complex64), n_frames, amplitude_px=float(rng.uniform(*self.motion_px)),
                               seed=int(rng.integers(1 << 31)))

    def clip(self, rng: np.random.Generator, length: int) -> dict[str, np.ndarray]:
        """A whole short periodic clip for unsupervised (DDEI) training: ``zero_filled (L, ny, nx)``,
        ``kspace (L, C, ny, nx)``, ``mask (L, ny)``, ``maps``; ``target_image (L, ny, nx)`` is for
        validation only (the unsupervised loss never reads it). Scaled like ``__call__``."""
        s = self.settings
        video = self.cine(rng, length)
        if video.shape[0] != length:  # a real cine: take `length` consecutive frames (periodic)
            start = int(rng.integers(video.shape[0]))
            video = video[[(start + i) % video.shape[0] for i in range(length)]]
        ny = video.shape[-2]
        masks, _ = sample_line_masks(rng, ny, length, float(rng.uniform(*s.accel)), s.acs(ny), s.families)
        acq = simulate_acquisition(rng, video, masks, int(rng.integers(s.coils[0], s.coils[1] + 1)),
                                   float(rng.uniform(*s.noise)))
        sc = _scale(acq["zero_filled"])
        return {"zero_filled": acq["zero_filled"] / sc, "kspace": acq["kspace"] / sc, "mask": masks,
                "maps": acq["maps"], "target_image": acq["target"] / sc}

    def __call__(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        s = self.settings
        n_frames = int(rng.integers(self.frames[0], self.frames[1] + 1))
        video = self.cine(rng, n_frames)
        n_frames, ny = video.shape[0], video.shape[-2]  # a real cine keeps its own frame count
        accel = float(rng.uniform(*s.accel))
        masks, _ = sample_line_masks(rng, ny, n_frames, accel, s.acs(ny), s.families)
        acq = simulate_acquisition(rng, video, masks, int(rng.integers(s.coils[0], s.coils[1] + 1)),
                                   float(rng.uniform(*s.noise)))
        t = int(rng.integers(n_frames))
        causal = rng.random() < self.causal_fraction
        order = (t, t - 1, t - 2) if causal else (t, t - 1, t + 1)  # (target, mentor ref, learner ref)
        order = [i % n_frames for i in order]  # cine is periodic
        sc = _scale(acq["zero_filled"][t])
        return {"frames": acq["zero_filled"][order] / sc, "target_image": acq["target"][t] / sc,
                "kspace": acq["kspace"][t] / sc, "mask": masks[t], "maps": acq["maps"]}


def rigid_warp(image: np.ndarray, dy: float, dx: float, angle_deg: float) -> np.ndarray:
    """``image (ny, nx)`` rotated by ``angle_deg`` about its centre, then shifted by ``(dy, dx)`` pixels:
    bilinear, zeros outside (``out(x) = image(R^-1 (x - c - d) + c)``)."""
    ny, nx = image.shape
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    yy, xx = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
    a = np.deg2rad(angle_deg)
    y, x = yy - cy - dy, xx - cx - dx
    sy = np.cos(a) * y - np.sin(a) * x + cy
    sx = np.sin(a) * y + np.cos(a) * x + cx
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    fy, fx = sy - y0, sx - x0
    out = np.zeros(image.shape, dtype=np.result_type(image.dtype, np.float32))
    for oy, ox, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        iy, ix = y0 + oy, x0 + ox
        ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        out[ok] += w[ok] * image[iy[ok], ix[ok]]
    return out


@dataclass
class PairSampler:
    """Random reference/target pairs for SGF-MRI.

    ``pairs``: ``(reference, target)`` co-registered 2-D magnitude images.
    ``reference_dropout``: fraction of samples whose reference is zeroed, so
    the same weights serve the single-contrast fallback.
    Reference augmentation, as a real reference acquired in another series
    differs from its target: with probability ``misregistration`` a small
    rigid motion (shift up to ``max_shift_px``, rotation up to
    ``max_rotation_deg``; the gadget corrects shifts above 2 px, so the network
    must tolerate what is left), and Gaussian noise of ``reference_noise``
    (a range, relative to the reference's robust maximum).
    References the network must learn to distrust (the target stays right, so the loss teaches the
    reference gate to close): ``wrong_reference`` another pair's reference (another slice or subject),
    ``large_misregistration`` a shift of 3-12 px and a rotation up to 10 degrees, and
    ``reference_remap`` a random monotone or inverted intensity map (a contrast the training pairs lack).
    ``min_crop``: smallest crop fraction before the resize to ``size``; ``native_fraction`` of the
    samples are cropped at exactly native resolution instead. ``coil_geometry``: random array radius and
    loop size; ``noiseless_fraction`` of the samples get no noise.
    A sample: ``target_zf (ny, nx)``, ``reference (ny, nx)`` (own robust-max
    scale), ``target_image``, ``kspace (C, ny, nx)``, ``mask (ny,)``,
    ``maps``, ``has_reference`` (0/1).
    """

    pairs: Sequence[tuple[np.ndarray, np.ndarray]]
    size: tuple[int, int] = (96, 96)
    reference_dropout: float = 0.2
    settings: SimulationSettings = field(default_factory=SimulationSettings)
    min_crop: float = 0.7
    misregistration: float = 0.0
    max_shift_px: float = 2.0
    max_rotation_deg: float = 2.0
    reference_noise: tuple[float, float] = (0.0, 0.0)
    wrong_reference: float = 0.0
    large_misregistration: float = 0.0
    reference_remap: float = 0.0
    native_fraction: float = 0.0
    coil_geometry: bool = False
    noiseless_fraction: float = 0.0
    acs_lines: tuple[int, int] | None = None   # ACS lines drawn from this range (else settings.acs)

    @classmethod
    def realistic(cls, pairs: Sequence[tuple[np.ndarray, np.ndarray]], size: int = 96, **overrides) -> "PairSampler":
        """The recipe for brains the network never saw: 4-32 coils on random arrays, noise, VD/random/equispaced
        line masks at 3-10x with 8-24 ACS lines, native-resolution crops half the time, and references
        that are good (most), slightly off, wrong, far off, remapped or missing."""
        settings = SimulationSettings(accel=(3.0, 10.0), coils=(4, 32), noise=(0.0, 0.03),
                                      families=("vd-random", "random", "equispaced", "vd-random"))
        kw = dict(size=(size, size), reference_dropout=0.15, settings=settings, min_crop=0.6, misregistration=0.5,
                  max_shift_px=2.0, max_rotation_deg=2.0, reference_noise=(0.0, 0.03), wrong_reference=0.15,
                  large_misregistration=0.1, reference_remap=0.15, native_fraction=0.5, coil_geometry=True,
                  noiseless_fraction=0.2, acs_lines=(8, 24))
        kw.update(overrides)
        return cls(pairs, **kw)

    def _reference(self, rng: np.random.Generator, ref: np.ndarray) -> np.ndarray:
        # draw only when enabled, so the default sampler's random stream is what it was
        if self.large_misregistration > 0 and rng.random() < self.large_misregistration:
            r, phi = rng.uniform(3.0, 12.0), rng.uniform(0, 2 * np.pi)
            ref = rigid_warp(ref, r * np.sin(phi), r * np.cos(phi), rng.uniform(-10, 10))
        elif self.misregistration > 0 and rng.random() < self.misregistration:
            r, phi = self.max_shift_px * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            ref = rigid_warp(ref, r * np.sin(phi), r * np.cos(phi), rng.uniform(-1, 1) * self.max_rotation_deg)
        if self.reference_remap > 0 and rng.random() < self.reference_remap:
            top = max(float(ref.max()), 1e-8)
            ref = top * (ref / top) ** rng.uniform(0.4, 2.5)
            if rng.random() < 0.3:  # an inverted contrast inside the object
                ref = np.where(ref > 0.05 * top, top - ref, 0.0)
        ref = ref / max(float(np.percentile(np.abs(ref), 99)), 1e-8)
        sigma = float(rng.uniform(*self.reference_noise)) if max(self.reference_noise) > 0 else 0.0
        if sigma > 0:
            ref = np.abs(ref + sigma * rng.standard_normal(ref.shape))  # a magnitude image's noise stays positive
        return ref

    def _geometry(self, rng: np.random.Generator, images: list[np.ndarray]) -> list[np.ndarray]:
        ny, nx = images[0].shape[-2:]
        if self.native_fraction > 0 and rng.random() < self.native_fraction and min(ny, nx) >= max(self.size):
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            images = [np.rot90(im, k) for im in images]
            images = [im[:, ::-1] for im in images] if flip else images
            ry, rx = images[0].shape
            y0, x0 = int(rng.integers(0, ry - self.size[0] + 1)), int(rng.integers(0, rx - self.size[1] + 1))
            return [np.ascontiguousarray(im[y0:y0 + self.size[0], x0:x0 + self.size[1]]) for im in images]
        return augment_geometry(rng, images, self.size, min_crop=self.min_crop)

    def __call__(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        s = self.settings
        ref, tgt = self.pairs[int(rng.integers(len(self.pairs)))]
        ref, tgt = self._geometry(rng, [ref.astype(np.float32), tgt.astype(np.float32)])
        tgt = (tgt / max(float(np.abs(tgt).max()), 1e-8)) * np.exp(1j * smooth_random_phase(rng, self.size))
        ny = self.size[0]
        acs = s.acs(ny) if self.acs_lines is None else int(rng.integers(self.acs_lines[0], self.acs_lines[1] + 1))
        masks, _ = sample_line_masks(rng, ny, 1, float(rng.uniform(*s.accel)), acs, s.families)
        n_coils = int(rng.integers(s.coils[0], s.coils[1] + 1))
        maps = None
        if self.coil_geometry:
            from .synthetic import coil_maps
            maps = coil_maps(n_coils, ny, self.size[1], seed=int(rng.integers(1 << 31)),
                             radius=float(rng.uniform(1.05, 1.8)), loop_radius=float(rng.uniform(0.3, 0.7)))
        noise = 0.0 if self.noiseless_fraction > 0 and rng.random() < self.noiseless_fraction else float(rng.uniform(*s.noise))
        acq = simulate_acquisition(rng, tgt[None].astype(np.complex64), masks, n_coils, noise, maps=maps)
        sc = _scale(acq["zero_filled"][0])
        has_ref = rng.random() >= self.reference_dropout
        if self.wrong_reference > 0 and rng.random() < self.wrong_reference:
            other = self.pairs[int(rng.integers(len(self.pairs)))][0].astype(np.float32)
            ref = self._geometry(rng, [other])[0]
        ref = self._reference(rng, ref)  # drawn last: the target's simulation is the same with or without it
        return {"target_zf": acq["zero_filled"][0] / sc, "reference": (ref if has_ref else 0 * ref).astype(np.complex64),
                "target_image": acq["target"][0] / sc, "kspace": acq["kspace"][0] / sc, "mask": masks[0],
                "maps": acq["maps"], "has_reference": np.float32(has_ref)}


def pair_validation_items(reference: np.ndarray, target: np.ndarray, wrong_reference: np.ndarray, accel: float,
                          seed: int = 0, coils: int = 8, acs: int = 16) -> list[dict[str, np.ndarray]]:
    """One held-out pair at its full matrix as three validation samples: with its reference, without one,
    and with ``wrong_reference`` (another slice) -- ``kind`` says which. 8 coils, a variable-density line
    mask with 16 ACS lines and no noise, as the filed measurements."""
    from .masks import line_mask
    from .synthetic import coil_maps, smooth_phase

    ny, nx = target.shape
    tgt = (target * np.exp(1j * smooth_phase((ny, nx), seed=seed + 3, max_rad=np.pi))).astype(np.complex64)
    mask = line_mask("vd-random", ny, 1, accel=accel, acs=acs, seed=seed + int(accel * 10))
    acq = simulate_acquisition(np.random.default_rng(seed), tgt[None], mask, coils, 0.0,
                               maps=coil_maps(coils, ny, nx, seed=seed + 5))
    sc = _scale(acq["zero_filled"][0])

    def scaled(r: np.ndarray) -> np.ndarray:
        return (r / max(float(np.percentile(np.abs(r), 99)), 1e-8)).astype(np.complex64)

    base = {"target_zf": acq["zero_filled"][0] / sc, "target_image": acq["target"][0] / sc,
            "kspace": acq["kspace"][0] / sc, "mask": mask[0], "maps": acq["maps"]}
    return [{**base, "reference": scaled(reference), "has_reference": np.float32(1), "kind": np.array("with")},
            {**base, "reference": np.zeros_like(tgt), "has_reference": np.float32(0), "kind": np.array("without")},
            {**base, "reference": scaled(wrong_reference), "has_reference": np.float32(1), "kind": np.array("wrong")}]


def collate(samples: Sequence[dict[str, np.ndarray]], pad_coils: bool = True) -> dict[str, np.ndarray]:
    """Stack samples; coil counts differ, so k-space and maps are zero-padded to the largest (zero maps add nothing)."""
    out: dict[str, np.ndarray] = {}
    cmax = max(s["maps"].shape[-3] for s in samples)
    for key in samples[0]:
        arrs = [np.asarray(s[key]) for s in samples]
        if key in ("kspace", "maps") and pad_coils:  # the coil axis is -3 in both
            arrs = [np.concatenate([a, np.zeros(a.shape[:-3] + (cmax - a.shape[-3],) + a.shape[-2:], a.dtype)], axis=-3)
                    for a in arrs]
        out[key] = np.stack(arrs)
    return out


Sampler = Callable[[np.random.Generator], dict[str, np.ndarray]]

__all__ = ["CineSampler", "PairSampler", "SimulationSettings", "simulate_acquisition", "sample_line_masks",
           "variable_density_lines", "augment_geometry", "resize", "rigid_warp", "collate", "MASK_FAMILIES",
           "pair_validation_items"]
