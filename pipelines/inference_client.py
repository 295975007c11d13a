"""Client of the inference service (``streamrecon infer-server``) over ZeroMQ.

Wire format, both directions: a multipart message, first part a UTF-8 JSON
header, then one raw buffer per array, described in the header's
``"arrays"`` list as ``{"name", "dtype", "shape"}``. Only plain numeric
dtypes are accepted; nothing is pickled.

Requests: ``{"op": "health"}``, ``{"op": "info", "model": ...}``, and a
model call: ``{"op": <operation>, "model": <registry name>, <flags>}`` with
the arrays of the operation's :class:`models.registry.InputSpec` (``cine``:
frames, kspace, mask, maps and flag ``causal``; ``pair``: [reference],
target, kspace, mask, maps). A call without ``model`` goes to the
operation's default model.
Replies: ``{"ok": true, ...}`` with array ``image``, or ``{"ok": false, "error": text}``.

The client is a DEALER socket with one request in flight, watched by a
ZeroMQ socket monitor: a service that dies (its connection closes) or is
not there (connection refused) fails the request at once, whatever the
timeout, instead of after it. A request that gets no answer within
``timeout_ms`` raises :class:`~models.registry.InferenceError`; the socket
is then rebuilt (a late answer is discarded by request id) and, for
``retry_after_s``, further calls fail at once. With the automatic timeout a
model request to a service whose connection is up keeps waiting (up to
``AUTO_MAX_MS``): a service busy with other scans' batches is slow, not
dead, and the gadget's real-time scheduler decides what is too late.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import time
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from models import registry
from models.registry import InferenceError, OperationCalls

log = logging.getLogger(__name__)

DTYPES = {"complex64", "float32", "float64", "bool", "int32", "int64", "uint8"}
_MONITORED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CLOSED


class ConnectionLost(ConnectionError):
    """The service's connection closed, or nothing accepts connections at the endpoint."""


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray | None]) -> list[bytes | memoryview]:
    """``[json header, buffer, buffer, ...]``; ``None`` arrays are left out."""
    parts: list[bytes | memoryview] = []
    described = []
    for name, a in arrays.items():
        if a is None:
            continue
        a = np.ascontiguousarray(a)
        if a.dtype.name not in DTYPES:
            raise TypeError(f"array {name!r}: dtype {a.dtype} cannot travel")
        described.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape)})
        parts.append(memoryview(a).cast("B") if a.size else b"")
    return [json.dumps({**header, "arrays": described}).encode()] + parts


def _shape(name: Any, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ValueError(f"array {name!r}: shape {shape!r} is not a list of non-negative integers")
    return tuple(shape)


def decode(parts: list[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The inverse of :func:`encode`; checks the header and every buffer against its description."""
    if not parts:
        raise ValueError("empty message")
    header = json.loads(bytes(parts[0]).decode())
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    described = header.pop("arrays", [])
    if not isinstance(described, list) or not all(isinstance(d, dict) for d in described):
        raise ValueError("'arrays' must be a list of {name, dtype, shape} objects")
    if len(described) != len(parts) - 1:
        raise ValueError(f"header describes {len(described)} arrays, message has {len(parts) - 1}")
    arrays = {}
    for d, buf in zip(described, parts[1:]):
        name = d.get("name")
        if not isinstance(name, str) or name in arrays:
            raise ValueError(f"array name {name!r} is missing, not text or repeated")
        if d.get("dtype") not in DTYPES:
            raise ValueError(f"array {name!r}: dtype {d.get('dtype')!r} not accepted")
        dtype = np.dtype(d["dtype"])
        shape = _shape(name, d.get("shape"))
        if len(buf) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"array {name!r}: {len(buf)} bytes do not hold {d['dtype']} {shape}")
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return header, arrays


class InferenceClient(OperationCalls):
    """One connection to the service; the gadget-side backend (see :mod:`gadgets.inference`)."""

    # Automatic timeout (``timeout_ms <= 0``): the service's measured model time
    # for the request's pixels, times a margin for queueing behind other
    # scans' batches, plus a floor for the transfer; capped.
    AUTO_FLOOR_MS = 2000.0
    AUTO_FACTOR = 4.0
    AUTO_MAX_MS = 120000.0
    INFO_TIMEOUT_MS = 2000
    kind = "inference service"  # how errors and fallback reasons name the server

    def __init__(self, endpoint: str, timeout_ms: float = 0, retry_after_s: float = 2.0,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_ms)  # <= 0: derived per request from the measured model time
        self._ms_per_mpixel: dict[str, float] = {}
        self.retry_after_s = retry_after_s
        self.label = f"service {endpoint}"
        self._ctx = context
        self._ids = itertools.count(1)
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._connected = self._was_connected = False
        self._down_until = 0.0
        self._down_reason = ""
        self._info: dict[str, dict] = {}
        self._tag = f"{os.getpid()}-{id(self):x}"

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            s = (self._ctx or zmq.Context.instance()).socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            self._monitor = s.get_monitor_socket(_MONITORED)
            self._connected = self._was_connected = False
            s.connect(self.endpoint)
            self._socket = s
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            try:
                self._socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._socket.close(linger=0)
            self._socket = None
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None
        self._connected = False

    def _connection_events(self, waiting: bool) -> None:
        """Read the socket monitor's events; while ``waiting`` for an answer, a lost connection raises."""
        while self._monitor is not None:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_CONNECTED:
                self._connected = self._was_connected = True
                continue
            self._connected = False
            if waiting and (event != zmq.EVENT_CONNECT_RETRIED or not self._was_connected):
                if self._was_connected:
                    raise ConnectionLost("connection lost (the service closed it: stopped or killed?)")
                raise ConnectionLost("connection refused: nothing listens there (is the service running?)")

    def request(self, header: dict[str, Any], arrays: dict[str, np.ndarray | None] | None = None,
                timeout_ms: int | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """One exchange with the server; every failure is an :class:`InferenceError`.

        After a transport failure (no answer, connection refused) further calls
        fail at once for ``retry_after_s``: a dead server costs a scan one
        timeout, not one per frame.
        """
        now = time.monotonic()
        if now < self._down_until:
            raise InferenceError(f"{self.kind} {self.endpoint} unavailable ({self._down_reason}); "
                                 f"retrying in {self._down_until - now:.1f} s")
        timeout = timeout_ms if timeout_ms is not None else (self.timeout_ms if self.timeout_ms > 0 else self.INFO_TIMEOUT_MS)
        try:
            reply, out = self._exchange(header, arrays or {}, timeout)
        except Exception as exc:
            self._reset()
            self._down_reason = f"{type(exc).__name__}: {exc}"
            self._down_until = time.monotonic() + self.retry_after_s
            # a health probe's failure is its answer (readiness loops poll it); a model call's is news
            log.log(logging.DEBUG if header.get("op") == "health" else logging.WARNING, "%s %s: %s", self.kind,
                    self.endpoint, self._down_reason)
            raise InferenceError(f"{self.kind} {self.endpoint}: {self._down_reason}") from exc
        if not reply.get("ok"):
            raise InferenceError(f"{self.kind} {self.endpoint}: {reply.get('error', 'unknown error')}")
        return reply, out

    def _exchange(self, header: dict[str, Any], arrays: dict[str, np.ndarray | None],
                  timeout: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Send one request and wait up to ``timeout`` ms for its answer (raises on any transport failure)."""
        rid = f"{self._tag}-{next(self._ids)}"
        sock = self._connect()
        self._connection_events(waiting=False)  # what happened since the last request (a restart, say)
        sock.send_multipart(encode({**header, "id": rid}, arrays), copy=False)
        start = time.monotonic()
        deadline = start + timeout / 1000.0
        # automatic timeout on model work: keep waiting while the connection is up (module docstring)
        patience = self.AUTO_MAX_MS if self.timeout_ms <= 0 and header.get("op") in ("cine", "pair") else timeout
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if self._connected and (time.monotonic() - start) * 1000.0 < patience:
                    deadline += timeout / 1000.0
                    log.info("%s %s: no answer within %d ms, connection up: still waiting", self.kind,
                             self.endpoint, timeout)
                    continue
                raise TimeoutError(f"no answer within {(time.monotonic() - start) * 1000:.0f} ms")
            ready = dict(poller.poll(max(1, int(left * 1000))))
            if self._monitor in ready:
                self._connection_events(waiting=True)
            if sock not in ready:
                continue
            reply, out = decode(sock.recv_multipart())
            if reply.get("id") == rid:
                return reply, out
            log.debug("discarding a late answer %s", reply.get("id"))

    def _timeout_for(self, model: str, pixels: int) -> tuple[int, str]:
        """The reply timeout for ``pixels`` of ``model`` work, and how it was chosen (for the log)."""
        if self.timeout_ms > 0:
            return self.timeout_ms, "inference_timeout_ms"
        if model not in self._ms_per_mpixel:
            self.model_info(model, timeout_ms=self.INFO_TIMEOUT_MS)
        rate = self._ms_per_mpixel.get(model)
        if rate is None:  # a service that measured nothing: the cap
            return int(self.AUTO_MAX_MS), "no measured model time"
        ms = min(self.AUTO_MAX_MS, self.AUTO_FLOOR_MS + self.AUTO_FACTOR * rate * pixels / 1e6)
        return int(ms), f"{self.AUTO_FACTOR:g} x measured {rate:.0f} ms/Mpixel + {self.AUTO_FLOOR_MS:.0f} ms"

    def _model_request(self, model: str, header: dict[str, Any], arrays: dict[str, Any], pixels: int) -> np.ndarray:
        timeout, why = self._timeout_for(model, pixels)
        try:
            reply, out = self.request(header, arrays, timeout_ms=timeout)
        except InferenceError as exc:
            if "no answer" in str(exc):
                raise InferenceError(f"{exc} (timeout {timeout} ms: {why})") from exc
            raise
        if isinstance(reply.get("ms_per_mpixel"), (int, float)):
            self._ms_per_mpixel[model] = float(reply["ms_per_mpixel"])
        return np.array(out["image"])

    # ---------------------------------------------------------------- backend interface
    @staticmethod
    def _batched_mask(mask, kspace) -> np.ndarray:
        mask, n = np.asarray(mask, bool), len(kspace)
        # (B, ny) per-item lines (what the gadgets pass) or (B, ny, nx); else one shared mask.
        per_item = mask.ndim == 3 or (mask.ndim == 2 and mask.shape == (n, kspace.shape[-2]))
        return mask if per_item else np.broadcast_to(mask, (n,) + mask.shape)

    def run(self, model: str, arrays: dict[str, Any], causal: bool = False) -> np.ndarray:
        """One batched call of ``model`` (a registry name) on arrays named as its operation's input spec."""
        spec = registry.get(model).spec
        sent = {n: None if arrays.get(n) is None else np.asarray(arrays[n], np.complex64) for n in spec.complex_arrays()}
        sent["mask"] = np.asarray(self._batched_mask(arrays["mask"], arrays["kspace"]), bool)
        header = {"op": spec.operation, "model": model, **{flag: bool(causal) for flag in spec.flags}}
        target = np.shape(arrays[spec.target])
        return self._model_request(model, header, sent, int(np.prod(target[:1] + target[-2:])))

    def model_info(self, model: str, timeout_ms: int | None = None) -> dict[str, Any]:
        if model not in self._info:
            reply, _ = self.request({"op": "info", "model": model},
                                    timeout_ms=timeout_ms if timeout_ms is not None else self.INFO_TIMEOUT_MS)
            self._info[model] = reply["info"]
            if isinstance(reply.get("ms_per_mpixel"), (int, float)):
                self._ms_per_mpixel[model] = float(reply["ms_per_mpixel"])
        return self._info[model]

    def health(self, timeout_ms: int = 1000) -> dict[str, Any]:
        reply, _ = self.request({"op": "health"}, timeout_ms=timeout_ms)
        return reply

    def close(self) -> None:
        self._reset()


def health(endpoint: str, timeout_ms: int = 1000) -> dict[str, Any]:
    """One health check of the service at ``endpoint`` (raises InferenceError when it does not answer)."""
    client = InferenceClient(endpoint, timeout_ms=timeout_ms, retry_after_s=0.0)
    try:
        return client.health(timeout_ms)
    finally:
        client.close()


__all__ = ["InferenceClient", "ConnectionLost", "encode", "decode", "health"]
