"""The one inference entry the gadgets and the inference service call. NumPy in, NumPy out.

    from models.inference import load_model
    rec = load_model("kgmgt")            # any model of models.registry; device="cpu"|"cuda"|"auto"
    image = rec.reconstruct_cine(frames, kspace, mask, maps)        # (ny, nx) complex64
    image = rec.reconstruct_pair(reference, target_zf, kspace, mask, maps)
    images = rec.run_batch(arrays, causal)   # the model's operation, arrays as its models.registry.InputSpec
    rec.info -> {"name", "version", "architecture", "operation", "parameters", "random_init", "device", "dc"}

Shapes and conventions (all complex64 unless said; ``ny`` phase encode, ``nx`` readout):

- ``frames``: coil-combined images ``(3, ny, nx)`` in time order,
  ``(t-1, t, t+1)``, or ``(t-2, t-1, t)`` with ``causal=True`` (no look-ahead);
  the frame reconstructed is ``t``. Zero-filled, or view-shared
  (:mod:`models.view_sharing`: frame ``t`` may use ``t+1``'s lines when
  centred, the references are shared causally) as ``info["inputs"]`` says;
  :func:`models.cine_windows.window_inputs` builds them from a series.
- ``kspace``: measured multi-coil k-space of the reconstructed frame,
  ``(coils, ny, nx)``, zeros where not sampled (centered FFT convention of
  ``models.fft``).
- ``mask``: ``(ny,)`` line mask or ``(ny, nx)`` pixel mask, bool.
- ``maps``: coil maps ``(coils, ny, nx)`` with ``sum |S|^2 = 1`` inside the
  object (``models.coils.estimate_coil_maps``); ``None`` only for single-coil
  k-space ``(1, ny, nx)``.
- returns ``(ny, nx)`` complex64 after data consistency, in the input's units.

Batched variants take a leading batch axis on every argument (the mask may
also be shared, without the batch axis). Intensities are normalised inside:
each item is divided by a robust maximum (99th percentile of ``|zero-filled
frame t|``, or of the target) and multiplied back after.

Super-resolution with SGF-MRI: pass the zero-padded low-resolution image as
``target_zero_filled``, its k-space and ``models.sgfmri.lowres_mask(ny, nx,
factor)`` as the mask (DC then keeps the measured centre). The shipped
weights were trained for undersampled reconstruction only.

DC at inference: ``load_model(dc_method="auto")`` runs the exact soft-DC
proximal step (5 CG iterations, learned noise weight); ``info["dc"]`` names
the solver. See :func:`load_model`.

Network contract per operation (what a registered model's ``nn.Module``
answers, on 2-channel real/imaginary tensors, with its DC layer as ``.dc``):
``cine``: ``model(target, mentor, learner, kspace=, mask=, maps=)``;
``pair``: ``model(target, reference_or_None, kspace=, mask=, maps=)``.

Weights: the registry entry's default set in ``models/weights/``. If they are missing
``load_model`` raises, unless ``allow_random=True`` -- then the network is
randomly initialised, ``info["random_init"]`` is True and the version reads
``UNTRAINED-random-init``: for tests only, never for images.
"""
from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .complex_channels import from_channels, to_channels
from . import registry
from .registry import model_key
from .runtimes import RUNTIMES, runtime_missing, use_runtime
from .weights import build_model, load_weights


UNTRAINED = "UNTRAINED-random-init"
log = logging.getLogger(__name__)


def robust_scale(images: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """Per-item robust maximum of ``|images|`` over the last two axes (shape = leading axes)."""
    mag = np.abs(images).reshape(*images.shape[:-2], -1)
    s = np.percentile(mag, percentile, axis=-1)
    return np.maximum(s, 1e-12 * np.maximum(mag.max(axis=-1), 1e-30) + 1e-30)


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Reconstructor:
    """A loaded network plus the NumPy <-> torch plumbing; see the module docstring."""

    def __init__(self, model: torch.nn.Module, architecture: str, name: str, version: str,
                 device: torch.device, random_init: bool, precision: str = "fp32") -> None:
        self.model = model.to(device).eval()
        self.architecture, self.name, self.version = architecture, name, version
        self.device, self.random_init, self.precision = device, random_init, precision
        self.dc = f"{getattr(model.dc, 'mode', '?')}-{getattr(model.dc, 'method', '?')}"
        self.runtime = "torch"
        self.operation = registry.get(architecture).operation

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "architecture": self.architecture,
                "operation": self.operation,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "random_init": self.random_init, "device": str(self.device), "dc": self.dc,
                "inputs": self.inputs, "runtime": self.runtime}

    @property
    def inputs(self) -> str:
        """What the cine network's three frames must be: ``"zero-filled"`` or ``"view-shared"`` SENSE images."""
        cfg = getattr(self.model, "cfg", None)
        return str(getattr(cfg, "inputs", "zero-filled"))

    # ------------------------------------------------------------ helpers
    def _autocast(self):
        if self.device.type == "cuda" and self.precision in ("bf16", "fp16"):
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        return nullcontext()

    def _c(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.complex64)).to(self.device)

    def _mask(self, mask: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(mask, dtype=bool))).to(self.device)

    @staticmethod
    def _check_maps(kspace: np.ndarray, maps: np.ndarray | None) -> None:
        if maps is None and kspace.shape[1] != 1:
            raise ValueError(f"{kspace.shape[1]}-coil k-space needs coil maps")
        if maps is not None and maps.shape != kspace.shape:
            raise ValueError(f"coil maps {maps.shape} do not match k-space {kspace.shape}")

    # ------------------------------------------------------------ cine (KGMgT)
    def reconstruct_cine_batch(self, frames: np.ndarray, kspace: np.ndarray, mask: np.ndarray,
                               maps: np.ndarray | None, causal: bool = False) -> np.ndarray:
        """``frames (B, 3, ny, nx)``, ``kspace (B, C, ny, nx)``, mask ``(ny,)|(ny,nx)|(B,ny)|(B,ny,nx)``,
        ``maps (B, C, ny, nx)`` -> ``(B, ny, nx)`` complex64."""
        if self.operation != "cine":
            raise TypeError(f"{self.name} is a {self.architecture} model, not a cine model")
        frames, kspace = np.asarray(frames), np.asarray(kspace)
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (B, 3, ny, nx), got {frames.shape}")
        self._check_maps(kspace, maps)
        target_index = 2 if causal else 1
        scale = robust_scale(frames[:, target_index])  # (B,)
        s = scale[:, None, None, None]
        f = self._c(frames / s)
        y = self._c(kspace / s)
        m = self._mask(mask)
        mp = None if maps is None else self._c(maps)
        if causal:  # (t-2, t-1, t): mentor t-1, learner t-2
            target, ref_m, ref_l = f[:, 2], f[:, 1], f[:, 0]
        else:       # (t-1, t, t+1): mentor t-1, learner t+1 (the paper)
            target, ref_m, ref_l = f[:, 1], f[:, 0], f[:, 2]
        with torch.no_grad(), self._autocast():
            out = self.model(to_channels(target), to_channels(ref_m), to_channels(ref_l), kspace=y, mask=m, maps=mp)
        return (from_channels(out.float()).cpu().numpy() * scale[:, None, None]).astype(np.complex64)

    def reconstruct_cine(self, frames: np.ndarray, kspace: np.ndarray, mask: np.ndarray,
                         maps: np.ndarray | None, causal: bool = False) -> np.ndarray:
        """One frame: ``frames (3, ny, nx)``, ``kspace (C, ny, nx)``, ``mask (ny,)|(ny, nx)``, ``maps (C, ny, nx)``."""
        return self.reconstruct_cine_batch(np.asarray(frames)[None], np.asarray(kspace)[None], mask,
                                           None if maps is None else np.asarray(maps)[None], causal)[0]

    # ------------------------------------------------------------ multi-contrast (SGF-MRI)
    def reconstruct_pair_batch(self, reference: np.ndarray | None, target_zero_filled: np.ndarray,
                               target_kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
        """``reference (B, ny, nx)`` or None, ``target_zero_filled (B, ny, nx)``, ``target_kspace (B, C, ny, nx)``,
        mask as for cine (a 2-D centre block for super-resolution), ``maps (B, C, ny, nx)`` -> ``(B, ny, nx)``."""
        if self.operation != "pair":
            raise TypeError(f"{self.name} is a {self.architecture} model, not a multi-contrast model")
        tz, ks = np.asarray(target_zero_filled), np.asarray(target_kspace)
        self._check_maps(ks, maps)
        scale = robust_scale(tz)
        t = self._c(tz / scale[:, None, None])
        y = self._c(ks / scale[:, None, None, None])
        ref = None
        if reference is not None:
            r = np.asarray(reference)
            ref = to_channels(self._c(r / robust_scale(r)[:, None, None]))  # the reference's own scale
        m = self._mask(mask)
        mp = None if maps is None else self._c(maps)
        with torch.no_grad(), self._autocast():
            out = self.model(to_channels(t), ref, kspace=y, mask=m, maps=mp)
        return (from_channels(out.float()).cpu().numpy() * scale[:, None, None]).astype(np.complex64)

    def reconstruct_pair(self, reference: np.ndarray | None, target_zero_filled: np.ndarray,
                         target_kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
        """One slice; ``reference=None`` is the single-contrast fallback."""
        ref = None if reference is None else np.asarray(reference)[None]
        return self.reconstruct_pair_batch(ref, np.asarray(target_zero_filled)[None], np.asarray(target_kspace)[None],
                                           mask, None if maps is None else np.asarray(maps)[None])[0]

    def run_batch(self, arrays: dict[str, np.ndarray], causal: bool = False) -> np.ndarray:
        """One batched call of this model's operation on arrays named as its :class:`models.registry.InputSpec`."""
        if self.operation == "cine":
            return self.reconstruct_cine_batch(arrays["frames"], arrays["kspace"], arrays["mask"], arrays["maps"],
                                               causal=causal)
        if self.operation == "pair":
            return self.reconstruct_pair_batch(arrays.get("reference"), arrays["target"], arrays["kspace"],
                                               arrays["mask"], arrays["maps"])
        raise TypeError(f"{self.name} ({self.architecture}) is not served (operation {self.operation!r})")

    def reconstruct_single(self, target_zero_filled: np.ndarray, target_kspace: np.ndarray, mask: np.ndarray,
                           maps: np.ndarray | None) -> np.ndarray:
        """Single-contrast fallback (no reference)."""
        return self.reconstruct_pair(None, target_zero_filled, target_kspace, mask, maps)


def load_model(name: str = "kgmgt", device: str = "cpu", weights: str | Path | None = None,
               allow_random: bool = False, precision: str = "fp32", dc_method: str = "auto",
               dc_iterations: int = 5, runtime: str = "torch") -> Reconstructor:
    """Load a reconstructor.

    Args:
        name: a :mod:`models.registry` model with an operation (``"kgmgt"``: cine, ``"sgfmri"``: multi-contrast).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        weights: a ``.safetensors`` path (its ``.json`` card beside it); default
            the registry entry's ``default_weights``.
        allow_random: if no weights are found, return a randomly initialised
            network marked ``UNTRAINED-random-init`` (tests only).
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast on CUDA.
        dc_method: the multi-coil DC solver at inference. ``"gradient"``: the
            one step the networks were trained with. ``"prox"``: the exact
            soft-DC proximal step ``argmin ||z - x||^2 + lam ||A z - y||^2``
            with the learned ``lam``, by ``dc_iterations`` CG iterations -- it
            uses the coils fully (CG-SENSE anchored at the network's output).
            ``"auto"`` (default): ``prox`` with 5 iterations for soft-DC models,
            else ``gradient``. Five iterations were chosen on the phantom
            (a 192x156 validation cine at 8x and 10x: gradient 29.1/26.5 dB,
            prox-5 31.9/29.0 dB, prox-10 32.6/25.5 dB -- more iterations amplify
            aliasing once the acceleration exceeds the coil count), not on the
            evaluation data.
        runtime: ``"torch"`` (eager), or ``"onnxruntime"`` / ``"openvino"``:
            KGMgT's generator exported and run by that runtime on the CPU with
            ``torch.get_num_threads()`` threads, DC and the rest in torch
            (:mod:`models.runtimes`); on a
            CUDA device, and for SGF-MRI, the model stays on torch and
            ``info["runtime"]`` says so.
    """
    entry = registry.get(name)
    if not entry.operation:
        raise ValueError(f"model {name!r} is not served (no operation); served: {registry.served()}")
    dev = _pick_device(device)
    path = Path(weights) if weights is not None else entry.weights_path()
    if path is not None and path.with_suffix(".safetensors").exists():
        model, card = load_weights(path, dev)
        if card["architecture"] != name:
            raise ValueError(f"{path} holds a {card['architecture']} model, not {name}")
        rec = Reconstructor(model, name, path.stem, card.get("version", path.stem), dev, False, precision)
    elif allow_random:
        torch.manual_seed(0)
        rec = Reconstructor(build_model(name), name, f"{name}-{UNTRAINED}", UNTRAINED, dev, True, precision)
    else:
        raise FileNotFoundError(f"no weights at {path or f'(none registered for {name})'}; train them (streamrecon train) or pass allow_random=True for tests")
    rec.dc = set_dc(rec.model, dc_method, dc_iterations)
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if runtime != "torch" and dev.type == "cpu":
        rec.runtime = use_runtime(rec.model, runtime, torch.get_num_threads())
    return rec


def set_dc(model: torch.nn.Module, method: str, iterations: int) -> str:
    """Set every DC layer of ``model`` to ``method`` (``auto``, ``gradient`` or ``prox``) with ``iterations``.

    Serving (:func:`load_model`), training and the evaluation's ablation all set
    the solver through it, so one rule picks ``auto``'s method; returns the
    description images carry in their meta (``soft-prox-5``).
    """
    if method == "auto":
        method = "prox" if model.dc.mode == "soft" else "gradient"
    if method not in ("gradient", "prox"):
        raise ValueError(f"dc_method must be 'auto', 'gradient' or 'prox', got {method!r}")
    if method == "prox" and model.dc.mode != "soft":
        raise ValueError("the prox DC needs a soft-DC model")
    layers = model.dc_layers() if hasattr(model, "dc_layers") else [model.dc]
    for layer in layers:
        layer.method, layer.cg_iterations = method, iterations
    return f"{model.dc.mode}-{method}" + (f"-{iterations}" if method == "prox" else "")


# ---------------------------------------------------------------------------- one copy per process
_MODELS: dict[tuple, Reconstructor] = {}
_MODELS_LOCK = threading.Lock()
DEFAULT_CPU_THREADS = 1


def set_cpu_threads(threads: int) -> None:
    """Threads torch may use for CPU inference in this process.

    One by default: torch's OpenMP pool spin-waits, and with any other load on
    the cores (the frame path of the same scan, other scans, anything else on
    the host) two threads made one KGMgT call 40x slower than one thread on
    our 2-core machine (88 ms -> 3.4 s per 64x64 frame). Streaming work is
    parallel across scans and frames; a dedicated CPU inference box may ask
    for more.
    """
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def cached_model(name: str, device: str = "cpu", weights: str | None = None, allow_random: bool = False,
                 cpu_threads: int = DEFAULT_CPU_THREADS, cpu_runtime: str = "torch") -> Reconstructor:
    """:func:`load_model` once per (name, device, weights, CPU runtime) in this process.

    Shared by the in-process gadget backend and the servers, so every session
    of a long-lived host, and every request of a server, uses one copy.
    """
    key = model_key(name, device, weights, allow_random, cpu_runtime)
    with _MODELS_LOCK:
        rec = _MODELS.get(key)
        if rec is None:
            set_cpu_threads(cpu_threads)
            if runtime_missing(cpu_runtime):  # an optional package: torch serves instead, and says so
                log.warning("cpu_runtime %s unavailable (%s); using torch", cpu_runtime, runtime_missing(cpu_runtime))
                cpu_runtime = "torch"
            rec = load_model(name, device=device, weights=weights or None, allow_random=allow_random,
                             runtime=cpu_runtime)
            log.info("loaded %s (%s) on %s", rec.name, rec.version, rec.device)
            _MODELS[key] = rec
        return rec


__all__ = ["cached_model", "model_key", "set_cpu_threads", "DEFAULT_CPU_THREADS", "load_model", "Reconstructor",
           "robust_scale", "set_dc", "UNTRAINED"]
