"""Timing networks on one device: what ``bench gpu`` and ``bench runtime`` measure with.

The machine's versions, synchronised wall-clock timing with warm-up calls,
peak device memory, autocast per precision, and the inputs: windows of the
cine phantom at a matrix size and coil count, batched, with the model and
data-consistency calls timed on them.
"""
from __future__ import annotations

import os
import platform
import time
from contextlib import nullcontext
from typing import Any, Callable

import numpy as np
import torch

from models.cine_windows import window_inputs
from models.coils import zero_filled
from models.fft import fft2c
from models.machine import machine
from models.masks import line_mask
from models.phantoms import cardiac_cine
from models.synthetic import coil_maps


# ---------------------------------------------------------------------------- environment
def versions(device: str) -> dict[str, Any]:
    out = {"machine": machine(device), "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
           "device": device, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average_1min": os.getloadavg()[0]}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        out["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                      "capability": f"{p.major}.{p.minor}", "bf16": torch.cuda.is_bf16_supported()}
    return out


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def timed(call: Callable[[], Any], device: str, calls: int, warmup: int) -> list[float]:
    """Seconds of each of ``calls`` calls after ``warmup`` untimed ones, synchronised with the device."""
    for _ in range(warmup):
        call()
    out = []
    for _ in range(calls):
        synchronize(device)
        t0 = time.perf_counter()
        call()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def stats_ms(seconds: list[float], per: int = 1) -> dict[str, float]:
    v = np.asarray(seconds) * 1000.0 / per
    return {"p50": round(float(np.percentile(v, 50)), 3), "p95": round(float(np.percentile(v, 95)), 3),
            "n": int(len(v) * per)}


class PeakMemory:
    """Peak device memory above the start, MiB (CUDA); None elsewhere."""

    def __init__(self, device: str) -> None:
        self.device, self.mib = device, None

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *_):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.mib = round((torch.cuda.max_memory_allocated() - self.base) / 2**20, 1)


def autocast(device: str, precision: str):
    if precision == "fp32":
        return nullcontext()
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# ---------------------------------------------------------------------------- inputs
class CineData:
    """A phantom cine's k-space at ``n``x``n`` with ``coils`` coils, kt-Gaussian 8x, and its windows."""

    def __init__(self, n: int, coils: int, frames: int = 12) -> None:
        self.truth = cardiac_cine(n, n, frames=frames)
        self.maps = coil_maps(coils, n, n).astype(np.complex64)
        self.masks = line_mask("kt-gaussian", n, frames, accel=8, acs=max(4, n // 16))
        k = fft2c(self.maps[None] * self.truth[:, None])
        self.kspace = (k * self.masks[:, None, :, None]).astype(np.complex64)

    def windows(self, count: int, causal: bool, inputs: str) -> list[dict[str, np.ndarray]]:
        """``count`` single-frame windows, the network's three frames in time order."""

        frames = len(self.truth)
        order = [2, 1, 0] if causal else [1, 0, 2]  # model order (target, mentor, learner) -> time order
        out = []
        for i in range(count):
            t = 2 + i % (frames - 4)
            f = window_inputs(self.kspace, self.masks, self.maps, t, causal, inputs=inputs)[order]
            out.append({"frames": f, "kspace": self.kspace[t], "mask": self.masks[t], "maps": self.maps, "t": t})
        return out

    def pair(self) -> dict[str, np.ndarray]:
        """SGF-MRI inputs: frame 0 fully sampled as the reference, frame 2 undersampled as the target."""

        ref = zero_filled(fft2c(self.maps * self.truth[0]), self.maps)
        return {"reference": ref.astype(np.complex64), "target": zero_filled(self.kspace[2], self.maps).astype(np.complex64),
                "kspace": self.kspace[2], "mask": self.masks[2], "maps": self.maps, "t": 2}


def stack_windows(items: list[dict[str, np.ndarray]], b: int, start: int = 0) -> dict[str, np.ndarray]:
    chosen = [items[(start + i) % len(items)] for i in range(b)]
    return {k: np.stack([c[k] for c in chosen]) for k in chosen[0] if k != "t"} | {"t": [c["t"] for c in chosen]}


def model_call(rec, kind: str, batch: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
    """One batched call of ``rec`` as its operation answers it; ``kind`` ending in ``-causal``: the causal window."""
    if rec.operation == "pair":
        return lambda: rec.reconstruct_pair_batch(batch["reference"], batch["target"], batch["kspace"], batch["mask"],
                                                  batch["maps"])
    causal = kind.endswith("-causal")
    return lambda: rec.reconstruct_cine_batch(batch["frames"], batch["kspace"], batch["mask"], batch["maps"],
                                              causal=causal)


def dc_call(rec, batch: dict[str, np.ndarray], device: str) -> Callable[[], Any]:
    """The model's DC step alone on device tensors (what it adds to a frame)."""

    x = torch.from_numpy(batch["kspace"][:, 0].copy()).to(device)  # any complex image of the right size
    y = torch.from_numpy(batch["kspace"]).to(device)
    m = torch.from_numpy(np.asarray(batch["mask"], bool)).to(device)
    s = torch.from_numpy(batch["maps"]).to(device)

    def call():
        with torch.no_grad():
            return rec.model.dc(x, y, m, s)

    return call


