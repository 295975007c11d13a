"""Training windows from real cines, simulated as a real-time scan with view-shared inputs.

One sample is what the cine gadget hands the network in the middle of a
real-time scan: frames ``t-1, t, t+1`` (centred) or ``t-2, t-1, t`` (causal),
each the SENSE image of its view-shared k-space (:mod:`models.view_sharing`,
built from every frame the stream had, no later than the window allows),
frame ``t``'s own measured multi-coil k-space and line mask for data
consistency, and coil maps from the time-averaged k-space (as the gadget
estimates them).

The acquisition, drawn per sample:

- a real cine (magnitude, periodic: gated cines are one heart cycle), a
  random stretch of ``history + 3`` frames (a real-time scan covers several
  cycles), temporal stride 1 or 2 (faster hearts), played forwards or back;
- a random field of view at native resolution (crop side ``size * zoom``,
  zoom 0.8-1.25, resized to ``size``), 90-degree rotations and flips;
- a smooth random phase, 4-16 coils with synthetic maps, complex Gaussian
  k-space noise, per-frame line masks of every family at 4x-12x with 8-24
  ACS lines (CMRxRecon-style families drawn more often: they are what
  real-time cine uses).

Scaling: inputs, target and k-space divided by the robust maximum of the
input target frame, as :mod:`models.inference` does at use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .coils import sense_combine
from .fft import ifft2c
from .masks import line_mask
from .training_data import resize, simulate_acquisition, smooth_random_phase
from .view_sharing import view_share

FAMILY_WEIGHTS = {"kt-gaussian": 0.3, "vd-random": 0.3, "kt-uniform": 0.15, "random": 0.1,
                  "uniform": 0.075, "equispaced": 0.075}


def window_order(t: int, n: int, causal: bool) -> tuple[int, int, int]:
    """Frames of ``t``'s window in a finite series of ``n`` frames, in the model's order
    ``(target, mentor reference, learner reference)``: ``(t, t-1, t+1)`` centred, ``(t, t-1, t-2)`` causal.
    A neighbour outside the series is replaced by the other neighbour, else by ``t`` itself (as the
    cine gadget does at the start and end of a scan)."""
    if causal:
        r1 = t - 1 if t >= 1 else t
        return t, r1, t - 2 if t >= 2 else r1
    prev = t - 1 if t >= 1 else (t + 1 if t + 1 < n else t)
    nxt = t + 1 if t + 1 < n else (t - 1 if t >= 1 else t)
    return t, prev, nxt


def window_inputs(kspace: np.ndarray, masks: np.ndarray, maps: np.ndarray, t: int, causal: bool,
                  inputs: str = "view-shared") -> np.ndarray:
    """The network's three input images ``(3, ny, nx)`` for frame ``t`` of a finite series, as a stream
    that has received frames ``0..t+1`` (centred) or ``0..t`` (causal) gives them.

    ``kspace (T, C, ny, nx)``, ``masks (T, ny)``, ``maps (C, ny, nx)``. ``inputs="view-shared"``: the
    target may use frame ``t+1``'s lines (centred), each reference is shared causally (the gadget
    shares a frame when it arrives); ``"zero-filled"``: each frame's own lines only.
    """
    n = kspace.shape[0]
    return np.stack([frame_image(kspace, masks, maps, f, causal=causal or i > 0, inputs=inputs)
                     for i, f in enumerate(window_order(t, n, causal))])


def frame_image(kspace: np.ndarray, masks: np.ndarray, maps: np.ndarray, f: int, causal: bool,
                inputs: str = "view-shared") -> np.ndarray:
    """Frame ``f``'s SENSE image ``(ny, nx)`` from its own lines (``"zero-filled"``) or view-shared, looking
    no later than ``f`` (``causal``) or ``f+1`` (a centred window's target)."""
    if inputs == "zero-filled":
        k = kspace[f]
    else:
        latest = f if causal or f + 1 >= kspace.shape[0] else f + 1
        k, _ = view_share(kspace, masks, f, latest=latest)
    return sense_combine(ifft2c(k), maps)


@dataclass
class RealCineSampler:
    """Random real-time windows from real cines; see the module docstring.

    ``cines``: magnitude cines ``(T, ny, nx)`` (any size), roughly unit range.
    A sample: ``frames (3, size, size)`` complex in the model's order, ``target_image``,
    ``kspace (C, size, size)``, ``mask (size,)``, ``maps (C, size, size)``, ``causal`` (0/1).

    The defaults are the ``kgmgt_cine_vs`` recipe. :meth:`realtime` is the recipe for hearts the
    network never saw (other scanners, orientations, coil arrays and real-time SNR): native-resolution
    fields of view, any in-plane angle, 4-32 coils on random array geometries, noise up to real-time
    levels, temporal strides 1-3, and a share of other anatomy (``static_images``) in cardiac-like motion.
    """

    cines: Sequence[np.ndarray]
    size: int = 96
    zoom: tuple[float, float] = (0.8, 1.25)
    history: tuple[int, int] = (2, 12)
    accel: tuple[float, float] = (4.0, 12.0)
    acs: tuple[int, int] = (8, 24)
    coils: tuple[int, int] = (4, 16)
    noise: tuple[float, float] = (0.0, 0.03)
    causal_fraction: float = 0.3
    inputs: str = "view-shared"
    native_fraction: float = 0.0       # share of samples cropped at exactly native resolution (no resampling)
    rotation_fraction: float = 0.0     # share rotated by any angle (on top of the rot90/flips)
    strides: tuple[float, ...] = (0.75, 0.25)   # probabilities of temporal stride 1, 2, 3, ...
    coil_geometry: bool = False        # random array radius and loop size (else the fixed synthetic array)
    noiseless_fraction: float = 0.0
    static_images: Sequence[np.ndarray] = ()
    static_fraction: float = 0.0

    @classmethod
    def realtime(cls, cines: Sequence[np.ndarray], size: int = 128, static_images: Sequence[np.ndarray] = (),
                 **overrides) -> "RealCineSampler":
        settings = dict(size=size, zoom=(0.7, 1.4), history=(2, 16), accel=(3.0, 14.0), acs=(8, 24), coils=(4, 32),
                        noise=(0.0, 0.04), causal_fraction=0.4, native_fraction=0.5, rotation_fraction=0.5,
                        strides=(0.5, 0.3, 0.2), coil_geometry=True, noiseless_fraction=0.2,
                        static_images=static_images, static_fraction=0.1 if len(static_images) else 0.0)
        settings.update(overrides)
        return cls(cines, **settings)

    def _static_video(self, rng: np.random.Generator, length: int) -> np.ndarray:
        from .synthetic import periodic_motion

        image = np.asarray(self.static_images[int(rng.integers(len(self.static_images)))], dtype=np.float32)
        cycle = int(rng.integers(12, 33))
        frames = periodic_motion(image, cycle, amplitude_px=float(rng.uniform(1.0, 5.0)), seed=int(rng.integers(1 << 31)))
        start = int(rng.integers(cycle))
        return frames[[(start + i) % cycle for i in range(length)]]

    def video(self, rng: np.random.Generator, length: int) -> np.ndarray:
        if self.static_images and rng.random() < self.static_fraction:
            cine = self._static_video(rng, length)
            stride, start = 1, 0
        else:
            cine = np.asarray(self.cines[int(rng.integers(len(self.cines)))])
            p = np.asarray(self.strides, dtype=float)
            stride = 1 + int(rng.choice(len(p), p=p / p.sum()))
            start = int(rng.integers(cine.shape[0]))
        n, ny, nx = cine.shape
        step = -stride if rng.random() < 0.5 else stride
        frames = cine[[(start + step * i) % n for i in range(length)]]
        native = rng.random() < self.native_fraction
        side = self.size if native else int(round(self.size * rng.uniform(*self.zoom)))
        cy, cx = min(side, ny), min(side, nx)
        # the heart sits near the middle of a short-axis view: crop centres within the middle half
        y0 = int(np.clip(ny / 2 - cy / 2 + rng.uniform(-0.25, 0.25) * ny, 0, ny - cy))
        x0 = int(np.clip(nx / 2 - cx / 2 + rng.uniform(-0.25, 0.25) * nx, 0, nx - cx))
        if rng.random() < self.rotation_fraction:
            frames = self._rotated(frames, float(rng.uniform(-180, 180)), y0 + cy / 2, x0 + cx / 2)
        crop = frames[:, y0:y0 + cy, x0:x0 + cx]
        crop = np.rot90(crop, int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.ascontiguousarray(crop)
        video = crop if crop.shape[1:] == (self.size, self.size) else resize(crop, (self.size, self.size))
        video = video / max(float(np.percentile(video, 99.5)), 1e-6)
        phase = smooth_random_phase(rng, (self.size, self.size))
        return (video * np.exp(1j * phase)[None]).astype(np.complex64)

    @staticmethod
    def _rotated(frames: np.ndarray, angle: float, cy: float, cx: float) -> np.ndarray:
        """Every frame rotated by ``angle`` about ``(cy, cx)`` (bilinear, edges clamped)."""
        from .synthetic import bilinear_sample

        _, ny, nx = frames.shape
        rows, cols = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
        a = np.deg2rad(angle)
        y, x = rows - cy, cols - cx
        sy, sx = np.cos(a) * y - np.sin(a) * x + cy, np.sin(a) * y + np.cos(a) * x + cx
        return np.stack([bilinear_sample(f, sy, sx) for f in frames]).astype(np.float32)

    def masks(self, rng: np.random.Generator, frames: int) -> np.ndarray:
        families = list(FAMILY_WEIGHTS)
        family = families[int(rng.choice(len(families), p=np.array(list(FAMILY_WEIGHTS.values()))))]
        accel = float(rng.uniform(*self.accel))
        acs = int(rng.integers(self.acs[0], self.acs[1] + 1))
        acs = min(acs, max(4, int(self.size / accel) - 2))  # ACS inside the line budget
        return line_mask(family, self.size, frames, accel=accel, acs=acs, seed=int(rng.integers(1 << 31)))

    def __call__(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        history = int(rng.integers(self.history[0], self.history[1] + 1))
        length = history + 3
        video = self.video(rng, length)
        masks = self.masks(rng, length)
        n_coils = int(rng.integers(self.coils[0], self.coils[1] + 1))
        maps = None
        if self.coil_geometry:
            from .synthetic import coil_maps
            maps = coil_maps(n_coils, self.size, self.size, seed=int(rng.integers(1 << 31)),
                             radius=float(rng.uniform(1.05, 1.8)), loop_radius=float(rng.uniform(0.3, 0.7)))
        noise = 0.0 if rng.random() < self.noiseless_fraction else float(rng.uniform(*self.noise))
        causal = bool(rng.random() < self.causal_fraction)
        t = length - 1 if causal else length - 2
        acq = simulate_acquisition(rng, video, masks, n_coils, noise, maps=maps, frames_out=[t])
        frames = window_inputs(acq["kspace"], masks, acq["maps"], t, causal, self.inputs)
        sc = float(max(np.percentile(np.abs(frames[0]), 99), 1e-8))
        return {"frames": frames / sc, "target_image": acq["target"][0] / sc, "kspace": acq["kspace"][t] / sc,
                "mask": masks[t], "maps": acq["maps"], "causal": np.float32(causal)}


__all__ = ["RealCineSampler", "window_inputs", "window_order", "frame_image", "FAMILY_WEIGHTS"]


@dataclass(frozen=True)
class ValidationCondition:
    """An acquisition a held-out cine is played as, for the validation that must predict unseen hearts."""

    name: str
    family: str = "vd-random"
    accel: float = 8.0
    coils: int = 8
    noise: float = 0.0
    rotation_deg: float = 0.0
    transpose: bool = False
    stride: int = 1
    causal: bool = False
    acs: int = 16


# Conditions the training recipe does not draw as such: whole held-out hearts at their full matrix, plus
# an orientation no rot90 gives, a 24-coil array, real-time noise and a faster heart, and a transposed
# (phase-encode along the other axis) view at low acceleration where view sharing is already strong.
VALIDATION_CONDITIONS = (
    ValidationCondition("8x vd centred", "vd-random", 8.0, 8),
    ValidationCondition("10x kt-gaussian causal, 30 deg, 24 coils, noise 2%, stride 2", "kt-gaussian", 10.0, 24,
                        noise=0.02, rotation_deg=30.0, stride=2, causal=True),
    ValidationCondition("4x vd centred, transposed, 12 coils, noise 1%", "vd-random", 4.0, 12, noise=0.01,
                        transpose=True),
)


def condition_frames(cine: np.ndarray, cond: ValidationCondition) -> np.ndarray:
    """A magnitude cine ``(T, ny, nx)`` as the condition sees it: a faster heart (temporal stride, the
    cine being one periodic cycle), rotated about its centre, and/or transposed."""
    frames = np.asarray(cine, dtype=np.float32)
    if cond.stride > 1:
        frames = frames[[(i * cond.stride) % len(frames) for i in range(len(frames))]]
    if cond.rotation_deg:
        _, ny, nx = frames.shape
        frames = RealCineSampler._rotated(frames, cond.rotation_deg, (ny - 1) / 2, (nx - 1) / 2)
    if cond.transpose:
        frames = np.ascontiguousarray(frames.transpose(0, 2, 1))
    return frames


def validation_window(cine: np.ndarray, cond: ValidationCondition, seed: int = 0) -> dict[str, np.ndarray]:
    """One fixed window of a held-out magnitude cine ``(T, ny, nx)`` played as ``cond``, at its full matrix.

    The stream runs from frame 0 to the middle of the series; the sample has the keys of
    :class:`RealCineSampler`'s samples plus ``input_image`` (the view-shared target frame, unscaled by
    the network: what the network must improve on)."""
    from .synthetic import coil_maps, smooth_phase

    frames = condition_frames(cine, cond)
    n, ny, nx = frames.shape
    video = (frames * np.exp(1j * smooth_phase((ny, nx), seed=seed + 7, max_rad=np.pi))[None]).astype(np.complex64)
    masks = line_mask(cond.family, ny, n, accel=cond.accel, acs=cond.acs, seed=seed + int(cond.accel * 100))
    t = n // 2
    rng = np.random.default_rng(seed)
    acq = simulate_acquisition(rng, video[:t + 2], masks[:t + 2], cond.coils, cond.noise,
                               maps=coil_maps(cond.coils, ny, nx, seed=seed + 11), frames_out=[t])
    window = window_inputs(acq["kspace"], masks[:t + 2], acq["maps"], t, cond.causal)
    sc = float(max(np.percentile(np.abs(window[0]), 99), 1e-8))
    return {"frames": window / sc, "target_image": acq["target"][0] / sc, "kspace": acq["kspace"][t] / sc,
            "mask": masks[t], "maps": acq["maps"], "causal": np.float32(cond.causal)}


__all__ += ["ValidationCondition", "VALIDATION_CONDITIONS", "validation_window", "condition_frames"]
