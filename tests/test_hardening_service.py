"""The inference service under hostile requests: every one answered with an error, the process never exits."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq

from pipelines.inference_client import InferenceClient, decode, encode, health
from tests.dl_support import start_service, stop, tiny_weights

N = 32


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    weights = tiny_weights(tmp_path_factory.mktemp("weights"))
    proc, endpoint = start_service(weights, models="kgmgt,sgfmri",
                                   extra=["--max-message-mb", "1", "--max-side", "64", "--max-coils", "8"])
    yield proc, endpoint
    stop(proc)


def _raw(endpoint: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def _ask(endpoint: str, parts: list, wait_ms: int = 20000):
    s = _raw(endpoint)
    try:
        s.send_multipart(parts)
        if not s.poll(wait_ms):
            return None
        return decode(s.recv_multipart())[0]
    finally:
        s.close(0)


def _cine_arrays(b=1, coils=2, n=N):
    return {"frames": np.zeros((b, 3, n, n), np.complex64), "kspace": np.zeros((b, coils, n, n), np.complex64),
            "mask": np.ones((b, n), bool), "maps": np.zeros((b, coils, n, n), np.complex64)}


def _json(header: dict) -> list:
    return [json.dumps(header).encode()]


MALFORMED = {
    "cine without arrays": _json({"op": "cine"}),
    "0-d kspace": encode({"op": "cine"}, {**_cine_arrays(), "kspace": np.complex64(1)}),
    "pair without kspace": encode({"op": "pair"}, {"target": np.zeros((1, N, N), np.complex64),
                                                   "mask": np.ones((1, N), bool),
                                                   "maps": np.zeros((1, 2, N, N), np.complex64)}),
    "fractional shape": [json.dumps({"op": "cine", "arrays": [{"name": "kspace", "dtype": "complex64",
                                                              "shape": [1.5]}]}).encode(), b"\0" * 8],
    "info with a list as model": _json({"op": "info", "model": [1, 2]}),
    "header not an object": [b"[1, 2, 3]"],
    "arrays not a list": _json({"op": "cine", "arrays": 7}),
    "causal not a boolean": encode({"op": "cine", "causal": "yes"}, _cine_arrays()),
    "wrong dtype": encode({"op": "cine"}, {**_cine_arrays(), "frames": np.zeros((1, 3, N, N), np.float32)}),
    "matrix over the limit": encode({"op": "cine"}, _cine_arrays(n=96)),
    "too many coils": encode({"op": "cine"}, _cine_arrays(coils=9)),
    "unknown op": _json({"op": "format-disk"}),
    "not JSON": [b"\xff\xfe"],
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_every_malformed_request_gets_an_error_and_the_service_lives(service, name):
    proc, endpoint = service
    reply = _ask(endpoint, MALFORMED[name])
    assert reply is not None and reply["ok"] is False and reply["error"], reply
    assert proc.poll() is None, "the service exited"
    assert health(endpoint, timeout_ms=5000)["status"] == "ready"


def test_a_message_over_the_size_cap_is_dropped_and_the_service_lives(service):
    proc, endpoint = service
    # 2 MiB against --max-message-mb 1: ZeroMQ drops it before the service buffers it
    big = encode({"op": "cine"}, _cine_arrays(b=16, coils=8, n=64))
    assert sum(len(bytes(p)) for p in big) > 2**20
    assert _ask(endpoint, big, wait_ms=1500) is None
    assert proc.poll() is None and health(endpoint, timeout_ms=5000)["status"] == "ready"


def test_health_is_answered_while_a_batch_runs(service):
    proc, endpoint = service
    before = health(endpoint)["counts"].get("cine", 0)
    clients = [_raw(endpoint) for _ in range(6)]
    try:
        arrays = _cine_arrays(b=8, coils=4, n=64)
        for i, c in enumerate(clients):
            c.send_multipart(encode({"op": "cine", "id": f"c{i}"}, arrays))
        time.sleep(0.05)
        t0 = time.perf_counter()
        h = health(endpoint, timeout_ms=5000)
        health_s = time.perf_counter() - t0
        done = []
        for c in clients:
            assert c.poll(60000)
            reply, out = decode(c.recv_multipart())
            assert reply["ok"] and out["image"].shape == (8, 64, 64)
            done.append(time.perf_counter() - t0)
        # the health answer did not wait for the model work still running
        assert health_s < max(done), (health_s, done)
        assert h["ms_per_mpixel"]["kgmgt"] > 0
    finally:
        for c in clients:
            c.close(0)


def test_client_timeout_is_derived_from_the_measured_model_time(service):
    _, endpoint = service
    client = InferenceClient(endpoint)  # no timeout given: derived
    try:
        a = _cine_arrays(b=2, coils=2)
        image = client.cine_batch(a["frames"], a["kspace"], a["mask"], a["maps"], False)
        assert image.shape == (2, N, N)
        timeout, why = client._timeout_for("kgmgt", 2 * N * N)
        rate = health(endpoint)["ms_per_mpixel"]["kgmgt"]
        assert "measured" in why and timeout >= InferenceClient.AUTO_FLOOR_MS
        assert abs(timeout - (InferenceClient.AUTO_FLOOR_MS + 4 * rate * 2 * N * N / 1e6)) < 0.5 * timeout
    finally:
        client.close()
