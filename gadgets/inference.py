"""The one inference interface the deep-learning gadgets call (docs/design.md, contract 4).

Three backends answer the same calls, for any model of :mod:`models.registry`:

- :class:`InProcessBackend` (the default): ``models.inference.cached_model`` in
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
imports socket code statically (gadgets know no sockets; ``pipelines`` does);
the clients import nothing of ``gadgets`` (their error type,
:class:`~models.registry.InferenceError`, lives in ``models``), so there is no loop.

Calls (NumPy in, NumPy out, shapes as in :mod:`models.inference`; ``model``
a registry name, default the operation's :func:`~models.registry.default_model`)::

    backend.cine_batch(frames (B,3,ny,nx), kspace (B,C,ny,nx), mask (B,ny), maps (B,C,ny,nx), causal, model=) -> (B,ny,nx)
    backend.pair_batch(reference (B,ny,nx) | None, target_zf (B,ny,nx), kspace, mask, maps, model=) -> (B,ny,nx)
    backend.model_info(model) -> {"name", "version", "device", ...}

Every failure (model error, timeout, service down) raises
:class:`InferenceError`; the gadgets catch it and fall back to the
best classical image they have, flagged in the image meta.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any, Protocol

import numpy as np

from models import registry
from models.registry import InferenceError, OperationCalls, model_key

from . import host_settings, properties
from .model_turns import turns_for

log = logging.getLogger(__name__)

CLIENT_MODULE = "pipelines.inference_client"
TRITON_MODULE = "pipelines.triton_client"
INFERENCE_CHOICES = ("in-process", "service", "triton")
DEFAULT_CPU_THREADS = 1  # models.inference.DEFAULT_CPU_THREADS (imported with torch only when a model loads)


class Backend(Protocol):
    label: str

    def cine_batch(self, frames: np.ndarray, kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray,
                   causal: bool, model: str | None = None) -> np.ndarray: ...

    def pair_batch(self, reference: np.ndarray | None, target: np.ndarray, kspace: np.ndarray, mask: np.ndarray,
                   maps: np.ndarray, model: str | None = None) -> np.ndarray: ...

    def model_info(self, model: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


def set_cpu_threads(threads: int) -> None:
    """See :func:`models.inference.set_cpu_threads` (torch is imported only when a model is used)."""
    from models.inference import set_cpu_threads as set_threads

    set_threads(threads)


def cached_model(name: str, device: str = "cpu", weights: str | None = None, allow_random: bool = False,
                 cpu_threads: int = DEFAULT_CPU_THREADS, cpu_runtime: str = "torch") -> Any:
    """:func:`models.inference.cached_model`: one copy of a model per process (torch imported on first use)."""
    from models.inference import cached_model as load_once

    return load_once(name, device, weights, allow_random, cpu_threads, cpu_runtime)


class InProcessBackend(OperationCalls):
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

    def run(self, name: str, arrays: dict[str, Any], causal: bool = False) -> np.ndarray:
        """One batched call of model ``name``'s operation (arrays as its :class:`~models.registry.InputSpec`)."""
        items = len(arrays[registry.get(name).spec.target])
        return self._call(name, items, lambda rec: rec.run_batch(arrays, causal))

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
        weights=host_settings.weights_by_model(settings),
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
           "set_cpu_threads", "Backend"]
