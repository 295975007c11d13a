"""The stream host under hostile headers, pipelines, samples and connections: bounded, and nothing lost."""
from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET

import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ConfigText

from gadgets import host_settings
from gadgets.conventional import CoilMapCache
from gadgets.frames import FrameAccumulator
from pipelines.host import StreamHost
from pipelines.pipeline_config import shipped_pipeline_with
from pipelines.session import SessionOptions
from simulator.acquire import acquisitions
from simulator.client import run_session
from simulator.fuzz import read_answer
from simulator.header import make_header
from pipelines.processes import free_port
from tests.streams import small_cine
from tests.test_host_refusals import _bytes, _exchange, _good_session_still_works, _prefix


@pytest.fixture(scope="module")
def scan():
    return small_cine(slices=1, frames=3, coils=4, ny=16, nx=16)


# ------------------------------------------------------------------------------------------ operator settings
@pytest.mark.parametrize("name", ["reference_store", "inference_endpoint", "cpu_threads", "allow_random",
                                  "kgmgt_weights", "device", "inference_timeout_ms"])
def test_pipeline_property_naming_an_operator_setting_is_refused(stream_host, scan, name):
    xml = shipped_pipeline_with("kgmgt_cine", "gadgets.cine_kgmgt", **{name: "/tmp/x"})
    texts, closed, images = _exchange(stream_host.port, _bytes(ConfigText(xml), make_header(scan)))
    assert closed and not images
    assert any(f"'{name}' is a host operator setting" in t for t in texts), texts
    _good_session_still_works(stream_host.port, scan)


def test_a_gadget_under_gadgetron_refuses_it_too():
    conn = type("Conn", (), {"config": ET.fromstring('<configuration><property name="cpu_threads" value="64"/>'
                                                     '</configuration>')})()
    with pytest.raises(host_settings.OperatorSettingRefused, match="'cpu_threads' is a host operator setting"):
        host_settings.for_connection(conn)


def test_operator_settings_from_file_environment_and_command_line(tmp_path):
    from pipelines.host import build_parser, options_from_args

    config = tmp_path / "host.json"
    config.write_text(json.dumps({"kgmgt_weights": "/w/file.safetensors", "cpu_threads": 2, "max_matrix": 256}))
    env = {"STREAMRECON_CONFIG": str(config), "STREAMRECON_CPU_THREADS": "3",
           "STREAMRECON_REFERENCE_STORE": "/srv/refs"}
    s = host_settings.load(env)
    assert (s.kgmgt_weights, s.cpu_threads, s.max_matrix, s.reference_store) == ("/w/file.safetensors", 3, 256, "/srv/refs")
    assert s.environment()["STREAMRECON_REFERENCE_STORE"] == "/srv/refs"
    with pytest.raises(ValueError, match="unknown settings"):
        config.write_text(json.dumps({"weights_anywhere": 1}))
        host_settings.load(env)
    args = build_parser().parse_args(["--inference-endpoint", "tcp://10.0.0.2:5555", "--allow-random",
                                      "--max-coils", "32"])
    options = options_from_args(args)
    assert options.operator.inference_endpoint == "tcp://10.0.0.2:5555" and options.operator.allow_random
    assert options.operator.max_coils == 32


# ------------------------------------------------------------------------------------------ sizes from the header
def test_recon_matrix_beyond_the_limit_refused_before_allocating(stream_host, scan):
    header = make_header(scan)
    header.encoding[0].reconSpace.matrixSize.x = header.encoding[0].reconSpace.matrixSize.y = 2048
    texts, closed, images = _exchange(stream_host.port, _bytes(ConfigText(
        shipped_pipeline_with("kgmgt_cine", "gadgets.cine_kgmgt")), header, *acquisitions(scan)))
    assert closed and not images  # the host's CLOSE, before any data was used
    assert any("reconSpace matrix 2048x2048x1 exceeds this host's limit of 512" in t for t in texts), texts


def test_coil_count_beyond_the_limit_refused(stream_host, scan):
    header = make_header(scan)
    header.acquisitionSystemInformation.receiverChannels = 512
    texts, closed, images = _exchange(stream_host.port, _bytes(ConfigText(
        shipped_pipeline_with("cine_conventional", "gadgets.conventional")), header))
    assert closed and any("512 receiver channels" in t and "max_coils" in t for t in texts), texts


def _oversampled_header(scan, kx: int):
    header = make_header(scan)
    enc = header.encoding[0]
    enc.encodedSpace.matrixSize.x = kx
    enc.encodedSpace.fieldOfView_mm.x = 2 * enc.reconSpace.fieldOfView_mm.x
    return header


def test_readout_longer_than_the_header_allows_is_refused(stream_host, scan):
    header = _oversampled_header(scan, 32)
    huge = ismrmrd.Acquisition.from_array(np.ones((4, 16384), np.complex64))
    texts, closed, images = _exchange(stream_host.port, _bytes(ConfigText(
        shipped_pipeline_with("cine_conventional", "gadgets.conventional")), header, huge))
    assert closed and any("16384 samples exceeds the 64 samples the header allows" in t for t in texts), texts


def test_long_readout_is_cropped_without_an_n_by_n_matrix():
    from gadgets.oversampling import MAX_OPERATOR_SAMPLES, crop_operator, crop_readout, remove_oversampling

    rng = np.random.default_rng(0)
    small = (rng.standard_normal((2, 64)) + 1j * rng.standard_normal((2, 64))).astype(np.complex64)
    np.testing.assert_allclose(small @ crop_operator(64, 32), crop_readout(small, 32), atol=1e-5)
    n = 4 * MAX_OPERATOR_SAMPLES  # 4096 samples: eye(n) alone would be 128 MiB
    scan = small_cine(slices=1, frames=1, coils=2, ny=8, nx=8)
    header = _oversampled_header(scan, n)
    header.encoding[0].reconSpace.matrixSize.x = n // 2
    settings = host_settings.load({}).with_values(max_matrix=n // 2)
    acq = ismrmrd.Acquisition.from_array(np.ones((2, n), np.complex64))
    out = []
    conn = type("Conn", (), {"header": header, "config": None, "operator_settings": settings,
                             "__iter__": lambda self: iter([acq]), "send": lambda self, item: out.append(item)})()
    tracemalloc.start()
    remove_oversampling(conn)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out[0].number_of_samples == n // 2
    assert peak < 8 * 2**20, f"cropping one {n}-sample readout took {peak / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------------------ pipelines
def test_too_many_nodes_refused(stream_host, scan):
    node = '<external><execute name="gadgets.passthrough" target="pass_through" type="python"/></external>'
    xml = f"<configuration><version>2</version><stream>{node * 300}</stream></configuration>"
    texts, closed, _ = _exchange(stream_host.port, _bytes(ConfigText(xml), make_header(scan)))
    assert closed and any("300 nodes" in t and "at most 32" in t for t in texts), texts


def test_a_chain_that_cannot_start_stops_what_started_and_says_so(stream_host, scan, monkeypatch):
    """No more threads half way through starting the chain: TEXT + CLOSE, the started gadgets end."""
    real_start = threading.Thread.start
    started = []

    def start(self):
        if ":gadgets." in self.name or ":" in self.name and "session" in self.name and "writer" not in self.name:
            if len(started) == 2:
                raise RuntimeError("can't start new thread")
            started.append(self)
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    texts, closed, images = _exchange(stream_host.port, _prefix(scan) + _bytes(*acquisitions(scan)))
    monkeypatch.undo()
    assert closed and any("could not be started" in t and "can't start new thread" in t for t in texts), texts
    assert len(started) == 2
    for t in started:
        t.join(5)
        assert not t.is_alive(), f"{t.name} still running"
    _good_session_still_works(stream_host.port, scan)


# ------------------------------------------------------------------------------------------ non-finite samples
def _with_nan(scan, frame: int = 1):
    items = list(acquisitions(scan, calib_lines=(4, 12)))
    per_frame = len(items) // scan.frames
    bad = items[frame * per_frame + per_frame // 2]
    bad.data[0, 3] = np.nan
    bad.data[1, 5] = np.inf
    return items


def test_non_finite_samples_are_zeroed_flagged_and_never_reach_the_coil_maps(stream_host, scan):
    clean = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_file="cine_conventional",
                        items=acquisitions(scan, calib_lines=(4, 12)))
    dirty = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_file="cine_conventional",
                        items=_with_nan(scan))
    assert dirty.closed and not dirty.texts and len(dirty.images) == scan.frames
    for c, d in zip(clean.images, dirty.images):
        data = np.asarray(d.data)
        assert np.all(np.isfinite(data)) and np.abs(data).max() > 0
        if d.repetition == 1:
            assert d.meta["NonFiniteLinesZeroed"] == "1"
        else:  # later frames use maps from clean frames only
            assert "NonFiniteLinesZeroed" not in d.meta
            np.testing.assert_allclose(data, np.asarray(c.data), rtol=1e-4, atol=1e-4 * np.abs(c.data).max())


def test_kgmgt_fallback_is_not_black_after_a_nan(stream_host, scan, tmp_path, monkeypatch):
    from tests.dl_support import operate

    operate(monkeypatch, stream_host, kgmgt_weights=tmp_path / "missing.safetensors", device="cpu")
    r = run_session("127.0.0.1", stream_host.port, header=make_header(scan), items=_with_nan(scan),
                    config_text=shipped_pipeline_with("kgmgt_cine", "gadgets.cine_kgmgt"))
    model = [im for im in r.images if int(im.image_series_index) == 1]
    assert len(model) == scan.frames
    for im in model:
        assert "Fallback" in im.meta and np.all(np.isfinite(im.data)) and np.abs(im.data).max() > 0


# ------------------------------------------------------------------------------------------ memory per session
def test_open_frames_and_coil_map_cache_are_capped_and_nothing_is_lost():
    scan = small_cine(slices=1, frames=1, coils=2, ny=16, nx=16)
    header = make_header(scan)
    acc = FrameAccumulator(header, time_dim="repetition", max_open=8)
    frames = []
    template = next(acquisitions(scan))
    for i in range(200):  # every readout a new slice: no frame ever closes by itself
        acq = ismrmrd.Acquisition(ismrmrd.AcquisitionHeader.from_buffer_copy(template.getHead()), template.data.copy())
        acq.clear_all_flags()
        acq.idx.slice = i
        frames += acc.add(acq)
        assert len(acc.open) <= 8
    frames += acc.flush()
    assert len(frames) == 200 and acc.closed_early == 192
    cache = CoilMapCache((16, 16), max_entries=4)
    for f in frames[:20]:
        cache.update(f.reference_header.idx.slice, f)
    assert len(set(cache.maps) | set(cache._sum)) <= 4


# ------------------------------------------------------------------------------------------ connections
@pytest.fixture()
def small_host():
    host = StreamHost("127.0.0.1", 0, SessionOptions(), idle_timeout_s=30.0, max_connections=2,
                      message_timeout_s=1.0, session_timeout_s=30.0)
    host.start_background()
    yield host
    host.shutdown()
    host.server_close()


def test_connections_beyond_the_cap_get_text_and_close(small_host, scan):
    idle = [socket.create_connection(("127.0.0.1", small_host.port)) for _ in range(2)]
    try:
        time.sleep(0.2)
        texts, closed, _ = _exchange(small_host.port, b"", timeout=5)
        assert closed and any("host busy" in t for t in texts), texts
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    _good_session_still_works(small_host.port, scan)
    deadline = time.monotonic() + 5
    while small_host.active and time.monotonic() < deadline:  # the session thread is closing its socket
        time.sleep(0.05)
    assert small_host.active == 0


def test_a_trickling_client_is_ended_by_the_message_deadline(small_host, scan):
    payload = _prefix(scan) + _bytes(*acquisitions(scan))
    per_frame = len(_bytes(*list(acquisitions(scan))[:16]))
    sock = socket.create_connection(("127.0.0.1", small_host.port), timeout=20)
    try:
        sock.sendall(payload[:len(_prefix(scan)) + per_frame + 10])  # one whole frame, then 10 bytes of the next
        f = sock.makefile("rb")
        stop = threading.Event()

        def trickle():
            i = len(_prefix(scan)) + per_frame + 10
            while not stop.is_set() and i < len(payload):
                try:
                    sock.send(payload[i:i + 1])
                except OSError:
                    return
                i += 1
                time.sleep(0.3)

        threading.Thread(target=trickle, daemon=True).start()
        texts, _, images = read_answer(f)
        stop.set()
    finally:
        sock.close()
    assert any("message deadline" in t for t in texts), texts  # ended by the host's deadline, not ours
    assert len(images) >= 1  # the frame that did arrive is still imaged


def test_conventional_series_does_not_wait_for_a_hung_service(stream_host, monkeypatch):
    import zmq

    from pipelines import inference_client
    from tests.dl_support import operate

    scan = small_cine(slices=1, frames=3, coils=4, ny=16, nx=16)
    # a hung service: it accepts the connection and reads requests, and never answers
    hung = zmq.Context.instance().socket(zmq.ROUTER)
    hung.setsockopt(zmq.LINGER, 0)
    port = hung.bind_to_random_port("tcp://127.0.0.1")
    operate(monkeypatch, stream_host, inference_endpoint=f"tcp://127.0.0.1:{port}")
    # ordering, not a wall-clock budget: the first conventional image must leave before the model gadget's
    # info request to the hung service gives up (5 s here, so a loaded machine still has room)
    monkeypatch.setattr(inference_client.InferenceClient, "INFO_TIMEOUT_MS", 5000)
    gave_up: list[float] = []
    real_info = inference_client.InferenceClient.model_info

    def timed_info(self, *args, **kwargs):
        try:
            return real_info(self, *args, **kwargs)
        except Exception:
            gave_up.append(time.perf_counter() - start)
            raise

    monkeypatch.setattr(inference_client.InferenceClient, "model_info", timed_info)
    first: list[float] = []
    start = time.perf_counter()
    try:
        r = run_session("127.0.0.1", stream_host.port, header=make_header(scan),
                        items=acquisitions(scan, calib_lines=(4, 12)),
                        config_text=shipped_pipeline_with("kgmgt_cine_service", "gadgets.cine_kgmgt"),
                        on_image=lambda im: first.append(time.perf_counter() - start) if not first else None)
    finally:
        hung.close()
    assert r.closed and not r.texts
    assert gave_up, "the model gadget never asked the hung service for its model info"
    assert first and first[0] < gave_up[0], f"first image after {first[0]:.2f} s, service given up at {gave_up[0]:.2f} s"
    model = [im for im in r.images if int(im.image_series_index) == 1]
    assert len(model) == 3 and all("Fallback" in im.meta for im in model)
