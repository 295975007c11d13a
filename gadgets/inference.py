"""The one inference interface the deep-learning gadgets call (docs/design.md, contract 4).

Two backends answer the same three calls:

- :class:`InProcessBackend` (the default): ``models.inference.load_model`` in
  this process. Loaded models are cached per process, so every session of
  the embedded host shares one copy, and its calls run one at a time on one
  thread, sessions taking turns (:mod:`gadgets.model_turns`); a fresh
  Gadgetron external process pays the load once per scan.
- the inference service client (``pipelines.inference_client``), chosen by
  the pipeline property ``inference="service"``; the endpoint is the host
  operator's setting ``inference_endpoint`` (:mod:`gadgets.host_settings`).
- the Triton client (``pipelines.triton_client``, ``inference="triton"``):
  NVIDIA Triton Inference Server over gRPC at the operator's ``triton_endpoint``.

The operator setting ``inference_override`` replaces every pipeline's
choice (e.g. ``service`` under Gadgetron's execute mode, where a per-scan
process would otherwise load the model at the start of every scan); a
pipeline never chooses an endpoint or overrides the operator.

The clients are imported by name with :mod:`importlib`, so no gadget module
imports socket code statically (gadgets know no sockets; ``pipelines`` does).

Calls (NumPy in, NumPy out, shapes as in :mod:`models.inference`)::

    backend.cine_batch(frames (B,3,ny,nx), kspace (B,C,ny,nx), mask (B,ny), maps (B,C,ny,nx), causal) -> (B,ny,nx)
    backend.pair_batch(reference (B,ny,nx) | None, target_zf (B,ny,nx), kspace, mask, maps) -> (B,ny,nx)
    backend.model_info(model) -> {"name", "version", "device", ...}

Every failure (model error, timeout, service down) raises
:class:`InferenceError`; the gadgets catch it and fall back to the
best classical image they have, flagged in the image meta.
"""
from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import host_settings, properties
from .model_turns import turns_for

log = logging.getLogger(__name__)

CLIENT_MODULE = "pipelines.inference_client"
TRITON_MODULE = "pipelines.triton_client"
INFERENCE_CHOICES = ("in-process", "service", "triton")


class InferenceError(RuntimeError):
    """Inference did not produce an image (the reason is the message)."""


class Backend(Protocol):
    label: str

    def cine_batch(self, frames: np.ndarray, kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray,
                   causal: bool) -> np.ndarray: ...

    def pair_batch(self, reference: np.ndarray | None, target: np.ndarray, kspace: np.ndarray, mask: np.ndarray,
                   maps: np.ndarray) -> np.ndarray: ...

    def model_info(self, model: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


_MODELS: dict[tuple, Any] = {}
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
    import torch  # the models' dependency; imported only when a model is used

    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def model_key(name: str, device: str = "cpu", weights: str | None = None, allow_random: bool = False,
              cpu_runtime: str = "torch") -> tuple:
    """What identifies one loaded model in this process."""
    return (name, device, str(Path(weights).resolve()) if weights else "", bool(allow_random), cpu_runtime)


def cached_model(name: str, device: str = "cpu", weights: str | None = None, allow_random: bool = False,
                 cpu_threads: int = DEFAULT_CPU_THREADS, cpu_runtime: str = "torch"):
    """``models.inference.load_model`` once per (name, device, weights, CPU runtime) in this process."""
    key = model_key(name, device, weights, allow_random, cpu_runtime)
    with _MODELS_LOCK:
        rec = _MODELS.get(key)
        if rec is None:
            from models.inference import load_model
            from models.runtimes import runtime_missing

            set_cpu_threads(cpu_threads)
            if runtime_missing(cpu_runtime):  # an optional package: torch serves instead, and says so
                log.warning("cpu_runtime %s unavailable (%s); using torch", cpu_runtime, runtime_missing(cpu_runtime))
                cpu_runtime = "torch"
            rec = load_model(name, device=device, weights=weights or None, allow_random=allow_random,
                             runtime=cpu_runtime)
            log.info("loaded %s (%s) on %s", rec.name, rec.version, rec.device)
            _MODELS[key] = rec
        return rec


class InProcessBackend:
    """Models in this process, shared by every session: one copy each, calls in turns (:mod:`gadgets.model_turns`)."""

    label = "in-process"

    def __init__(self, device: str = "cpu", weights: dict[str, str | None] | None = None,
                 allow_random: bool = False, cpu_threads: int = DEFAULT_CPU_THREADS, cpu_runtime: str = "torch") -> None:
        self.device = device
        self.weights = dict(weights or {})
        self.allow_random = allow_random
        self.cpu_threads = cpu_threads
        self.cpu_runtime = cpu_runtime

    def _model(self, name: str):
        try:
            return cached_model(name, self.device, self.weights.get(name), self.allow_random, self.cpu_threads,
                                self.cpu_runtime)
        except Exception as exc:
            raise InferenceError(f"cannot load {name}: {type(exc).__name__}: {exc}") from exc

    def turns(self, name: str):
        """The process-wide turns of model ``name`` as this backend loads it."""
        return turns_for(model_key(name, self.device, self.weights.get(name), self.allow_random, self.cpu_runtime), name)

    def _call(self, name: str, items: int, fn) -> np.ndarray:
        rec = self._model(name)
        try:
            # this backend object is the session (each session builds its own)
            return self.turns(name).call(self, lambda: fn(rec), items)
        except Exception as exc:
            raise InferenceError(f"{name} failed: {type(exc).__name__}: {exc}") from exc

    def expected_wait_s(self, name: str) -> float:
        """How long a call of this session would wait now for the other sessions' turns on model ``name``."""
        return self.turns(name).expected_wait_s(self)

    def last_wait_s(self, name: str) -> float:
        """How long this thread's last call of model ``name`` waited for its turn."""
        return self.turns(name).last_wait_s()

    def cine_batch(self, frames, kspace, mask, maps, causal):
        return self._call("kgmgt", len(frames),
                          lambda rec: rec.reconstruct_cine_batch(frames, kspace, mask, maps, causal=causal))

    def pair_batch(self, reference, target, kspace, mask, maps):
        return self._call("sgfmri", len(target),
                          lambda rec: rec.reconstruct_pair_batch(reference, target, kspace, mask, maps))

    def model_info(self, model: str) -> dict[str, Any]:
        return dict(self._model(model).info)

    def close(self) -> None:
        pass


def backend_from_config(config: Any, settings: host_settings.OperatorSettings | None = None) -> Backend:
    """The backend a gadget's configuration chooses, set up from the host operator's settings.

    The pipeline chooses only ``inference`` ("in-process", the default,
    "service" or "triton"), unless the operator's ``inference_override``
    says otherwise; the endpoints, timeout, device, threads, weights and
    ``allow_random`` are operator settings (:mod:`gadgets.host_settings`), and a
    configuration that names one is refused.
    """
    host_settings.check_config(config)
    settings = settings if settings is not None else host_settings.load()
    choice = properties.get(config, "inference", "in-process").strip().lower()
    if choice not in INFERENCE_CHOICES:
        raise ValueError(f"property 'inference' must be one of {INFERENCE_CHOICES}, not {choice!r}")
    override = str(settings.inference_override or "").strip().lower()
    if override:
        if override not in INFERENCE_CHOICES:
            raise ValueError(f"operator setting inference_override must be one of {INFERENCE_CHOICES} or empty, "
                             f"not {override!r}")
        if override != choice:
            log.info("inference %s chosen by the operator (inference_override) instead of the pipeline's %s",
                     override, choice)
        choice = override
    if choice == "service":
        module = importlib.import_module(CLIENT_MODULE)
        return module.InferenceClient(settings.inference_endpoint, timeout_ms=settings.inference_timeout_ms)
    if choice == "triton":
        module = importlib.import_module(TRITON_MODULE)
        return module.TritonClient(settings.triton_endpoint, timeout_ms=settings.inference_timeout_ms)
    return InProcessBackend(
        device=settings.device,
        weights={"kgmgt": settings.kgmgt_weights or None, "sgfmri": settings.sgfmri_weights or None},
        allow_random=settings.allow_random,
        cpu_threads=settings.cpu_threads,
        cpu_runtime=settings.cpu_runtime,
    )


def preload(config: Any, model: str, settings: host_settings.OperatorSettings | None = None) -> str:
    """Load ``model`` now if this gadget configuration runs it in-process (a long-lived host's warm start).

    Returns what was done, for the log; a configuration that uses the
    inference service has nothing to load here.
    """
    backend = backend_from_config(config, settings)
    if not isinstance(backend, InProcessBackend):
        backend.close()
        return f"{model}: served by {backend.label}"
    info = backend.model_info(model)
    return f"{model}: {info.get('version', '?')} on {info.get('device', '?')}"


def model_meta(backend: Backend, model: str) -> dict[str, str]:
    """Meta naming the model for the images; never raises (a dead service is reported by the call itself)."""
    try:
        info = backend.model_info(model)
    except Exception as exc:  # the fallback path will say why per image
        log.warning("model info unavailable from %s: %s", backend.label, exc)
        return {"ModelVersion": "unknown", "Weights": "unknown"}
    return {"ModelVersion": str(info.get("version", "unknown")), "Weights": str(info.get("name", "unknown")),
            "InferenceDevice": str(info.get("device", "unknown")),
            "ModelInputs": str(info.get("inputs", "zero-filled"))} | (
        {"InferenceRuntime": str(info["runtime"])} if info.get("runtime", "torch") != "torch" else {})


__all__ = ["InferenceError", "InProcessBackend", "backend_from_config", "cached_model", "model_key", "model_meta",
           "set_cpu_threads"]
