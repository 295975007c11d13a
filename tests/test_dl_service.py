"""The inference service (`streamrecon infer-server`): wire format, health, batching across scans, and losing it mid-scan."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from models.masks import line_mask
from pipelines.inference_client import InferenceClient, decode, encode, health
from simulator.acquire import acquisitions, exam_acquisitions
from simulator.client import Pacing, run_session
from simulator.header import make_header
from tests.dl_support import pipeline_text, pixels, series, start_service, stop, tiny_weights
from tests.streams import small_cine

MODULE = "gadgets.cine_kgmgt"
CALIB = (8, 24)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def service(weights):
    proc, endpoint = start_service(weights, models="kgmgt,sgfmri", extra=["--batch-window-ms", "20"])
    yield endpoint
    stop(proc)


def test_wire_format_round_trip_without_pickle():
    a = (np.arange(12).reshape(3, 4) * (1 + 2j)).astype(np.complex64)
    m = np.array([True, False, True])
    parts = encode({"op": "x"}, {"a": a, "m": m, "none": None})
    header, arrays = decode([bytes(p) for p in parts])
    assert header["op"] == "x" and set(arrays) == {"a", "m"}
    np.testing.assert_array_equal(arrays["a"], a)
    np.testing.assert_array_equal(arrays["m"], m)
    with pytest.raises(TypeError):
        encode({}, {"o": np.array([object()])})
    bad = [bytes(p) for p in parts]
    bad[1] = bad[1][:-8]
    with pytest.raises(ValueError, match="do not hold"):
        decode(bad)
    with pytest.raises(ValueError, match="not accepted"):
        decode([b'{"arrays": [{"name": "p", "dtype": "object", "shape": [1]}]}', b"x" * 8])


def test_health_and_a_request_the_model_rejects(service):
    h = health(service)
    assert h["status"] == "ready" and h["models"]["kgmgt"]["version"] == "tiny-test-1"
    client = InferenceClient(service, timeout_ms=20000)
    try:
        frames = np.zeros((1, 3, 16, 16), np.complex64)
        kspace = np.zeros((1, 2, 16, 16), np.complex64)
        from gadgets.inference import InferenceError

        with pytest.raises(InferenceError, match="coil maps"):  # maps do not match the k-space
            client.cine_batch(frames, kspace, np.ones((1, 16), bool), np.zeros((1, 3, 16, 16), np.complex64), False)
        # the service survives a bad request and a garbage message
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.DEALER)
        raw.connect(service)
        raw.send_multipart([b"not json"])
        assert raw.poll(20000)
        reply, _ = decode(raw.recv_multipart())
        assert not reply["ok"] and "bad message" in reply["error"]
        raw.close(0)
        assert health(service)["status"] == "ready"
    finally:
        client.close()


def _scan(slices=2, frames=5, seed=0):
    scan = small_cine(slices=slices, frames=frames, coils=4, ny=32, nx=32)
    return scan, line_mask("kt-uniform", 32, frames, accel=4, acs=4, seed=seed)


def test_two_simultaneous_scans_through_the_service_match_in_process(stream_host, weights, service):
    scans = [_scan(seed=0), _scan(slices=1, frames=6, seed=1)]
    inproc_xml = pipeline_text("kgmgt_cine", MODULE, kgmgt_weights=weights["kgmgt"], device="cpu")
    service_xml = pipeline_text("kgmgt_cine_service", MODULE, inference_endpoint=service, inference_timeout_ms=30000)
    before = health(service)["counts"].get("cine", 0)
    results: list = [None, None]

    def run(i):
        scan, mask = scans[i]
        results[i] = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=service_xml,
                                 items=acquisitions(scan, mask, calib_lines=CALIB), pacing=Pacing.per_frame(20))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    counts = health(service)["counts"]
    assert counts["cine"] - before == 10 + 6  # every frame of both scans went through the service
    for (scan, mask), via_service in zip(scans, results):
        assert via_service.closed and not via_service.texts and not via_service.errors
        local = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=inproc_xml,
                            items=acquisitions(scan, mask, calib_lines=CALIB))
        a, b = series(via_service.images, 1), series(local.images, 1)
        assert len(a) == len(b) == scan.slices * scan.frames
        for x, y in zip(a, b):
            assert (x.slice, x.repetition) == (y.slice, y.repetition)
            assert "Fallback" not in x.meta and x.meta["InferenceBackend"] == f"service {service}"
            assert x.meta["ModelVersion"] == y.meta["ModelVersion"] == "tiny-test-1"
            np.testing.assert_allclose(pixels(x), pixels(y), rtol=1e-4, atol=1e-4 * pixels(y).max())


def test_killing_the_service_mid_scan_still_yields_every_image(stream_host, weights):
    proc, endpoint = start_service(weights, models="kgmgt")
    scan, mask = _scan(slices=1, frames=10)
    # generous: a loaded 2-core machine can take seconds for one call; after the kill one call waits
    # this out, then the client fails fast for 2 s at a time (frames queue meanwhile and go as fallbacks)
    xml = pipeline_text("kgmgt_cine_service", MODULE, inference_endpoint=endpoint, inference_timeout_ms=8000)
    killed = threading.Event()

    def on_image(image):
        if int(image.image_series_index) == 1 and not killed.is_set():
            proc.kill()  # the first model image is back: the service dies now
            killed.set()

    try:
        result = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=xml,
                             items=acquisitions(scan, mask, calib_lines=CALIB), pacing=Pacing.per_frame(60),
                             on_image=on_image)
    finally:
        stop(proc)
    assert killed.is_set()
    assert result.closed and not result.texts and not result.errors
    conv, model = series(result.images, 0), series(result.images, 1)
    assert [im.repetition for im in conv] == [im.repetition for im in model] == list(range(10))
    served = [im for im in model if "Fallback" not in im.meta]
    fell_back = [im for im in model if "Fallback" in im.meta]
    assert served and fell_back and model[0] in served and model[-1] in fell_back
    for im in fell_back:
        assert endpoint in im.meta["Fallback"] and "fallback" in im.meta["ImageComment"]
        c = next(x for x in conv if x.repetition == im.repetition)
        np.testing.assert_allclose(pixels(im), pixels(c))


def _brain_exam():
    from tests.test_dl_multicontrast import MASK, brain

    ref, tgt = brain(uid="2.25.service")
    return make_header(tgt, n_contrasts=2), list(exam_acquisitions([ref, tgt], [None, MASK]))


def test_sgfmri_through_the_service_matches_in_process(stream_host, weights, service, tmp_path):
    header, items = _brain_exam()
    via = run_session("127.0.0.1", stream_host.port, header=header, items=items, config_text=pipeline_text(
        "sgfmri_multicontrast_service", "gadgets.multicontrast", inference_endpoint=service, inference_timeout_ms=60000))
    local = run_session("127.0.0.1", stream_host.port, header=header, items=items, config_text=pipeline_text(
        "sgfmri_multicontrast", "gadgets.multicontrast", sgfmri_weights=weights["sgfmri"], device="cpu"))
    a, b = series(via.images, 1), series(local.images, 1)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert "Fallback" not in x.meta and x.meta["InferenceBackend"] == f"service {service}"
        assert x.meta["ReferenceSource"] == y.meta["ReferenceSource"] == "this stream"
        np.testing.assert_allclose(pixels(x), pixels(y), rtol=1e-4, atol=1e-4 * pixels(y).max())


def test_service_without_a_model_serves_the_others_and_gadgets_fall_back(stream_host, weights, tmp_path):
    broken = {"kgmgt": weights["kgmgt"], "sgfmri": tmp_path / "missing.safetensors"}
    proc, endpoint = start_service(broken, models="kgmgt,sgfmri")
    try:
        h = health(endpoint)
        assert "kgmgt" in h["models"] and "no weights" in h["unavailable"]["sgfmri"]
        header, items = _brain_exam()
        r = run_session("127.0.0.1", stream_host.port, header=header, items=items, config_text=pipeline_text(
            "sgfmri_multicontrast_service", "gadgets.multicontrast", inference_endpoint=endpoint,
            inference_timeout_ms=60000))
    finally:
        stop(proc)
    assert r.closed and not r.texts and len(series(r.images, 0)) == 4
    for im in series(r.images, 1):
        assert "sgfmri not loaded" in im.meta["Fallback"] and im.meta["ModelVersion"] == "unknown"


def test_health_check_from_the_command_line(service):
    import json
    import subprocess
    import sys

    from tests.dl_support import ROOT, free_port

    ok = subprocess.run([sys.executable, "-m", "pipelines.cli", "infer-server", "--check", service],
                        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "ready"
    dead = subprocess.run([sys.executable, "-m", "pipelines.cli", "infer-server", "--check",
                           f"tcp://127.0.0.1:{free_port()}", "--log-level", "ERROR"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert dead.returncode == 1 and "no answer" in dead.stderr


def test_gadgetron_external_processes_use_the_warm_service(weights, service):
    """Contract 4 as deployed: Gadgetron's per-scan `python -m gadgetron` process reaches the warm service."""
    from pipelines.pipeline_config import parse_pipeline
    from simulator.gadgetron_parent import run_pipeline_as_externals

    scan, mask = _scan(slices=1, frames=3)
    before = health(service)["counts"].get("cine", 0)
    xml = pipeline_text("kgmgt_cine_service", MODULE, inference_endpoint=service, inference_timeout_ms=30000)
    items, errors = run_pipeline_as_externals(parse_pipeline(xml).gadgets, make_header(scan).toXML().encode(),
                                              acquisitions(scan, mask, calib_lines=CALIB))
    assert errors == []
    model = series(items, 1)
    assert [im.repetition for im in model] == [0, 1, 2] and len(series(items, 0)) == 3
    assert all("Fallback" not in im.meta and im.meta["InferenceBackend"] == f"service {service}" for im in model)
    assert health(service)["counts"]["cine"] - before == 3
