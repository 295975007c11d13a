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

    def video(self, rng: np.random.Generator, length: int) -> np.ndarray:
        cine = np.asarray(self.cines[int(rng.integers(len(self.cines)))])
        n, ny, nx = cine.shape
        stride = 2 if rng.random() < 0.25 else 1
        step = -stride if rng.random() < 0.5 else stride
        start = int(rng.integers(n))
        frames = cine[[(start + step * i) % n for i in range(length)]]
        side = int(round(self.size * rng.uniform(*self.zoom)))
        cy, cx = min(side, ny), min(side, nx)
        # the heart sits near the middle of a short-axis view: crop centres within the middle half
        y0 = int(np.clip(ny / 2 - cy / 2 + rng.uniform(-0.25, 0.25) * ny, 0, ny - cy))
        x0 = int(np.clip(nx / 2 - cx / 2 + rng.uniform(-0.25, 0.25) * nx, 0, nx - cx))
        crop = frames[:, y0:y0 + cy, x0:x0 + cx]
        crop = np.rot90(crop, int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        video = resize(np.ascontiguousarray(crop), (self.size, self.size))
        video = video / max(float(np.percentile(video, 99.5)), 1e-6)
        phase = smooth_random_phase(rng, (self.size, self.size))
        return (video * np.exp(1j * phase)[None]).astype(np.complex64)

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
        acq = simulate_acquisition(rng, video, masks, int(rng.integers(self.coils[0], self.coils[1] + 1)),
                                   float(rng.uniform(*self.noise)))
        causal = bool(rng.random() < self.causal_fraction)
        t = length - 1 if causal else length - 2
        frames = window_inputs(acq["kspace"], masks, acq["maps"], t, causal, self.inputs)
        sc = float(max(np.percentile(np.abs(frames[0]), 99), 1e-8))
        return {"frames": frames / sc, "target_image": acq["target"][t] / sc, "kspace": acq["kspace"][t] / sc,
                "mask": masks[t], "maps": acq["maps"], "causal": np.float32(causal)}


__all__ = ["RealCineSampler", "window_inputs", "window_order", "frame_image", "FAMILY_WEIGHTS"]
