"""Gadget-side backend on NVIDIA Triton Inference Server, reached with ``tritonclient`` over gRPC.

The pipelines with ``inference=triton`` use it; the server is the operator
setting ``triton_endpoint`` (``host:port`` of Triton's gRPC port, e.g. one
``streamrecon triton-server`` per GPU node). It answers the same calls as the
ZeroMQ client it extends (:class:`pipelines.inference_client.InferenceClient`),
with the same rules: every failure (server down, model error, no answer in
time) is an :class:`~models.registry.InferenceError`, so the gadget sends the
flagged classical fallback image; after a transport failure further calls fail at
once for ``retry_after_s``; the timeout is derived from the model time the
server measured unless the operator fixes ``inference_timeout_ms``.

Tensors (Triton has no complex type: complex64 travels as float32 with a
trailing real/imaginary axis of 2, a view, not a copy). One Triton model per
:mod:`models.registry` model, named as in the registry, batched on the first
axis by Triton's dynamic batcher across every scan that reaches the server;
its inputs are its operation's :class:`~models.registry.InputSpec`:

- every complex array of the spec as FP32 with a trailing axis of 2 (``cine``:
  frames ``(3, ny, nx, 2)``; ``pair``: target and optional reference
  ``(ny, nx, 2)``; both: kspace and maps ``(C, ny, nx, 2)``), mask ``(ny, nx)``
  BOOL, and each flag of the spec (``causal``) as ``(1,)`` BOOL;
- every model answers image ``(ny, nx, 2)`` FP32, ms_per_mpixel ``(1,)`` FP32 and
  error ``(1,)`` BYTES (empty when the image is good);
- ``streamrecon_info``: model ``(1,)`` BYTES -> info ``(1,)`` BYTES (JSON: the
  model's ``info`` and ``ms_per_mpixel``, or ``error``).

Health is Triton's own: ``/v2/health/live``, ``/v2/health/ready`` and per-model
readiness (gRPC ``ServerLive``/``ServerReady``/``ModelReady``), plus Triton's
statistics (``inference_count`` items in ``execution_count`` model runs).
"""
from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from models import registry
from models.registry import InferenceError

from .inference_client import InferenceClient

log = logging.getLogger(__name__)

INFO_MODEL = "streamrecon_info"


def as_real(a: np.ndarray) -> np.ndarray:
    """complex64 ``(...)`` -> float32 ``(..., 2)`` (a view when contiguous)."""
    a = np.ascontiguousarray(a, np.complex64)
    return a.view(np.float32).reshape(a.shape + (2,))


def as_complex(a: np.ndarray) -> np.ndarray:
    """float32 ``(..., 2)`` -> complex64 ``(...)``."""
    a = np.ascontiguousarray(a, np.float32)
    if a.ndim == 0 or a.shape[-1] != 2:
        raise ValueError(f"expected a trailing real/imaginary axis of 2, got shape {a.shape}")
    return a.view(np.complex64)[..., 0]


def grpc_url(endpoint: str) -> str:
    """``host:port`` for tritonclient from ``host:port`` or ``grpc://host:port``."""
    url = endpoint.strip()
    for prefix in ("grpc://", "tcp://"):
        if url.startswith(prefix):
            url = url[len(prefix):]
    if ":" not in url:
        raise ValueError(f"triton endpoint {endpoint!r} must be host:port (Triton's gRPC port, 8001 by default)")
    return url


def _tritonclient():
    try:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:  # the gadget falls back, saying how to fix it
        raise InferenceError("tritonclient is not installed on this host: pip install 'streamrecon[triton-client]' "
                             f"({exc})") from exc
    return grpcclient, InferenceServerException


class TritonClient(InferenceClient):
    """A gRPC connection to a Triton server serving the project's models; one request in flight."""

    kind = "Triton server"

    def __init__(self, endpoint: str, timeout_ms: float = 0, retry_after_s: float = 2.0) -> None:
        super().__init__(endpoint, timeout_ms=timeout_ms, retry_after_s=retry_after_s)
        self.label = f"triton {endpoint}"
        self._client = None

    def _connect(self):
        if self._client is None:
            grpcclient, _ = _tritonclient()
            self._client = grpcclient.InferenceServerClient(url=grpc_url(self.endpoint))
        return self._client

    def _reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # a broken channel may fail to close; it is dropped either way
                pass

    # ---------------------------------------------------------------- transport
    def _exchange(self, header: dict[str, Any], arrays: dict[str, np.ndarray | None],
                  timeout: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        op = header.get("op")
        client = self._connect()
        _, server_error = _tritonclient()
        try:
            if op == "health":
                return self._ask_health(client, timeout), {}
            if op == "info":
                return self._ask_info(client, header["model"], timeout), {}
            if op in registry.OPERATIONS:
                return self._infer(client, header.get("model") or registry.default_model(op), header, arrays, timeout)
        except server_error as exc:
            if "DEADLINE_EXCEEDED" in str(exc.status()) or "Deadline" in str(exc):
                raise TimeoutError(f"no answer within {timeout} ms") from exc
            raise
        raise ValueError(f"unknown op {op!r}")

    def _ask_health(self, client, timeout: int) -> dict[str, Any]:
        s = timeout / 1000.0
        live = client.is_server_live(client_timeout=s)
        ready = client.is_server_ready(client_timeout=s)
        served = registry.served()
        models = {m: bool(client.is_model_ready(m, client_timeout=s)) for m in served + [INFO_MODEL]}
        counts = {}
        for m in served:
            if models[m]:
                stats = client.get_inference_statistics(m, as_json=True, client_timeout=s)
                for entry in stats.get("model_stats", []):
                    counts[m] = {"inference_count": int(entry.get("inference_count", 0)),
                                 "execution_count": int(entry.get("execution_count", 0))}
        # Triton reports itself ready before PyTriton has bound the models: ready means all of them
        ok = live and ready and all(models.values())
        return {"ok": True, "status": "ready" if ok else "not ready", "live": bool(live),
                "ready": bool(ready), "models": models, "counts": counts}

    def _ask_info(self, client, model: str, timeout: int) -> dict[str, Any]:
        grpcclient, _ = _tritonclient()
        name = grpcclient.InferInput("model", [1], "BYTES")
        name.set_data_from_numpy(np.array([model.encode()], dtype=np.object_))
        result = client.infer(INFO_MODEL, [name], client_timeout=timeout / 1000.0)
        info = json.loads(bytes(result.as_numpy("info")[0]).decode())
        if "error" in info:
            return {"ok": False, "error": info["error"]}
        return {"ok": True, "info": info["info"], "ms_per_mpixel": info.get("ms_per_mpixel")}

    def _infer(self, client, model: str, header: dict[str, Any], arrays: dict[str, np.ndarray | None],
               timeout: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        grpcclient, _ = _tritonclient()
        kspace = np.asarray(arrays["kspace"])
        b, _, ny, nx = kspace.shape
        mask = np.asarray(arrays["mask"], bool)
        if mask.ndim == 2:  # (B, ny) line masks: every readout sample of a line
            mask = np.broadcast_to(mask[:, :, None], (b, ny, nx))
        spec = registry.get(model).spec
        tensors: dict[str, np.ndarray] = {"mask": np.ascontiguousarray(mask)}
        for name in spec.complex_arrays():
            if arrays.get(name) is not None:
                tensors[name] = as_real(arrays[name])
        for flag in spec.flags:
            tensors[flag] = np.full((b, 1), bool(header.get(flag, False)))
        inputs = []
        for name, a in tensors.items():
            t = grpcclient.InferInput(name, list(a.shape), "BOOL" if a.dtype == np.bool_ else "FP32")
            t.set_data_from_numpy(a)
            inputs.append(t)
        result = client.infer(model, inputs, client_timeout=timeout / 1000.0)
        errors = [bytes(e).decode(errors="replace") for e in result.as_numpy("error").reshape(-1)]
        if any(errors):
            return {"ok": False, "error": next(e for e in errors if e)}, {}
        rate = result.as_numpy("ms_per_mpixel").reshape(-1)
        return {"ok": True, "ms_per_mpixel": float(rate[0])}, {"image": as_complex(result.as_numpy("image"))}

    def close(self) -> None:
        self._reset()


def health(endpoint: str, timeout_ms: int = 1000) -> dict[str, Any]:
    """One health check of the Triton server at ``endpoint`` (raises InferenceError when it does not answer)."""
    client = TritonClient(endpoint, timeout_ms=timeout_ms, retry_after_s=0.0)
    try:
        return client.health(timeout_ms)
    finally:
        client.close()


__all__ = ["TritonClient", "health", "as_real", "as_complex", "grpc_url", "INFO_MODEL"]
