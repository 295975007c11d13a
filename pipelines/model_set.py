"""The served models, shared by the ZeroMQ service and the Triton server: loaded once, checked, batched, timed.

:class:`ModelSet` loads the :mod:`models.registry` models a server is asked
for, warms each up with one small request and keeps the measured model time
(from which clients derive their timeouts); :func:`validate` checks a decoded
request against its operation's input spec before any model work (it
arrives from the network). The servers' model options (``--models``,
``--model-module``, ``--weights``) are here too, so both servers take the same
ones. Nothing here opens a socket or names a model.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from models import registry
from models.inference import cached_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for; checked before any model work (a request arrives from the network)."""

    max_message_bytes: int = 64 * 2**20  # ZMQ_MAXMSGSIZE: larger messages are dropped by ZeroMQ itself
    max_side: int = 512                  # ny, nx
    max_coils: int = 64
    max_items: int = 16                  # batch items in one request
    max_queued: int = 256                # requests waiting for the model; beyond, "busy" at once


def request_model(header: dict[str, Any]) -> str:
    """The registry model a model call asks for: its ``model``, else its operation's default."""
    return header.get("model") or registry.default_model(header["op"])


def validate(header: Any, arrays: dict[str, np.ndarray], limits: RequestLimits) -> None:
    """Raise ``ValueError`` naming what is wrong with a decoded request (shapes, dtypes, sizes, fields)."""
    if not isinstance(header, dict):
        raise ValueError("the header must be a JSON object")
    op = header.get("op")
    if op not in ("health", "info") and op not in registry.OPERATIONS:
        raise ValueError(f"unknown op {op!r}")
    if op == "info":
        if not isinstance(header.get("model"), str):
            raise ValueError(f"info needs a model name, not {header.get('model')!r}")
        return
    if op == "health":
        return
    model = header.get("model")
    if model is not None and (not isinstance(model, str) or model not in registry.names(op)):
        raise ValueError(f"model {model!r} does not answer {op!r} (those that do: {registry.names(op)})")
    spec = registry.OPERATIONS[op]
    for flag in spec.flags:
        if not isinstance(header.get(flag, False), bool):
            raise ValueError(f"{flag} must be true or false")
    needed, optional = set(spec.required), set(spec.optional)
    missing, extra = needed - set(arrays), set(arrays) - needed - optional
    if missing or extra:
        raise ValueError(f"{op} needs arrays {sorted(needed)}" + (f" (+ optional {sorted(optional)})" if optional else "")
                         + f"; missing {sorted(missing)}, unexpected {sorted(extra)}")
    k = arrays["kspace"]
    if k.ndim != 4 or k.dtype != np.complex64:
        raise ValueError(f"kspace must be complex64 (B, coils, ny, nx), got {k.dtype} {k.shape}")
    b, coils, ny, nx = k.shape
    if not 1 <= b <= limits.max_items:
        raise ValueError(f"{b} items in one request (allowed 1..{limits.max_items})")
    if not (1 <= ny <= limits.max_side and 1 <= nx <= limits.max_side):
        raise ValueError(f"matrix {ny}x{nx} exceeds this service's limit of {limits.max_side} per side")
    if not 1 <= coils <= limits.max_coils:
        raise ValueError(f"{coils} coils (allowed 1..{limits.max_coils})")
    for name in spec.complex_arrays():
        shape = spec.shape(name, b, coils, ny, nx)
        if name in arrays and (arrays[name].shape != shape or arrays[name].dtype != np.complex64):
            raise ValueError(f"{name} must be complex64 {shape}, got {arrays[name].dtype} {arrays[name].shape}")
    m = arrays["mask"]
    if m.dtype != np.bool_ or m.shape not in ((b, ny), (b, ny, nx)):
        raise ValueError(f"mask must be bool ({b}, {ny}) or ({b}, {ny}, {nx}), got {m.dtype} {m.shape}")


def warm_up_arrays(operation: str, n: int = 64, coils: int = 2) -> dict[str, np.ndarray]:
    """A small valid request of ``operation``: one item, one k-space column, uniform maps, images of ones."""
    spec = registry.OPERATIONS[operation]
    arrays: dict[str, np.ndarray] = {}
    for name in spec.complex_arrays():
        arrays[name] = np.ones(spec.shape(name, 1, coils, n, n), np.complex64)
    arrays["kspace"] = np.zeros((1, coils, n, n), np.complex64)
    arrays["kspace"][:, :, :, n // 2] = 1.0
    arrays["maps"] = np.full((1, coils, n, n), 1 / np.sqrt(coils), np.complex64)
    arrays["mask"] = np.ones((1, n), bool)
    return arrays


class ModelSet:
    """The served models, loaded and warmed once, with their measured time; runs one batch of requests.

    Shared by the ZeroMQ service and the Triton server (:mod:`pipelines.triton_server`),
    so both serve the same models the same way.
    """

    def __init__(self, models: Sequence[str] | None = None, device: str = "auto",
                 weights: dict[str, str | None] | None = None, allow_random: bool = False,
                 cpu_threads: int = 1) -> None:
        models = registry.served() if models is None else models
        self.weights = dict(weights or {})
        self.models: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        self.ms_per_mpixel: dict[str, float] = {}  # measured model time, for the clients' timeouts
        t0 = time.perf_counter()
        for name in models:
            try:
                self.models[name] = cached_model(name, device, self.weights.get(name), allow_random, cpu_threads)
                self._warm_up(name)
            except Exception as exc:  # serve the others; requests for this one are answered with the reason
                self.models.pop(name, None)
                self.unavailable[name] = f"{type(exc).__name__}: {exc}"
                log.error("model %s not loaded: %s", name, self.unavailable[name])
        if not self.models:
            raise RuntimeError(f"no model could be loaded: {self.unavailable}")
        self.load_s = time.perf_counter() - t0

    def _warm_up(self, name: str) -> None:
        """One small call, so the first scan does not pay for it and clients get a measured time."""
        n = 64
        t0 = time.perf_counter()
        self.models[name].run_batch(warm_up_arrays(registry.get(name).operation, n))
        self._measured(name, time.perf_counter() - t0, n * n)

    def _measured(self, name: str, seconds: float, pixels: int) -> None:
        rate = seconds * 1000.0 / max(pixels / 1e6, 1e-6)
        old = self.ms_per_mpixel.get(name)
        self.ms_per_mpixel[name] = rate if old is None else 0.7 * old + 0.3 * rate

    def run(self, model: str, causal: bool, requests: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Validated requests of one model, mode and shape as one model call; one ``(b, ny, nx)`` image stack each.

        Raises whatever the model raises (the caller answers every request of the batch with it).
        """
        rec = self.models[model]
        sizes = [len(a["kspace"]) for a in requests]
        arrays = {name: np.concatenate([a[name] for a in requests]) for name in requests[0]}
        t0 = time.perf_counter()
        images = rec.run_batch(arrays, causal)
        ny, nx = requests[0]["kspace"].shape[-2:]
        self._measured(model, time.perf_counter() - t0, sum(sizes) * ny * nx)
        bounds = np.cumsum([0] + sizes)
        return [images[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    @staticmethod
    def group_key(model: str, arrays: dict[str, np.ndarray], causal: bool = False) -> tuple:
        """Requests with equal keys can run as one batch (same model, mode, optional inputs and item shapes)."""
        shapes = tuple((n, a.shape[1:], a.dtype.name) for n, a in sorted(arrays.items()))
        return model, bool(causal), shapes


# ---------------------------------------------------------------------------- the servers' model options
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model-module``, ``--models``, ``--weights NAME=PATH``, ``--NAME-weights`` per registered model.

    Shared by ``infer-server`` and ``triton-server``; the per-model flags come
    from the registry (after ``--model-module`` imports, see :func:`parse_server_args`).
    """
    p.add_argument("--model-module", action="append", default=None, metavar="MODULE",
                   help="import MODULE first: it registers more models (models.registry.register); repeatable")
    p.add_argument("--models", default=None,
                   help=f"comma-separated models to load (default: every registered one: {','.join(registry.served())})")
    p.add_argument("--weights", action="append", default=None, metavar="NAME=PATH",
                   help="a model's .safetensors (default: its registered set); repeatable")
    for name in registry.served():
        p.add_argument(f"--{name}-weights", dest=f"weights_of_{name}", default=None,
                       help=f"{registry.get(name).label} .safetensors (default: the shipped set)")
    p.add_argument("--allow-random", action="store_true", help="tests only: untrained networks when weights are missing")


def parse_server_args(build: Any, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse a server's arguments; ``--model-module`` modules are imported first, so their models get flags."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--model-module", action="append", default=[])
    known, _ = early.parse_known_args(argv)
    registry.import_modules(known.model_module)
    return build().parse_args(argv)


def chosen_models(args: argparse.Namespace) -> tuple[list[str], dict[str, str | None]]:
    """The models a server's arguments ask for, and their weights (``None``: the registered set)."""
    models = registry.served() if args.models is None else [m for m in args.models.split(",") if m]
    weights: dict[str, str | None] = {n: getattr(args, f"weights_of_{n}", None) for n in registry.served()}
    for item in args.weights or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--weights {item!r}: expected NAME=PATH")
        weights[name] = path
    return models, weights


def write_ready_file(path: str, endpoint: str) -> None:
    """Tell a script the server is serving: ``endpoint`` written to ``path`` through a renamed temporary
    file, so whoever polls ``path`` never reads half a line."""
    with open(path + ".tmp", "w") as f:
        f.write(endpoint + "\n")
    os.replace(path + ".tmp", path)


__all__ = ["ModelSet", "RequestLimits", "validate", "write_ready_file", "request_model", "warm_up_arrays", "add_model_arguments",
           "parse_server_args", "chosen_models"]
