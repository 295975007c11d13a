"""The Triton backend: `streamrecon triton-server` (PyTriton) and the gadgets reaching it over gRPC.

Real Triton (the tritonserver PyTriton bundles) on loopback ports, real
ISMRMRD scans through the embedded host. Skipped, with the reason, only
where PyTriton cannot be installed (`make triton-env`).
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from gadgets import host_settings
from gadgets.inference import InferenceError, backend_from_config
from models.masks import line_mask
from pipelines.triton_client import TritonClient, as_complex, as_real, grpc_url, health
from simulator.acquire import acquisitions
from simulator.client import Pacing, run_session
from simulator.header import make_header
from tests.dl_support import (ROOT, UNREACHED_LAG_MS, free_port, operate, pipeline_text, pixels, series,
                              start_triton, stop_group, tiny_weights, triton_python)
from tests.streams import small_cine

MODULE = "gadgets.cine_kgmgt"
CALIB = (8, 24)


def test_complex_tensors_travel_as_float_pairs_and_endpoints_are_host_port():
    a = (np.arange(24).reshape(2, 3, 4) * (1 - 0.5j)).astype(np.complex64)
    r = as_real(a)
    assert r.dtype == np.float32 and r.shape == (2, 3, 4, 2) and np.shares_memory(r, a)
    np.testing.assert_array_equal(as_complex(r), a)
    with pytest.raises(ValueError, match="trailing"):
        as_complex(np.zeros((2, 3), np.float32))
    assert grpc_url("grpc://node7:8001") == grpc_url("node7:8001") == "node7:8001"
    with pytest.raises(ValueError, match="host:port"):
        grpc_url("node7")


def _config(**props: str):
    import xml.etree.ElementTree as ET

    return ET.fromstring("<configuration>" + "".join(f'<property name="{k}" value="{v}"/>' for k, v in props.items())
                         + "</configuration>")


def test_triton_is_an_operator_choice_the_pipeline_only_names():
    settings = host_settings.load({}).with_values(triton_endpoint="127.0.0.1:1", inference_timeout_ms=500)
    backend = backend_from_config(_config(inference="triton"), settings)
    try:
        assert isinstance(backend, TritonClient) and backend.label == "triton 127.0.0.1:1"
        with pytest.raises(InferenceError, match="Triton server 127.0.0.1:1"):  # nothing listens there
            backend.model_info("kgmgt")
    finally:
        backend.close()
    with pytest.raises(host_settings.OperatorSettingRefused, match="triton_endpoint"):
        backend_from_config(_config(inference="triton", triton_endpoint="evil:8001"), settings)


# ---------------------------------------------------------------------------- against a real Triton
@pytest.fixture(scope="module")
def python():
    found, why = triton_python()
    if found is None:
        pytest.skip(why)
    return found


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def triton(python, weights):
    # a long batching delay, so concurrent requests from different scans reliably share a batch
    proc, endpoint = start_triton(python, weights, extra=["--batch-delay-us", "100000"])
    yield endpoint
    stop_group(proc)


def _scan(slices=2, frames=5, seed=0):
    scan = small_cine(slices=slices, frames=frames, coils=4, ny=32, nx=32)
    return scan, line_mask("kt-uniform", 32, frames, accel=4, acs=4, seed=seed)


def _counts(endpoint: str, model: str = "kgmgt") -> tuple[int, int]:
    c = health(endpoint)["counts"][model]
    return c["inference_count"], c["execution_count"]


def test_health_info_and_a_bad_request_answered_with_its_reason(triton):
    h = health(triton)
    assert h["status"] == "ready" and h["live"] and h["models"] == {"kgmgt": True, "sgfmri": True,
                                                                     "streamrecon_info": True}
    client = TritonClient(triton, timeout_ms=30000)
    try:
        info = client.model_info("kgmgt")
        assert info["version"] == "tiny-test-1" and info["inputs"] == "zero-filled"
        frames = np.zeros((1, 3, 16, 16), np.complex64)
        kspace = np.zeros((1, 2, 16, 16), np.complex64)
        with pytest.raises(InferenceError, match="maps must be"):
            client.cine_batch(frames, kspace, np.ones((1, 16), bool), np.zeros((1, 3, 16, 16), np.complex64), False)
        with pytest.raises(InferenceError, match="exceeds this service's limit"):
            big = np.zeros((1, 1, 600, 8), np.complex64)
            client.cine_batch(np.zeros((1, 3, 600, 8), np.complex64), big, np.ones((1, 600), bool), big, False)
    finally:
        client.close()
    assert health(triton)["status"] == "ready"


def test_triton_batches_requests_of_concurrent_scans_and_matches_in_process(triton, weights):
    from gadgets.inference import InProcessBackend

    rng = np.random.default_rng(3)
    cx = lambda *s: (rng.standard_normal(s) + 1j * rng.standard_normal(s)).astype(np.complex64)  # noqa: E731
    requests = []
    for _ in range(4):
        maps = cx(1, 4, 24, 24)
        maps /= np.sqrt((np.abs(maps) ** 2).sum(1, keepdims=True))
        mask = rng.random((1, 24)) < 0.4
        requests.append((cx(1, 3, 24, 24), cx(1, 4, 24, 24) * mask[:, None, :, None], mask, maps))
    items0, runs0 = _counts(triton)
    out: list = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def one(i):  # one client per "scan", as each gadget stream has its own
        client = TritonClient(triton, timeout_ms=60000)
        try:
            client.model_info("kgmgt")
            barrier.wait(30)
            out[i] = client.cine_batch(*requests[i], causal=False)
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    items, runs = _counts(triton)
    assert items - items0 == 4 and runs - runs0 < 4  # Triton's dynamic batcher put scans together
    local = InProcessBackend(device="cpu", weights={"kgmgt": str(weights["kgmgt"])})
    for (frames, kspace, mask, maps), image in zip(requests, out):
        expected = local.cine_batch(frames, kspace, mask, maps, False)
        np.testing.assert_allclose(image, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_two_scans_through_triton_give_the_in_process_images(stream_host, weights, triton, monkeypatch):
    scans = [_scan(seed=0), _scan(slices=1, frames=6, seed=1)]
    operate(monkeypatch, stream_host, kgmgt_weights=weights["kgmgt"], device="cpu", triton_endpoint=triton,
            inference_timeout_ms=60000)
    # the bound is not under test: every window must reach the model, however loaded the machine (dl_support)
    triton_xml = pipeline_text("kgmgt_cine_triton", MODULE, max_lag_ms=UNREACHED_LAG_MS)
    inproc_xml = pipeline_text("kgmgt_cine", MODULE, max_lag_ms=UNREACHED_LAG_MS)
    items0, _ = _counts(triton)
    results: list = [None, None]

    def run(i):
        scan, mask = scans[i]
        results[i] = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=triton_xml,
                                 items=acquisitions(scan, mask, calib_lines=CALIB), pacing=Pacing.per_frame(20))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert _counts(triton)[0] - items0 == 10 + 6  # every frame of both scans went through Triton
    for (scan, mask), via in zip(scans, results):
        assert via.closed and not via.texts and not via.errors
        local = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=inproc_xml,
                            items=acquisitions(scan, mask, calib_lines=CALIB))
        # by frame: a scheduler that judges itself behind serves the newest windows first
        a, b = (sorted(series(r.images, 1), key=lambda im: (im.slice, im.repetition)) for r in (via, local))
        assert len(a) == len(b) == scan.slices * scan.frames
        for x, y in zip(a, b):
            assert (x.slice, x.repetition) == (y.slice, y.repetition)
            assert "Fallback" not in x.meta and x.meta["InferenceBackend"] == f"triton {triton}"
            assert x.meta["ModelVersion"] == y.meta["ModelVersion"] == "tiny-test-1"
            np.testing.assert_allclose(pixels(x), pixels(y), rtol=1e-4, atol=1e-4 * pixels(y).max())


def test_sgfmri_through_triton_matches_in_process(stream_host, weights, triton, tmp_path, monkeypatch):
    from tests.test_dl_service import _brain_exam

    header, items = _brain_exam()
    operate(monkeypatch, stream_host, triton_endpoint=triton, inference_timeout_ms=60000,
            sgfmri_weights=weights["sgfmri"], device="cpu", reference_store=tmp_path / "a")
    via = run_session("127.0.0.1", stream_host.port, header=header, items=items,
                      config_text=pipeline_text("sgfmri_multicontrast_triton", "gadgets.multicontrast"))
    operate(monkeypatch, stream_host, sgfmri_weights=weights["sgfmri"], device="cpu", reference_store=tmp_path / "b")
    local = run_session("127.0.0.1", stream_host.port, header=header, items=items,
                        config_text=pipeline_text("sgfmri_multicontrast", "gadgets.multicontrast"))
    a, b = series(via.images, 1), series(local.images, 1)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert "Fallback" not in x.meta and x.meta["InferenceBackend"] == f"triton {triton}"
        np.testing.assert_allclose(pixels(x), pixels(y), rtol=1e-4, atol=1e-4 * pixels(y).max())


def test_triton_stopped_mid_scan_gives_flagged_fallbacks_and_every_frame(stream_host, python, weights, monkeypatch):
    proc, endpoint = start_triton(python, weights, models="kgmgt")
    scan, mask = _scan(slices=1, frames=10)
    operate(monkeypatch, stream_host, triton_endpoint=endpoint, inference_timeout_ms=8000)
    killed = threading.Event()

    def on_image(image):
        if int(image.image_series_index) == 1 and not killed.is_set():
            stop_group(proc, kill=True)  # the first model image is back: Triton and its stubs die now
            killed.set()

    def items():  # the second half of the scan is sent once Triton is dead, however slow the machine
        for acq in acquisitions(scan, mask, calib_lines=CALIB):
            if acq.idx.repetition >= 5:
                assert killed.wait(120), "hang guard: no model image from the live server"
            yield acq

    try:
        # the bound is not under test (dl_support): before the kill every window reaches Triton
        result = run_session("127.0.0.1", stream_host.port, header=make_header(scan),
                             config_text=pipeline_text("kgmgt_cine_triton", MODULE, max_lag_ms=UNREACHED_LAG_MS),
                             items=items(), pacing=Pacing.per_frame(60), on_image=on_image)
    finally:
        stop_group(proc, kill=True)
    assert killed.is_set()
    assert result.closed and not result.texts and not result.errors
    conv, model = series(result.images, 0), series(result.images, 1)
    assert [im.repetition for im in conv] == [im.repetition for im in model] == list(range(10))
    served = [im for im in model if "Fallback" not in im.meta]
    fell_back = [im for im in model if "Fallback" in im.meta]
    assert served and fell_back and model[0] in served and model[-1] in fell_back
    for im in fell_back:
        assert f"Triton server {endpoint}" in im.meta["Fallback"] and "fallback" in im.meta["ImageComment"]
        assert im.meta["ReconMethod"] == "view-sharing SENSE"  # the best classical image, not the zero-filled one


def test_health_check_from_the_command_line(triton):
    ok = subprocess.run([sys.executable, "-m", "pipelines.cli", "triton-server", "--check", triton],
                        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "ready"
    dead = subprocess.run([sys.executable, "-m", "pipelines.cli", "triton-server", "--check",
                           f"127.0.0.1:{free_port()}", "--log-level", "ERROR"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert dead.returncode == 1 and "Triton server" in dead.stderr
