"""``streamrecon infer-server``: the long-lived inference service, models loaded once for every scan.

Gadgetron starts a fresh Python process per scan, so a gadget that loads
its network itself pays the load at the start of every acquisition. This
service loads the models once (CUDA when present, CPU otherwise), listens
on a ZeroMQ ROUTER socket, and serves any number of gadget processes and
hosts. Requests that arrive within ``--batch-window-ms`` of each other and
fit together (same model, mode and shapes) run as one batch. Wire format:
:mod:`pipelines.inference_client`.

    streamrecon infer-server --bind tcp://127.0.0.1:5555 [--device auto] [--batch-window-ms 4]
    streamrecon infer-server --check tcp://127.0.0.1:5555      # health, exit status 0 when ready

Every request is decoded and validated (op, fields, array names, dtypes,
shapes, :class:`RequestLimits`) before any model work; one that fails (bad
message, model error, too many waiting) gets ``{"ok": false, "error": ...}``
and the service keeps serving. Messages over ``--max-message-mb`` are dropped
by ZeroMQ itself (ZMQ_MAXMSGSIZE) before they are buffered. The model runs
on its own thread, so ``{"op": "health"}`` answers at once even while a batch
runs, with the loaded models, device, uptime, counters and the measured model
time (``ms_per_mpixel``) from which clients derive their timeouts.
"""
from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import zmq

from gadgets.inference import cached_model

from .inference_client import decode, encode
from .cli import HelpFormatter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for; checked before any model work (a request arrives from the network)."""

    max_message_bytes: int = 64 * 2**20  # ZMQ_MAXMSGSIZE: larger messages are dropped by ZeroMQ itself
    max_side: int = 512                  # ny, nx
    max_coils: int = 64
    max_items: int = 16                  # batch items in one request
    max_queued: int = 256                # requests waiting for the model; beyond, "busy" at once


_ARRAYS = {"cine": ({"frames", "kspace", "mask", "maps"}, set()),
           "pair": ({"target", "kspace", "mask", "maps"}, {"reference"})}


def validate(header: Any, arrays: dict[str, np.ndarray], limits: RequestLimits) -> None:
    """Raise ``ValueError`` naming what is wrong with a decoded request (shapes, dtypes, sizes, fields)."""
    if not isinstance(header, dict):
        raise ValueError("the header must be a JSON object")
    op = header.get("op")
    if op not in ("health", "info", "cine", "pair"):
        raise ValueError(f"unknown op {op!r}")
    if op == "info":
        if not isinstance(header.get("model"), str):
            raise ValueError(f"info needs a model name, not {header.get('model')!r}")
        return
    if op == "health":
        return
    if not isinstance(header.get("causal", False), bool):
        raise ValueError("causal must be true or false")
    needed, optional = _ARRAYS[op]
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
    expected = {"maps": (b, coils, ny, nx), "frames": (b, 3, ny, nx), "target": (b, ny, nx), "reference": (b, ny, nx)}
    for name, shape in expected.items():
        if name in arrays and (arrays[name].shape != shape or arrays[name].dtype != np.complex64):
            raise ValueError(f"{name} must be complex64 {shape}, got {arrays[name].dtype} {arrays[name].shape}")
    m = arrays["mask"]
    if m.dtype != np.bool_ or m.shape not in ((b, ny), (b, ny, nx)):
        raise ValueError(f"mask must be bool ({b}, {ny}) or ({b}, {ny}, {nx}), got {m.dtype} {m.shape}")


class ModelSet:
    """The served models, loaded and warmed once, with their measured time; runs one batch of requests.

    Shared by the ZeroMQ service and the Triton server (:mod:`pipelines.triton_server`),
    so both serve the same models the same way.
    """

    def __init__(self, models: Sequence[str] = ("kgmgt", "sgfmri"), device: str = "auto",
                 weights: dict[str, str | None] | None = None, allow_random: bool = False,
                 cpu_threads: int = 1) -> None:
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
        rec, n, coils = self.models[name], 64, 2
        k = np.zeros((1, coils, n, n), np.complex64)
        k[:, :, :, n // 2] = 1.0
        maps = np.full((1, coils, n, n), 1 / np.sqrt(coils), np.complex64)
        mask = np.ones((1, n), bool)
        image = np.ones((1, n, n), np.complex64)
        t0 = time.perf_counter()
        if name == "kgmgt":
            rec.reconstruct_cine_batch(np.ones((1, 3, n, n), np.complex64), k, mask, maps)
        else:
            rec.reconstruct_pair_batch(image, image, k, mask, maps)
        self._measured(name, time.perf_counter() - t0, n * n)

    def _measured(self, name: str, seconds: float, pixels: int) -> None:
        rate = seconds * 1000.0 / max(pixels / 1e6, 1e-6)
        old = self.ms_per_mpixel.get(name)
        self.ms_per_mpixel[name] = rate if old is None else 0.7 * old + 0.3 * rate

    def run(self, op: str, causal: bool, requests: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Validated requests of one op, mode and shape as one model call; one ``(b, ny, nx)`` image stack each.

        Raises whatever the model raises (the caller answers every request of the batch with it).
        """
        model = "kgmgt" if op == "cine" else "sgfmri"
        rec = self.models[model]
        sizes = [len(a["kspace"]) for a in requests]
        cat = lambda name: np.concatenate([a[name] for a in requests])  # noqa: E731
        t0 = time.perf_counter()
        if op == "cine":
            images = rec.reconstruct_cine_batch(cat("frames"), cat("kspace"), cat("mask"), cat("maps"), causal=causal)
        else:
            ref = cat("reference") if "reference" in requests[0] else None
            images = rec.reconstruct_pair_batch(ref, cat("target"), cat("kspace"), cat("mask"), cat("maps"))
        ny, nx = requests[0]["kspace"].shape[-2:]
        self._measured(model, time.perf_counter() - t0, sum(sizes) * ny * nx)
        bounds = np.cumsum([0] + sizes)
        return [images[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    @staticmethod
    def group_key(op: str, arrays: dict[str, np.ndarray], causal: bool = False) -> tuple:
        """Requests with equal keys can run as one batch (same op, mode, optional inputs and item shapes)."""
        shapes = tuple((n, a.shape[1:], a.dtype.name) for n, a in sorted(arrays.items()))
        return op, bool(causal), "reference" in arrays, shapes


class InferenceService:
    """The ROUTER loop; ``serve_forever()`` in the foreground or ``start_background()`` for tests.

    The socket's thread only receives, validates and replies (health and info
    at once, whatever the models are doing); model work runs on its own
    thread, which hands the replies back over an in-process socket.
    """

    def __init__(self, bind: str = "tcp://127.0.0.1:5555", models: Sequence[str] = ("kgmgt", "sgfmri"),
                 device: str = "auto", weights: dict[str, str | None] | None = None, allow_random: bool = False,
                 batch_window_ms: float = 4.0, max_batch: int = 16, cpu_threads: int = 1,
                 limits: RequestLimits | None = None) -> None:
        self.limits = limits or RequestLimits()
        self.model_set = ModelSet(models, device, weights, allow_random, cpu_threads)  # loaded before binding
        self.models, self.unavailable = self.model_set.models, self.model_set.unavailable
        self.ms_per_mpixel, self.load_s = self.model_set.ms_per_mpixel, self.model_set.load_s
        self.batch_window_s = batch_window_ms / 1000.0
        self.max_batch = max_batch
        self.ctx = zmq.Context()
        self.socket = self.ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        if bind.endswith(":0"):
            port = self.socket.bind_to_random_port(bind.rsplit(":", 1)[0])
            bind = f"{bind.rsplit(':', 1)[0]}:{port}"
        else:
            self.socket.bind(bind)
        self.endpoint = bind
        self._inproc = f"inproc://replies-{id(self):x}"
        self._replies = self.ctx.socket(zmq.PULL)
        self._replies.bind(self._inproc)
        self._work: queue.Queue = queue.Queue(maxsize=self.limits.max_queued)
        self.started = time.time()
        self.counts = defaultdict(int)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ replies
    def _reply(self, identity: bytes, header: dict, arrays: dict | None = None) -> None:
        self.socket.send_multipart([identity] + encode(header, arrays or {}), copy=False)

    def _health(self) -> dict[str, Any]:
        return {"ok": True, "status": "ready", "endpoint": self.endpoint,
                "models": {n: r.info for n, r in self.models.items()}, "unavailable": self.unavailable,
                "load_s": self.load_s, "ms_per_mpixel": dict(self.ms_per_mpixel), "queued": self._work.qsize(),
                "uptime_s": time.time() - self.started, "counts": dict(self.counts)}

    # ------------------------------------------------------------ model work (its own thread)
    @staticmethod
    def _group_key(header: dict, arrays: dict) -> tuple:
        return ModelSet.group_key(header.get("op"), arrays, header.get("causal", False))

    def _run_group(self, op: str, causal: bool, items: list[tuple[bytes, dict, dict]], out: zmq.Socket) -> None:
        def send(identity: bytes, header: dict, arrays: dict | None = None) -> None:
            out.send_multipart([identity] + encode(header, arrays or {}), copy=False)

        model = "kgmgt" if op == "cine" else "sgfmri"
        try:
            images = self.model_set.run(op, causal, [a for _, _, a in items])
        except Exception as exc:
            log.warning("%s batch of %d failed: %s: %s", op, len(items), type(exc).__name__, exc)
            self.counts["errors"] += len(items)
            for identity, header, _ in items:
                send(identity, {"ok": False, "id": header.get("id"), "error": f"{type(exc).__name__}: {exc}"})
            return
        self.counts[op] += sum(len(im) for im in images)  # images
        self.counts[f"{op}_requests"] += len(items)
        self.counts["batches"] += 1
        self.counts["max_batch_requests"] = max(self.counts["max_batch_requests"], len(items))
        for (identity, header, _), image in zip(items, images):
            send(identity, {"ok": True, "id": header.get("id"), "batch": len(items),
                            "ms_per_mpixel": self.ms_per_mpixel[model]}, {"image": image})

    def _model_loop(self) -> None:
        out = self.ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(self._inproc)
        try:
            while not self._stop.is_set():
                try:
                    pending = [self._work.get(timeout=0.1)]
                except queue.Empty:
                    continue
                # Collect what arrives within the batching window.
                deadline = time.monotonic() + self.batch_window_s
                while len(pending) < self.max_batch:
                    try:
                        pending.append(self._work.get(timeout=max(0.0, deadline - time.monotonic())))
                    except queue.Empty:
                        break
                groups: dict[tuple, list] = defaultdict(list)
                for item in pending:
                    groups[self._group_key(item[1], item[2])].append(item)
                for (op, causal, _, _), items in groups.items():
                    for i in range(0, len(items), self.max_batch):
                        try:
                            self._run_group(op, causal, items[i:i + self.max_batch], out)
                        except Exception:  # a reply could not be built: the loop must go on
                            log.exception("%s batch: unexpected error", op)
        finally:
            out.close(linger=0)

    # ------------------------------------------------------------ the socket's thread
    def _answer(self, identity: bytes, parts: list[bytes]) -> None:
        """One request: answered here, queued for the model, or refused with the reason. Never raises."""
        rid = None
        try:
            header, arrays = decode(parts)
            rid = header.get("id") if isinstance(header, dict) else None
            validate(header, arrays, self.limits)
        except Exception as exc:
            self.counts["bad_messages"] += 1
            self._reply(identity, {"ok": False, "id": rid, "error": f"bad message: {type(exc).__name__}: {exc}"})
            return
        op = header["op"]
        if op == "health":
            self._reply(identity, {**self._health(), "id": rid})
        elif op == "info":
            model = self.models.get(header["model"])
            if model is None:
                why = self.unavailable.get(header["model"], "not asked for (--models)")
                self._reply(identity, {"ok": False, "id": rid, "error": f"model {header['model']!r} not loaded: {why}"})
            else:
                self._reply(identity, {"ok": True, "id": rid, "info": model.info,
                                       "ms_per_mpixel": self.ms_per_mpixel.get(header["model"])})
        else:
            needed = "kgmgt" if op == "cine" else "sgfmri"
            if needed not in self.models:
                why = self.unavailable.get(needed, "not asked for (--models)")
                self._reply(identity, {"ok": False, "id": rid, "error": f"{needed} not loaded: {why}"})
                return
            try:
                self._work.put_nowait((identity, header, arrays))
            except queue.Full:
                self.counts["busy"] += 1
                self._reply(identity, {"ok": False, "id": rid,
                                       "error": f"busy: {self.limits.max_queued} requests already waiting"})

    def serve_forever(self) -> None:
        log.info("inference service on %s: %s", self.endpoint,
                 ", ".join(f"{n} {r.version} on {r.device}" for n, r in self.models.items()))
        worker = threading.Thread(target=self._model_loop, name="inference-model", daemon=True)
        worker.start()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._replies, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(100))
                if self._replies in ready:
                    while True:
                        try:
                            self.socket.send_multipart(self._replies.recv_multipart(zmq.NOBLOCK), copy=False)
                        except zmq.Again:
                            break
                if self.socket in ready:
                    while True:
                        try:
                            identity, *parts = self.socket.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._answer(identity, parts)
        finally:
            self._stop.set()
            worker.join(5.0)
            self._replies.close(linger=0)
            self.socket.close(linger=0)
            self.ctx.term()

    def start_background(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.serve_forever, name="inference-service", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrecon infer-server", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint to bind (port 0: any free port)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    p.add_argument("--models", default="kgmgt,sgfmri", help="comma-separated models to load")
    p.add_argument("--kgmgt-weights", default=None, help=".safetensors (default: the shipped set)")
    p.add_argument("--sgfmri-weights", default=None, help=".safetensors (default: the shipped set)")
    p.add_argument("--allow-random", action="store_true", help="tests only: untrained networks when weights are missing")
    p.add_argument("--batch-window-ms", type=float, default=4.0,
                   help="requests arriving within this window of each other run as one batch")
    p.add_argument("--max-batch", type=int, default=16, help="largest batch run at once")
    p.add_argument("--max-message-mb", type=float, default=64.0,
                   help="largest request accepted (ZMQ_MAXMSGSIZE; a larger one is dropped by ZeroMQ)")
    p.add_argument("--max-side", type=int, default=512, help="largest ny or nx a request may carry")
    p.add_argument("--max-coils", type=int, default=64, help="most coils a request may carry")
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="torch threads for CPU inference (1: OpenMP spin-waiting under any other load "
                        "made 2 threads 40x slower than 1 on a 2-core host; raise on a dedicated CPU box)")
    p.add_argument("--ready-file", default=None, help="write the bound endpoint here once serving (for scripts)")
    p.add_argument("--check", metavar="ENDPOINT", default=None,
                   help="do not serve: ask the service at ENDPOINT for its health, print it, exit 0 if ready else 1")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.check:
        import json

        from .inference_client import health

        try:
            print(json.dumps(health(args.check, timeout_ms=2000), indent=1, sort_keys=True))
            return 0
        except Exception as exc:
            print(f"streamrecon infer-server --check {args.check}: {exc}", file=sys.stderr)
            return 1
    try:
        service = InferenceService(args.bind, [m for m in args.models.split(",") if m], args.device,
                                   {"kgmgt": args.kgmgt_weights, "sgfmri": args.sgfmri_weights},
                                   args.allow_random, args.batch_window_ms, args.max_batch, args.cpu_threads,
                                   RequestLimits(max_message_bytes=int(args.max_message_mb * 2**20),
                                                 max_side=args.max_side, max_coils=args.max_coils))
    except Exception as exc:
        log.error("inference service not started: %s", exc)
        return 1
    log.info("models loaded in %.2f s", service.load_s)
    if args.ready_file:
        with open(args.ready_file + ".tmp", "w") as f:
            f.write(service.endpoint + "\n")
        import os

        os.replace(args.ready_file + ".tmp", args.ready_file)
    signal.signal(signal.SIGTERM, lambda *_: service._stop.set())
    try:
        service.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
