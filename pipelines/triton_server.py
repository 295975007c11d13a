"""``streamrecon triton-server``: the project's models on NVIDIA Triton Inference Server, through PyTriton.

For sites with many scanners and several GPUs: one Triton per GPU node,
every gadget host's ``inference=triton`` pipelines pointing at it (operator
setting ``triton_endpoint``). PyTriton (``nvidia-pytriton``, Apache-2.0)
bundles ``tritonserver``; Triton owns the network side (gRPC on 8001, HTTP on
8000, Prometheus metrics on 8002, health at ``/v2/health/live`` and
``/v2/health/ready``, per-model readiness and statistics) and batches requests
from every scan that arrives within ``--batch-delay-us`` of each other (its
dynamic batcher); the batch then runs here, in this process, on the same
loaded models as ``streamrecon infer-server`` (:class:`pipelines.model_set.ModelSet`):
one Triton model per :mod:`models.registry` model, its tensors declared from
its operation's input spec (:mod:`pipelines.triton_client`).

    streamrecon triton-server [--host 127.0.0.1] [--grpc-port 8001] [--device auto]
    streamrecon triton-server --check 127.0.0.1:8001     # health, exit status 0 when ready

PyTriton 0.7.0 pins numpy<2, so it runs from its own environment
(``make triton-env`` builds ``.venv-triton``); the gadget hosts need only
``tritonclient``. Every request is validated (shapes, dtypes, sizes, the
limits of :class:`~pipelines.model_set.RequestLimits`) before model
work; a bad or failed one is answered with its reason in the ``error`` output
(the gadget falls back, flagged), and the rest of its batch is still served.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import sysconfig
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from models import registry

from .cli_help import HelpFormatter
from .model_set import (ModelSet, RequestLimits, add_model_arguments, chosen_models, parse_server_args, validate,
                        write_ready_file)
from .triton_client import INFO_MODEL, as_complex, as_real

log = logging.getLogger(__name__)


def _decode_request(model: str, data: dict[str, np.ndarray], limits: RequestLimits) -> tuple[bool, dict[str, np.ndarray]]:
    """Triton tensors of one request -> (causal, the arrays :func:`validate` and :class:`ModelSet` take)."""
    spec = registry.get(model).spec
    arrays = {}
    for name, a in data.items():
        if name in spec.complex_arrays():
            arrays[name] = as_complex(a)
        elif name == "mask":
            arrays[name] = np.asarray(a, bool)
        elif name not in spec.flags:
            raise ValueError(f"unexpected input {name!r}")
    header: dict[str, Any] = {"op": spec.operation, "model": model}
    for flag in spec.flags:
        flags = np.asarray(data.get(flag, np.zeros((1, 1), bool)), bool).reshape(-1)
        if flags.size and flags.any() != flags.all():
            raise ValueError(f"one request mixes {flag} and not-{flag} items")
        header[flag] = bool(flags.size and flags[0])
    validate(header, arrays, limits)
    return bool(header.get("causal", False)), arrays


def _error_reply(items: int, text: str) -> dict[str, np.ndarray]:
    return {"image": np.zeros((items, 1, 1, 2), np.float32), "ms_per_mpixel": np.zeros((items, 1), np.float32),
            "error": np.array([[text.encode()]] * items, dtype=np.object_)}


def make_infer(model_set: ModelSet, model: str, limits: RequestLimits | None = None):
    """The PyTriton inference callable of ``model``: a list of requests (Triton's dynamic batch) -> replies.

    Requests are grouped by mode and shape and each group runs as one model
    call; a request that fails validation, or a group whose call fails, is
    answered through the ``error`` output, so one bad scan never fails another's frames.
    """
    limits = limits or RequestLimits()

    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        replies: list[dict[str, np.ndarray] | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = defaultdict(list)
        for i, request in enumerate(requests):
            items = len(next(iter(request.data.values())))
            try:
                if model not in model_set.models:
                    raise RuntimeError(f"{model} not loaded: {model_set.unavailable.get(model, 'not asked for (--models)')}")
                causal, arrays = _decode_request(model, dict(request.data), limits)
            except Exception as exc:
                replies[i] = _error_reply(items, f"bad request: {type(exc).__name__}: {exc}")
                continue
            groups[ModelSet.group_key(model, arrays, causal)].append((i, arrays))
        for (_, causal, _), members in groups.items():
            try:
                images = model_set.run(model, causal, [a for _, a in members])
            except Exception as exc:
                log.warning("%s batch of %d failed: %s: %s", model, len(members), type(exc).__name__, exc)
                for i, arrays in members:
                    replies[i] = _error_reply(len(arrays["kspace"]), f"{type(exc).__name__}: {exc}")
                continue
            rate = np.float32(model_set.ms_per_mpixel[model])
            for (i, _), image in zip(members, images):
                replies[i] = {"image": as_real(image), "ms_per_mpixel": np.full((len(image), 1), rate, np.float32),
                              "error": np.array([[b""]] * len(image), dtype=np.object_)}
        return replies

    return infer


def make_info(model_set: ModelSet):
    """The ``streamrecon_info`` callable: a model's ``info`` and measured time as JSON."""
    def info(requests: list) -> list[dict[str, np.ndarray]]:
        out = []
        for request in requests:
            name = bytes(np.asarray(request.data["model"]).reshape(-1)[0]).decode(errors="replace")
            rec = model_set.models.get(name)
            if rec is None:
                why = model_set.unavailable.get(name, "not asked for (--models)")
                body: dict[str, Any] = {"error": f"model {name!r} not loaded: {why}"}
            else:
                body = {"info": rec.info, "ms_per_mpixel": model_set.ms_per_mpixel.get(name)}
            out.append({"info": np.array([json.dumps(body).encode()], dtype=np.object_)})
        return out

    return info


def _tensors(model: str):
    """Triton's tensors of ``model``, from its operation's input spec (complex arrays as float pairs)."""
    from pytriton.model_config import Tensor

    spec = registry.get(model).spec
    inputs = [Tensor(name=name, dtype=np.float32, shape=spec.item_shape(name) + (2,), optional=name in spec.optional)
              for name in spec.complex_arrays()]
    inputs.append(Tensor(name="mask", dtype=np.bool_, shape=(-1, -1)))
    inputs += [Tensor(name=flag, dtype=np.bool_, shape=(1,)) for flag in spec.flags]
    outputs = [Tensor(name="image", dtype=np.float32, shape=(-1, -1, 2)),
               Tensor(name="ms_per_mpixel", dtype=np.float32, shape=(1,)), Tensor(name="error", dtype=bytes, shape=(1,))]
    return inputs, outputs


def python_backend_library_path() -> dict[str, str]:
    """Environment so Triton's Python-backend stub loads *this* interpreter's libpython.

    The stub is linked against ``libpython3.X.so.1.0`` and takes the first one
    the loader finds: on a machine whose system Python differs in patch
    version from the one running this server (a pyenv or conda Python beside
    Debian's), that mixes one version's C runtime with the other's standard
    library, and the stub fails to start (seen here: ``_thread.RLock`` has no
    ``_recursion_count``). Putting this interpreter's LIBDIR first avoids it.
    """
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if not libdir or not ldlib or not (Path(libdir) / ldlib).exists():
        return {}
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if current.split(os.pathsep)[:1] == [libdir]:
        return {}
    return {"LD_LIBRARY_PATH": os.pathsep.join(p for p in (libdir, current) if p)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrecon triton-server", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address Triton binds (0.0.0.0: every interface, for the "
                                                       "gadget hosts of a site; Triton has no authentication)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (what triton_endpoint names)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (health: /v2/health/ready)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    add_model_arguments(p)
    p.add_argument("--max-batch", type=int, default=16, help="largest dynamic batch (items) Triton forms")
    p.add_argument("--batch-delay-us", type=int, default=4000,
                   help="how long Triton holds a request for others to batch with (max_queue_delay_microseconds)")
    p.add_argument("--cpu-threads", type=int, default=1, help="torch threads for CPU inference")
    p.add_argument("--max-side", type=int, default=512, help="largest ny or nx a request may carry")
    p.add_argument("--max-coils", type=int, default=64, help="most coils a request may carry")
    p.add_argument("--ready-file", default=None, help="write the gRPC endpoint here once serving (for scripts)")
    p.add_argument("--check", metavar="ENDPOINT", default=None,
                   help="do not serve: ask the Triton server at host:port (gRPC) for its health, exit 0 if ready")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return p


def _check(endpoint: str) -> int:
    from .triton_client import health

    try:
        h = health(endpoint, timeout_ms=2000)
    except Exception as exc:
        print(f"streamrecon triton-server --check {endpoint}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(h, indent=1, sort_keys=True))
    return 0 if h["status"] == "ready" else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_server_args(build_parser, argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.check:
        return _check(args.check)
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig
        from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig
    except ImportError as exc:
        print(f"streamrecon triton-server: PyTriton is not installed in this environment ({exc}); "
              f"`make triton-env` builds .venv-triton with it (PyTriton pins numpy<2 and needs glibc >= 2.35)",
              file=sys.stderr)
        return 2
    try:
        models, weights = chosen_models(args)
        model_set = ModelSet(models, args.device, weights, args.allow_random, args.cpu_threads)
    except Exception as exc:
        log.error("Triton server not started: %s", exc)
        return 1
    log.info("models loaded in %.2f s: %s", model_set.load_s,
             ", ".join(f"{n} {r.version} on {r.device}" for n, r in model_set.models.items()))
    os.environ.update(python_backend_library_path())
    limits = RequestLimits(max_side=args.max_side, max_coils=args.max_coils, max_items=args.max_batch)
    config = TritonConfig(grpc_address=args.host, grpc_port=args.grpc_port, http_address=args.host,
                          http_port=args.http_port, metrics_port=args.metrics_port, exit_timeout_secs=5,
                          log_verbose=0)

    def terminate(*_):
        raise KeyboardInterrupt  # Triton.serve() stops tritonserver and cleans up on it

    signal.signal(signal.SIGTERM, terminate)
    try:
        # PyTriton guards Triton's admin protocols with a token it makes up; the read-only
        # statistics stay open, as they are the health check's evidence of batching across scans
        security = TritonSecurityConfig(restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
        with Triton(config=config, security_config=security) as triton:
            for name in registry.served():  # bound even when not loaded: requests are answered with the reason
                inputs, outputs = _tensors(name)
                triton.bind(model_name=name, infer_func=make_infer(model_set, name, limits), inputs=inputs, outputs=outputs,
                            config=ModelConfig(max_batch_size=args.max_batch,
                                               batcher=DynamicBatcher(max_queue_delay_microseconds=args.batch_delay_us)))
            from pytriton.model_config import Tensor

            triton.bind(model_name=INFO_MODEL, infer_func=make_info(model_set),
                        inputs=[Tensor(name="model", dtype=bytes, shape=(1,))],
                        outputs=[Tensor(name="info", dtype=bytes, shape=(1,))],
                        config=ModelConfig(batching=False))
            endpoint = f"{args.host}:{args.grpc_port}"
            log.info("Triton serving on gRPC %s, HTTP %s:%d", endpoint, args.host, args.http_port)
            if args.ready_file:
                write_ready_file(args.ready_file, endpoint)
            triton.serve()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
