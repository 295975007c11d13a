"""``streamrecon infer-server``: the long-lived inference service, models loaded once for every scan.

Gadgetron starts a fresh Python process per scan, so a gadget that loads
its network itself pays the load at the start of every acquisition. This
service loads the models once (CUDA when present, CPU otherwise), listens
on a ZeroMQ ROUTER socket, and serves any number of gadget processes and
hosts. It serves every model of :mod:`models.registry` (``--models``; a
model registered by another module is added with ``--model-module``) and
names none itself: a request names its model and operation, and is checked
against that operation's input spec. Requests that arrive within
``--batch-window-ms`` of each other and fit together (same model, mode and
shapes) run as one batch. Wire format: :mod:`pipelines.inference_client`.

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
from typing import Any, Sequence

import zmq

from models import registry

from .cli_help import HelpFormatter
from .inference_client import decode, encode
from .model_set import (ModelSet, RequestLimits, add_model_arguments, chosen_models, parse_server_args,  # noqa: F401
                        request_model, validate, warm_up_arrays, write_ready_file)

log = logging.getLogger(__name__)


class InferenceService:
    """The ROUTER loop; ``serve_forever()`` in the foreground or ``start_background()`` for tests.

    The socket's thread only receives, validates and replies (health and info
    at once, whatever the models are doing); model work runs on its own
    thread, which hands the replies back over an in-process socket.
    """

    def __init__(self, bind: str = "tcp://127.0.0.1:5555", models: Sequence[str] | None = None,
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
        return ModelSet.group_key(request_model(header), arrays, header.get("causal", False))

    def _run_group(self, model: str, causal: bool, items: list[tuple[bytes, dict, dict]], out: zmq.Socket) -> None:
        def send(identity: bytes, header: dict, arrays: dict | None = None) -> None:
            out.send_multipart([identity] + encode(header, arrays or {}), copy=False)

        op = registry.get(model).operation
        try:
            images = self.model_set.run(model, causal, [a for _, _, a in items])
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
                for (model, causal, _), items in groups.items():
                    for i in range(0, len(items), self.max_batch):
                        try:
                            self._run_group(model, causal, items[i:i + self.max_batch], out)
                        except Exception:  # a reply could not be built: the loop must go on
                            log.exception("%s batch: unexpected error", model)
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
            needed = request_model(header)
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
    add_model_arguments(p)
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
    args = parse_server_args(build_parser, argv)
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
        models, weights = chosen_models(args)
        service = InferenceService(args.bind, models, args.device, weights, args.allow_random, args.batch_window_ms,
                                   args.max_batch, args.cpu_threads,
                                   RequestLimits(max_message_bytes=int(args.max_message_mb * 2**20),
                                                 max_side=args.max_side, max_coils=args.max_coils))
    except Exception as exc:
        log.error("inference service not started: %s", exc)
        return 1
    log.info("models loaded in %.2f s", service.load_s)
    if args.ready_file:
        write_ready_file(args.ready_file, service.endpoint)
    signal.signal(signal.SIGTERM, lambda *_: service._stop.set())
    try:
        service.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
