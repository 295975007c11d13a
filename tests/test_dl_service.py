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
from tests.dl_support import (UNREACHED_LAG_MS, operate, pipeline_text, pixels, series, start_service, stop,
                              tiny_weights)
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

        with pytest.raises(InferenceError, match="maps must be"):  # maps do not match the k-space
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


def test_two_simultaneous_scans_through_the_service_match_in_process(stream_host, weights, service, monkeypatch):
    scans = [_scan(seed=0), _scan(slices=1, frames=6, seed=1)]
    operate(monkeypatch, stream_host, kgmgt_weights=weights["kgmgt"], device="cpu", inference_endpoint=service,
            inference_timeout_ms=30000)
    # the bound is not under test: every window must reach the model, however loaded the machine (dl_support)
    inproc_xml = pipeline_text("kgmgt_cine", MODULE, max_lag_ms=UNREACHED_LAG_MS)
    service_xml = pipeline_text("kgmgt_cine_service", MODULE, max_lag_ms=UNREACHED_LAG_MS)
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
    fb = [(im.slice, im.repetition, im.meta["Fallback"]) for r in results for im in series(r.images, 1) if "Fallback" in im.meta]
    assert counts["cine"] - before == 10 + 6, fb  # every frame of both scans went through the service
    for (scan, mask), via_service in zip(scans, results):
        assert via_service.closed and not via_service.texts and not via_service.errors
        local = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=inproc_xml,
                            items=acquisitions(scan, mask, calib_lines=CALIB))
        # by frame: a scheduler that judges itself behind serves the newest windows first
        a, b = (sorted(series(r.images, 1), key=lambda im: (im.slice, im.repetition)) for r in (via_service, local))
        assert len(a) == len(b) == scan.slices * scan.frames
        for x, y in zip(a, b):
            assert (x.slice, x.repetition) == (y.slice, y.repetition)
            assert "Fallback" not in x.meta and x.meta["InferenceBackend"] == f"service {service}"
            assert x.meta["ModelVersion"] == y.meta["ModelVersion"] == "tiny-test-1"
            np.testing.assert_allclose(pixels(x), pixels(y), rtol=1e-4, atol=1e-4 * pixels(y).max())


def test_killing_the_service_mid_scan_still_yields_every_image(stream_host, weights, monkeypatch):
    proc, endpoint = start_service(weights, models="kgmgt")
    scan, mask = _scan(slices=1, frames=10)
    # a hang guard: the kill itself is seen at once (the connection closes), then the client fails fast for 2 s at
    # a time; the bound is not under test (dl_support): before the kill every window reaches the service
    operate(monkeypatch, stream_host, inference_endpoint=endpoint, inference_timeout_ms=60000)
    xml = pipeline_text("kgmgt_cine_service", MODULE, max_lag_ms=UNREACHED_LAG_MS)
    killed = threading.Event()

    def on_image(image):
        if int(image.image_series_index) == 1 and not killed.is_set():
            proc.kill()  # the first model image is back: the service dies now
            killed.set()

    def items():  # the second half of the scan is sent once the service is dead, however slow the machine
        for acq in acquisitions(scan, mask, calib_lines=CALIB):
            if acq.idx.repetition >= 5:
                assert killed.wait(120), "hang guard: no model image from the live service"
            yield acq

    try:
        result = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=xml,
                             items=items(), pacing=Pacing.per_frame(60), on_image=on_image)
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
        assert im.meta["ReconMethod"] == "view-sharing SENSE"  # the best classical image, not the zero-filled one


def test_a_killed_service_is_found_by_its_closed_connection_not_by_timeout(weights):
    """Killed while a request waits in it: the call fails on the closed connection, not on a timeout.

    Neither the service (its batching window) nor the client's timeout would end the call within the test:
    only the closed connection can, and the error must say so. No wall-clock figure is asserted (a loaded
    machine makes any of them wrong); the joins are hang guards."""
    from gadgets.inference import InferenceError
    from tests.dl_support import free_port

    # the service holds every request for its batching window (10 minutes) before the model runs it
    proc, endpoint = start_service(weights, models="kgmgt", extra=["--batch-window-ms", "600000"])
    n, coils = 16, 2
    args = (np.zeros((1, 3, n, n), np.complex64), np.zeros((1, coils, n, n), np.complex64), np.ones((1, n), bool),
            np.full((1, coils, n, n), coils ** -0.5, np.complex64), False)
    client = InferenceClient(endpoint, timeout_ms=600000)  # the timeout plays no part
    outcome = {}
    sent = threading.Event()
    drain = client._connection_events

    def events(waiting):  # a call reads the old connection events, sends, then waits for its answer: once past
        drain(waiting)    # this read, a closed connection can only be news to the waiting call
        if not waiting:
            sent.set()

    def call():
        try:
            client.cine_batch(*args)
            outcome["result"] = "answered"
        except InferenceError as exc:
            outcome["result"] = str(exc)

    try:
        client.model_info("kgmgt", timeout_ms=60000)  # connected: a closed connection is then "lost", not "refused"
        client._connection_events = events
        caller = threading.Thread(target=call)
        caller.start()
        assert sent.wait(60)  # hang guard
        proc.kill()
        caller.join(120)  # hang guard: the closed connection ends the call, neither side would
        assert not caller.is_alive(), "the call did not notice the service was gone"
    finally:
        stop(proc)
        client.close()
    assert "connection lost" in outcome["result"] and "no answer" not in outcome["result"], outcome
    # and a service that is not there at all is refused, not waited for
    nobody = InferenceClient(f"tcp://127.0.0.1:{free_port()}", timeout_ms=60000)  # a hang guard, as above
    try:
        with pytest.raises(InferenceError, match="connection refused"):
            nobody.cine_batch(*args)
    finally:
        nobody.close()


def test_automatic_timeout_waits_for_a_live_service_that_is_busy(weights):
    """Four scans queued at the service make a request wait longer than its derived timeout: that is not death."""
    proc, endpoint = start_service(weights, models="kgmgt", extra=["--batch-window-ms", "3500"])
    n, coils = 16, 2
    client = InferenceClient(endpoint)  # automatic timeout: 2 s + 4 x the measured time of these pixels
    try:
        timeout, _ = client._timeout_for("kgmgt", n * n)
        assert timeout < 3500  # the service holds the request longer than that
        image = client.cine_batch(np.zeros((1, 3, n, n), np.complex64), np.zeros((1, coils, n, n), np.complex64),
                                  np.ones((1, n), bool), np.full((1, coils, n, n), coils ** -0.5, np.complex64), False)
        assert image.shape == (1, n, n)
    finally:
        client.close()
        stop(proc)


def _brain_exam():
    from tests.test_dl_multicontrast import MASK, brain

    ref, tgt = brain(uid="2.25.service")
    return make_header(tgt, n_contrasts=2), list(exam_acquisitions([ref, tgt], [None, MASK]))


def test_sgfmri_through_the_service_matches_in_process(stream_host, weights, service, tmp_path, monkeypatch):
    header, items = _brain_exam()
    operate(monkeypatch, stream_host, inference_endpoint=service, inference_timeout_ms=60000,
            sgfmri_weights=weights["sgfmri"], device="cpu", reference_store=tmp_path / "a")
    via = run_session("127.0.0.1", stream_host.port, header=header, items=items, config_text=pipeline_text(
        "sgfmri_multicontrast_service", "gadgets.multicontrast"))
    operate(monkeypatch, stream_host, sgfmri_weights=weights["sgfmri"], device="cpu", reference_store=tmp_path / "b")
    local = run_session("127.0.0.1", stream_host.port, header=header, items=items, config_text=pipeline_text(
        "sgfmri_multicontrast", "gadgets.multicontrast"))
    a, b = series(via.images, 1), series(local.images, 1)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert "Fallback" not in x.meta and x.meta["InferenceBackend"] == f"service {service}"
        assert x.meta["ReferenceSource"] == y.meta["ReferenceSource"] == "this stream"
        np.testing.assert_allclose(pixels(x), pixels(y), rtol=1e-4, atol=1e-4 * pixels(y).max())


def test_service_without_a_model_serves_the_others_and_gadgets_fall_back(stream_host, weights, tmp_path, monkeypatch):
    broken = {"kgmgt": weights["kgmgt"], "sgfmri": tmp_path / "missing.safetensors"}
    proc, endpoint = start_service(broken, models="kgmgt,sgfmri")
    try:
        h = health(endpoint)
        assert "kgmgt" in h["models"] and "no weights" in h["unavailable"]["sgfmri"]
        header, items = _brain_exam()
        operate(monkeypatch, stream_host, inference_endpoint=endpoint, inference_timeout_ms=60000,
                reference_store=tmp_path / "store")
        r = run_session("127.0.0.1", stream_host.port, header=header, items=items, config_text=pipeline_text(
            "sgfmri_multicontrast_service", "gadgets.multicontrast"))
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
    assert dead.returncode == 1 and "connection refused" in dead.stderr


def test_gadgetron_external_processes_use_the_warm_service(weights, service, monkeypatch):
    """Contract 4 as deployed: Gadgetron's per-scan `python -m gadgetron` process reaches the warm service."""
    from pipelines.pipeline_config import parse_pipeline
    from pipelines.gadgetron.parent import run_pipeline_as_externals

    scan, mask = _scan(slices=1, frames=3)
    before = health(service)["counts"].get("cine", 0)
    operate(monkeypatch, None, inference_endpoint=service, inference_timeout_ms=30000)
    xml = pipeline_text("kgmgt_cine_service", MODULE, max_lag_ms=UNREACHED_LAG_MS)  # bound not under test
    items, errors = run_pipeline_as_externals(parse_pipeline(xml).gadgets, make_header(scan).toXML().encode(),
                                              acquisitions(scan, mask, calib_lines=CALIB))
    assert errors == []
    model = series(items, 1)
    assert [im.repetition for im in model] == [0, 1, 2] and len(series(items, 0)) == 3
    assert all("Fallback" not in im.meta and im.meta["InferenceBackend"] == f"service {service}" for im in model)
    assert health(service)["counts"]["cine"] - before == 3


def test_operator_points_execute_mode_gadgets_at_the_warm_service(stream_host, weights, service, tmp_path, monkeypatch):
    """Gadgetron's execute mode loads the model per scan; the operator's inference_override sends the in-process
    pipeline's model calls to the warm service instead. A pipeline can neither set nor undo it."""
    from pipelines.pipeline_config import parse_pipeline
    from pipelines.gadgetron.parent import run_pipeline_as_externals

    scan, mask = _scan(slices=1, frames=3)
    before = health(service)["counts"].get("cine", 0)
    # no usable local weights: an image that is not a fallback can only have come from the service
    operate(monkeypatch, None, inference_endpoint=service, inference_override="service",
            kgmgt_weights=tmp_path / "missing.safetensors")
    xml = pipeline_text("kgmgt_cine", MODULE, max_lag_ms=UNREACHED_LAG_MS)  # the in-process pipeline
    items, errors = run_pipeline_as_externals(parse_pipeline(xml).gadgets, make_header(scan).toXML().encode(),
                                              acquisitions(scan, mask, calib_lines=CALIB))
    assert errors == []
    model = series(items, 1)
    assert sorted(im.repetition for im in model) == [0, 1, 2]
    assert all("Fallback" not in im.meta and im.meta["InferenceBackend"] == f"service {service}" for im in model)
    assert health(service)["counts"]["cine"] - before == 3
    # the override is the operator's: a client's pipeline naming it is refused before any data
    refused = run_session("127.0.0.1", stream_host.port, header=make_header(scan),
                          config_text=pipeline_text("kgmgt_cine", MODULE, inference_override="in-process"),
                          items=acquisitions(scan, mask, calib_lines=CALIB))
    assert refused.images == [] and any("inference_override" in t and "operator" in t for t in refused.texts)
