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

A request that fails (bad arrays, model error) gets ``{"ok": false,
"error": ...}``; the service keeps serving. ``{"op": "health"}`` answers at
once with the loaded models, device, uptime and counters.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import zmq

from gadgets.inference import cached_model

from .inference_client import decode, encode

log = logging.getLogger(__name__)


class InferenceService:
    """The ROUTER loop; ``serve_forever()`` in the foreground or ``start_background()`` for tests."""

    def __init__(self, bind: str = "tcp://127.0.0.1:5555", models: Sequence[str] = ("kgmgt", "sgfmri"),
                 device: str = "auto", weights: dict[str, str | None] | None = None, allow_random: bool = False,
                 batch_window_ms: float = 4.0, max_batch: int = 16, cpu_threads: int = 1) -> None:
        self.weights = dict(weights or {})
        self.models = {}
        self.unavailable: dict[str, str] = {}
        t0 = time.perf_counter()
        for name in models:  # load before binding: once the port answers, the models are warm
            try:
                self.models[name] = cached_model(name, device, self.weights.get(name), allow_random, cpu_threads)
            except Exception as exc:  # serve the others; requests for this one are answered with the reason
                self.unavailable[name] = f"{type(exc).__name__}: {exc}"
                log.error("model %s not loaded: %s", name, self.unavailable[name])
        if not self.models:
            raise RuntimeError(f"no model could be loaded: {self.unavailable}")
        self.load_s = time.perf_counter() - t0
        self.batch_window_s = batch_window_ms / 1000.0
        self.max_batch = max_batch
        self.ctx = zmq.Context()
        self.socket = self.ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if bind.endswith(":0"):
            port = self.socket.bind_to_random_port(bind.rsplit(":", 1)[0])
            bind = f"{bind.rsplit(':', 1)[0]}:{port}"
        else:
            self.socket.bind(bind)
        self.endpoint = bind
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
                "load_s": self.load_s,
                "uptime_s": time.time() - self.started, "counts": dict(self.counts)}

    # ------------------------------------------------------------ batching
    @staticmethod
    def _group_key(header: dict, arrays: dict) -> tuple:
        shapes = tuple((n, a.shape[1:], a.dtype.name) for n, a in sorted(arrays.items()))
        return header.get("op"), bool(header.get("causal", False)), "reference" in arrays, shapes

    def _run_group(self, op: str, causal: bool, items: list[tuple[bytes, dict, dict]]) -> None:
        def cat(name: str, per_item_ndim: int) -> np.ndarray:
            # A mask may come per item (B, ny) or shared (ny,): give every item its own.
            parts = []
            for _, _, a in items:
                x = a[name]
                parts.append(x if x.ndim == per_item_ndim + 1 else x[None])
            return np.concatenate(parts)

        sizes = [len(a["kspace"]) for _, _, a in items]
        try:
            # Masks travel with a batch axis ((B, ny) or (B, ny, nx); the client adds it).
            mask = np.concatenate([a["mask"] for _, _, a in items])
            if op == "cine":
                rec = self.models["kgmgt"]
                out = rec.reconstruct_cine_batch(cat("frames", 3), cat("kspace", 3), mask, cat("maps", 3), causal=causal)
            elif op == "pair":
                rec = self.models["sgfmri"]
                ref = cat("reference", 2) if "reference" in items[0][2] else None
                out = rec.reconstruct_pair_batch(ref, cat("target", 2), cat("kspace", 3), mask, cat("maps", 3))
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            log.warning("%s batch of %d failed: %s: %s", op, len(items), type(exc).__name__, exc)
            self.counts["errors"] += len(items)
            for identity, header, _ in items:
                self._reply(identity, {"ok": False, "id": header.get("id"), "error": f"{type(exc).__name__}: {exc}"})
            return
        self.counts[op] += sum(sizes)  # images
        self.counts[f"{op}_requests"] += len(items)
        self.counts["batches"] += 1
        self.counts["max_batch_requests"] = max(self.counts["max_batch_requests"], len(items))
        start = 0
        for (identity, header, _), n in zip(items, sizes):
            self._reply(identity, {"ok": True, "id": header.get("id"), "batch": len(items)},
                        {"image": out[start:start + n]})
            start += n

    def _handle(self, pending: list[tuple[bytes, dict, dict]]) -> None:
        groups: dict[tuple, list] = defaultdict(list)
        for identity, header, arrays in pending:
            op = header.get("op")
            if op == "health":
                self._reply(identity, {**self._health(), "id": header.get("id")})
            elif op == "info":
                model = self.models.get(header.get("model"))
                if model is None:
                    why = self.unavailable.get(header.get("model"), "not asked for (--models)")
                    self._reply(identity, {"ok": False, "id": header.get("id"),
                                           "error": f"model {header.get('model')!r} not loaded: {why}"})
                else:
                    self._reply(identity, {"ok": True, "id": header.get("id"), "info": model.info})
            elif op in ("cine", "pair"):
                key = self._group_key(header, arrays)
                needed = "kgmgt" if op == "cine" else "sgfmri"
                if needed not in self.models:
                    why = self.unavailable.get(needed, "not asked for (--models)")
                    self._reply(identity, {"ok": False, "id": header.get("id"), "error": f"{needed} not loaded: {why}"})
                    continue
                groups[key].append((identity, header, arrays))
            else:
                self._reply(identity, {"ok": False, "id": header.get("id"), "error": f"unknown op {op!r}"})
        for (op, causal, _, _), items in groups.items():
            for i in range(0, len(items), self.max_batch):
                self._run_group(op, causal, items[i:i + self.max_batch])

    def _receive(self, timeout_ms: int) -> tuple[bytes, dict, dict] | None:
        if not self.socket.poll(timeout_ms):
            return None
        identity, *parts = self.socket.recv_multipart()
        try:
            header, arrays = decode(parts)
        except Exception as exc:
            self.counts["bad_messages"] += 1
            self._reply(identity, {"ok": False, "error": f"bad message: {exc}"})
            return None
        return identity, header, arrays

    def serve_forever(self) -> None:
        log.info("inference service on %s: %s", self.endpoint,
                 ", ".join(f"{n} {r.version} on {r.device}" for n, r in self.models.items()))
        try:
            while not self._stop.is_set():
                first = self._receive(100)
                if first is None:
                    continue
                pending = [first]
                # Collect what arrives within the batching window (health checks are answered too).
                deadline = time.monotonic() + self.batch_window_s
                while len(pending) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    item = self._receive(max(1, int(left * 1000)))
                    if item is not None:
                        pending.append(item)
                self._handle(pending)
        finally:
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
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint to bind (port 0: any free port)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    p.add_argument("--models", default="kgmgt,sgfmri", help="comma-separated models to load")
    p.add_argument("--kgmgt-weights", default=None, help=".safetensors (default: the shipped set)")
    p.add_argument("--sgfmri-weights", default=None, help=".safetensors (default: the shipped set)")
    p.add_argument("--allow-random", action="store_true", help="tests only: untrained networks when weights are missing")
    p.add_argument("--batch-window-ms", type=float, default=4.0,
                   help="requests arriving within this window of each other run as one batch")
    p.add_argument("--max-batch", type=int, default=16, help="largest batch run at once")
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
                                   args.allow_random, args.batch_window_ms, args.max_batch, args.cpu_threads)
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
