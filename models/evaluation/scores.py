"""Scoring reconstruction methods against fully sampled references.

Metrics (``models.metrics``): PSNR, SSIM and NMSE on magnitudes, per 2-D
frame/slice and averaged; the reference is the SENSE combination of the fully
sampled coil images with the same (estimated) coil maps the methods use, no
rescaling of the prediction; PSNR's peak is each reference frame's maximum.
Images are scored over the full field of view.

Time: wall time per frame of each method (whole-cine methods: total / frames).
Memory: peak resident memory of this process during the method minus the
resident memory before it (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``); on CUDA, ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from models.metrics import nmse, psnr, ssim


def _rss_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(fn: Callable[[], np.ndarray], device: str = "cpu") -> tuple[np.ndarray, float, float | None]:
    """Run ``fn``; returns ``(result, seconds, peak_extra_MiB or None)``."""
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    ok = _reset_peak()
    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    mem = (peak - before) / 1024 if (ok and peak is not None and before is not None) else None
    return out, seconds, mem


@dataclass
class Score:
    method: str
    accel: float
    psnr: float
    ssim: float
    nmse: float
    seconds_per_frame: float
    peak_mib: float | None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict) -> "Score":
        """The score a :meth:`row` (e.g. from a cache) describes; other keys go to ``extra``."""
        fields = ("method", "accel", "psnr", "ssim", "nmse", "seconds_per_frame", "peak_mib")
        return cls(*(row.get(f) for f in fields), extra={k: v for k, v in row.items() if k not in fields})

    def row(self) -> dict:
        return {"method": self.method, "accel": self.accel, "psnr": round(self.psnr, 3), "ssim": round(self.ssim, 4),
                "nmse": round(self.nmse, 5), "seconds_per_frame": round(self.seconds_per_frame, 4),
                "peak_mib": None if self.peak_mib is None else round(self.peak_mib, 1), **self.extra}


def score(method: str, accel: float, pred: np.ndarray, ref: np.ndarray, seconds: float, frames: int,
          peak_mib: float | None, **extra) -> Score:
    return Score(method, accel, psnr(pred, ref), ssim(pred, ref), float(np.mean([nmse(p, r) for p, r in
                 zip(pred.reshape(-1, *pred.shape[-2:]), ref.reshape(-1, *ref.shape[-2:]))])),
                 seconds / max(frames, 1), peak_mib, extra)


def markdown_table(scores: list[Score]) -> str:
    lines = ["| method | accel | PSNR dB | SSIM | NMSE | s/frame | peak MiB |", "|---|---|---|---|---|---|---|"]
    for s in scores:
        mem = "-" if s.peak_mib is None else f"{s.peak_mib:.0f}"
        name = s.method + (f" ({s.extra['case']})" if "case" in s.extra else "")
        lines.append(f"| {name} | {s.accel:g}x | {s.psnr:.2f} | {s.ssim:.4f} | {s.nmse:.5f} | {s.seconds_per_frame:.4f} | {mem} |")
    return "\n".join(lines)


__all__ = ["measure", "score", "Score", "markdown_table"]
