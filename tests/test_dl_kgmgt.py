"""KGMgT sliding-window gadget: window logic, wiring of its inputs, and end to end through the host and Gadgetron externals."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import ismrmrd
import numpy as np
import pytest

from gadgets.cine_kgmgt import KGMgTStream, SlidingWindows, attach_scheduler, recon_kspace
from gadgets.frames import FrameAccumulator
from gadgets.inference import InProcessBackend
from models.coils import sense_combine
from models.fft import fft1c, fft2c, ifft1c, ifft2c
from models.masks import line_mask
from models.metrics import psnr
from models.view_sharing import view_share
from models.weights import shipped_path
from pipelines.pipeline_config import parse_pipeline
from simulator.acquire import acquisitions
from simulator.client import run_session
from pipelines.gadgetron.parent import run_pipeline_as_externals
from simulator.header import make_header
from simulator.scan import crop_readout
from tests.dl_support import (UNREACHED_LAG_MS, SimulatedTimeBackend, operate, pipeline_text, pixels, series,
                              tiny_weights)
from tests.streams import small_cine
from tests.virtual_clock import VirtualClock

NY = 32
CALIB = (8, 24)
MODULE = "gadgets.cine_kgmgt"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("weights"))


def _scan(order="realtime", frames=5, slices=2):
    scan = small_cine(slices=slices, frames=frames, coils=4, ny=NY, nx=NY,
                      order_dim="phase" if order == "segmented" else "repetition")
    return scan, line_mask("kt-uniform", NY, frames, accel=4, acs=4)


def view_sharing_sense(scan, mask, maps, t, causal, s=0):
    """Frame ``t``'s view-sharing SENSE image computed here from the scan (what a fallback must carry)."""
    nx = scan.recon_shape[1]
    k = np.stack([fft1c(crop_readout(ifft1c(scan.kspace[s, f], axis=-1), nx), axis=-1) * mask[f][None, :, None]
                  for f in range(scan.frames)]).astype(np.complex64)
    shared, _ = view_share(k, mask, t, latest=t if causal else t + 1)
    return sense_combine(ifft2c(shared), maps)


# ------------------------------------------------------------------------------------------ window logic
def test_centered_real_time_windows_skip_and_last_frame():
    w = SlidingWindows(causal=False, last_index=4)
    g = (0, 0, 0)
    assert w.add(g, 0) == []
    assert [(x.t, x.times) for x in w.add(g, 1)] == [(0, (1, 0, 1))]  # no t-1: best neighbour is t+1
    assert [(x.t, x.times) for x in w.add(g, 2)] == [(1, (0, 1, 2))]
    # frame 3 never arrives: once 4 is here, 2 goes with 1 twice, and 4 (the last) with itself
    assert [(x.t, x.times) for x in w.add(g, 4)] == [(2, (1, 2, 1)), (4, (4, 4, 4))]
    assert w.flush() == []


def test_causal_windows_need_no_look_ahead():
    w = SlidingWindows(causal=True)
    g = (1, 0, 0)
    assert [(x.t, x.times) for x in w.add(g, 0)] == [(0, (0, 0, 0))]
    assert [(x.t, x.times) for x in w.add(g, 1)] == [(1, (0, 0, 1))]
    assert [(x.t, x.times) for x in w.add(g, 2)] == [(2, (0, 1, 2))]
    assert [(x.t, x.times) for x in w.add(g, 3)] == [(3, (1, 2, 3))]


def test_gated_cine_is_periodic_first_phase_waits_for_last():
    w = SlidingWindows(causal=False, period=4)
    g = (0, 0, 0)
    assert w.add(g, 0) == [] and w.add(g, 1) == []
    assert [(x.t, x.times) for x in w.add(g, 2)] == [(1, (0, 1, 2))]
    assert [(x.t, x.times) for x in w.add(g, 3)] == [(0, (3, 0, 1)), (2, (1, 2, 3)), (3, (2, 3, 0))]
    c = SlidingWindows(causal=True, period=4)
    assert c.add(g, 0) == [] and c.add(g, 1) == []
    assert [(x.t, x.times) for x in c.add(g, 2)] == [(2, (0, 1, 2))]
    assert [(x.t, x.times) for x in c.add(g, 3)] == [(0, (2, 3, 0)), (1, (3, 0, 1)), (3, (1, 2, 3))]


def test_stream_end_releases_waiting_frames_and_memory_stays_bounded():
    w = SlidingWindows(causal=False)  # real time, length unknown
    g = (0, 0, 0)
    released = []
    for t in range(2000):
        released += w.add(g, t)
        gone = w.droppable(g)
        w.drop(g, gone)
        assert len(w.present[g]) <= 4 and len(w.emitted[g]) <= 4
    assert [x.t for x in released] == list(range(1999))
    assert [(x.t, x.times) for x in w.flush()] == [(1999, (1998, 1999, 1998))]


def test_recon_kspace_crops_readout_oversampling_exactly():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 8, 12)) + 1j * rng.standard_normal((2, 8, 12))
    padded = np.zeros((2, 8, 24), complex)
    padded[..., 6:18] = img
    sampled = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    k = fft2c(padded) * sampled[None, :, None]
    got, mask = recon_kspace(k.astype(np.complex64), sampled, (8, 12))
    np.testing.assert_array_equal(mask, sampled)
    np.testing.assert_allclose(got, (fft2c(img) * sampled[None, :, None]), atol=1e-5)  # orthonormal FFTs keep pixel values
    with pytest.raises(ValueError):
        recon_kspace(k.astype(np.complex64), sampled, (6, 12))


# ------------------------------------------------------------------------------------------ what the model is given
class RecordingBackend(InProcessBackend):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def cine_batch(self, frames, kspace, mask, maps, causal, model=None):
        self.calls.append((frames.copy(), kspace.copy(), mask.copy(), causal))
        return super().cine_batch(frames, kspace, mask, maps, causal, model)


def test_window_inputs_are_the_frames_own_kspace_mask_and_zero_filled_neighbours(weights):
    scan, mask = _scan(frames=4, slices=1)
    header = make_header(scan)
    backend = RecordingBackend(device="cpu", weights={"kgmgt": str(weights["kgmgt"])})
    config = ET.fromstring('<configuration><property name="mode" value="centered"/></configuration>')
    stream = KGMgTStream(header, config, backend=backend)
    acc = FrameAccumulator(header, time_dim="repetition")
    images = []
    for acq in acquisitions(scan, mask, calib_lines=CALIB):
        for frame in acc.add(acq):
            images += stream.add(frame)
    images += stream.flush()
    conv = {im.repetition: pixels(im) for im in series(images, 0)}
    model = series(images, 1)
    assert [im.repetition for im in model] == [0, 1, 2, 3]
    assert all("Fallback" not in im.meta for im in model)
    # frames 2 and 3 are released together (3 is the last) and go as one batch
    assert [len(c[0]) for c in backend.calls] == [1, 1, 2]
    items = [(f[None], k[None], m[None], c) for fs, ks, ms, c in backend.calls for f, k, m in zip(fs, ks, ms)]
    nx = scan.recon_shape[1]
    for t, (frames, kspace, m, causal) in enumerate(items):
        assert not causal and frames.shape == (1, 3, NY, nx)
        np.testing.assert_array_equal(m[0], mask[t])
        # the frame's own measured k-space (readout oversampling removed), zeros where not sampled
        expected = fft1c(crop_readout(ifft1c(scan.kspace[0, t], axis=-1), nx), axis=-1) * mask[t][None, :, None]
        np.testing.assert_allclose(kspace[0], expected, atol=1e-4 * np.abs(expected).max())
        # the window: zero-filled SENSE images of (t-1, t, t+1), mirrored at the ends
        times = [int(x) for x in model[t].meta["Window"].split(",")]
        assert times == {0: [1, 0, 1], 3: [2, 3, 2]}.get(t, [t - 1, t, t + 1])
        for j, u in enumerate(times):
            np.testing.assert_allclose(frames[0, j], conv[u], atol=1e-4 * np.abs(conv[u]).max())
        assert not np.allclose(pixels(model[t]), conv[t], atol=1e-3 * np.abs(conv[t]).max())


# ------------------------------------------------------------------------------------------ through the embedded host
def _check_images(scan, result, time_dim, model_order):
    assert result.closed and result.texts == [] and result.errors == [], (result.texts, result.errors)
    conv, model = series(result.images, 0), series(result.images, 1)
    assert len(conv) == len(model) == scan.slices * scan.frames
    got = [(im.slice, getattr(im, time_dim)) for im in model]
    assert got == model_order
    ny, nx = scan.recon_shape
    for s_images in (conv, model):
        assert [im.image_index for im in s_images] == list(range(1, len(s_images) + 1))
        for im in s_images:
            assert tuple(im.matrix_size) == (nx, ny, 1) and im.image_type == ismrmrd.IMTYPE_MAGNITUDE
            np.testing.assert_allclose(im.field_of_view[:], scan.fov_mm, rtol=1e-6)
            np.testing.assert_allclose(im.position[:], scan.slice_positions_mm[im.slice], atol=1e-5)
            np.testing.assert_allclose(im.slice_dir[:], scan.slice_dir)
            assert im.acquisition_time_stamp > 0 and "R=4.0" in im.meta["ImageComment"]
    for im in model:
        assert im.meta["Model"] == "KGMgT" and im.meta["ModelVersion"] == "tiny-test-1"
        assert im.meta["Weights"] == "kgmgt_tiny" and "Fallback" not in im.meta
        assert im.meta["ImageComment"].startswith("KGMgT | R=4.0")
    # each model image is its frame's (same counters and time stamps as the conventional image)
    stamps = {(im.slice, getattr(im, time_dim)): im.acquisition_time_stamp for im in conv}
    assert all(stamps[(im.slice, getattr(im, time_dim))] == im.acquisition_time_stamp for im in model)


def test_real_time_centered_two_slices(stream_host, weights, monkeypatch):
    scan, mask = _scan("realtime")
    operate(monkeypatch, stream_host, kgmgt_weights=weights["kgmgt"], device="cpu")
    xml = pipeline_text("kgmgt_cine", MODULE, max_lag_ms=UNREACHED_LAG_MS)  # bound not under test
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=xml,
                         items=acquisitions(scan, mask, calib_lines=CALIB))
    # frame t comes out when t+1 is complete; the last frame as soon as it arrives (the header announces it)
    order = [(s, t) for t in range(scan.frames - 1) for s in range(2)]
    order = order[:-2] + [(0, 3), (0, 4), (1, 3), (1, 4)]
    _check_images(scan, result, "repetition", order)
    for im in series(result.images, 1):
        assert im.meta["Mode"] == "centered"
    # the conventional series is still the zero-filled SENSE image beside it
    assert all("zero-filled SENSE" in im.meta["ImageComment"] for im in series(result.images, 0))


def test_real_time_causal_emits_each_frame_on_arrival(stream_host, weights, monkeypatch):
    scan, mask = _scan("realtime", frames=4)
    operate(monkeypatch, stream_host, kgmgt_weights=weights["kgmgt"], device="cpu")
    xml = pipeline_text("kgmgt_cine_causal", MODULE, max_lag_ms=UNREACHED_LAG_MS)  # bound not under test
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=xml,
                         items=acquisitions(scan, mask, calib_lines=CALIB))
    _check_images(scan, result, "repetition", [(s, t) for t in range(4) for s in range(2)])
    windows = {(im.slice, im.repetition): im.meta["Window"] for im in series(result.images, 1)}
    assert windows[(0, 0)] == "0,0,0" and windows[(1, 1)] == "0,0,1" and windows[(0, 3)] == "1,2,3"
    # the model runs beside the frame path: each model image comes after its own conventional image
    keys = [(int(im.image_series_index), im.slice, im.repetition) for im in result.images]
    assert all(keys.index((0, s, t)) < keys.index((1, s, t)) for s in range(2) for t in range(4))


def test_segmented_gated_two_slices_periodic(stream_host, weights, monkeypatch):
    scan, mask = _scan("segmented", frames=5)
    operate(monkeypatch, stream_host, kgmgt_weights=weights["kgmgt"], device="cpu")
    xml = pipeline_text("kgmgt_cine", MODULE)
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=xml,
                         items=acquisitions(scan, mask, order="segmented", segments=2, calib_lines=CALIB))
    # one breath-hold per slice; phase 0 needs the last phase (4), so it comes with 3 and 4
    order = [(s, p) for s in range(2) for p in (1, 2, 0, 3, 4)]
    _check_images(scan, result, "phase", order)
    windows = {(im.slice, im.phase): im.meta["Window"] for im in series(result.images, 1)}
    assert windows[(0, 0)] == "4,0,1" and windows[(1, 4)] == "3,4,0"


def test_model_that_cannot_load_falls_back_for_every_frame(stream_host, tmp_path, monkeypatch):
    scan, mask = _scan("realtime", frames=3, slices=1)
    operate(monkeypatch, stream_host, kgmgt_weights=tmp_path / "missing.safetensors", device="cpu")
    xml = pipeline_text("kgmgt_cine", MODULE, max_lag_ms=UNREACHED_LAG_MS)  # bound not under test
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=xml,
                         items=acquisitions(scan, mask, calib_lines=CALIB))
    assert result.closed and result.texts == [] and result.errors == []
    conv, model = series(result.images, 0), series(result.images, 1)
    assert len(conv) == len(model) == 3
    for c, m in zip(conv, model):
        assert "cannot load kgmgt" in m.meta["Fallback"] and "fallback" in m.meta["ImageComment"]
        # the fallback is the best online classical image, view-sharing SENSE, not the zero-filled one
        assert m.meta["ReconMethod"] == "view-sharing SENSE" and "view-sharing SENSE" in m.meta["ImageComment"]
    scores = [(psnr(pixels(m), np.abs(scan.reference[0, m.repetition])),
               psnr(pixels(c), np.abs(scan.reference[0, c.repetition]))) for c, m in zip(conv, model)]
    assert np.mean([a - b for a, b in scores]) > 0.3, scores


def test_same_gadget_as_gadgetron_externals_matches_embedded_host(stream_host, weights, monkeypatch):
    scan, mask = _scan("realtime", frames=3, slices=1)
    header = make_header(scan)
    operate(monkeypatch, stream_host, kgmgt_weights=weights["kgmgt"], device="cpu")
    xml = pipeline_text("kgmgt_cine", MODULE, max_lag_ms=UNREACHED_LAG_MS)  # bound not under test
    items, errors = run_pipeline_as_externals(parse_pipeline(xml).gadgets, header.toXML().encode(),
                                              acquisitions(scan, mask, calib_lines=CALIB))
    assert errors == []
    embedded = run_session("127.0.0.1", stream_host.port, header=header, config_text=xml,
                           items=acquisitions(scan, mask, calib_lines=CALIB)).images
    assert len(items) == len(embedded) == 6
    for a, b in zip(items, embedded):
        assert (a.image_series_index, a.repetition, a.image_index) == (b.image_series_index, b.repetition, b.image_index)
        assert a.meta["ImageComment"] == b.meta["ImageComment"]
        np.testing.assert_allclose(pixels(a), pixels(b), rtol=1e-4, atol=1e-4 * pixels(b).max())


@pytest.mark.skipif(not shipped_path("kgmgt_cine_small").exists(), reason="shipped KGMgT weights not in models/weights yet")
def test_shipped_weights_beat_zero_filled(stream_host):
    scan = small_cine(slices=2, frames=6, coils=8, ny=64, nx=64)
    mask = line_mask("kt-uniform", 64, 6, accel=4, acs=8)
    # a quality check, streamed as one burst: no real-time deadline (max_lag_ms 0), every window gets the model
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan),
                         config_text=pipeline_text("kgmgt_cine", MODULE, max_lag_ms=0),
                         items=acquisitions(scan, mask, calib_lines=(20, 44)))
    assert result.closed and not result.texts
    conv = {(im.slice, im.repetition): pixels(im) for im in series(result.images, 0)}
    model = {(im.slice, im.repetition): pixels(im) for im in series(result.images, 1)}
    assert all("Fallback" not in im.meta for im in series(result.images, 1))
    zf = np.mean([psnr(conv[k], np.abs(scan.reference[k])) for k in conv])
    dl = np.mean([psnr(model[k], np.abs(scan.reference[k])) for k in model])
    assert dl > zf + 1.0, (dl, zf)


def _slow_causal_stream(weights, frames: int, clock: VirtualClock, **model_time):
    """A one-slice causal KGMgT stream whose model is slower than the frames arrive (an overloaded GPU/CPU).

    The model is the real tiny network; its time is simulated on ``clock`` (``model_time``: ``call_s`` per
    call, ``per_item_s`` per window), so the same events happen on every run whatever the machine's load."""
    scan, mask = _scan(frames=frames, slices=1)
    header = make_header(scan)
    backend = SimulatedTimeBackend(clock, weights["kgmgt"], **model_time)
    stream = KGMgTStream(header, ET.fromstring('<configuration><property name="mode" value="causal"/></configuration>'),
                         backend=backend)
    return scan, mask, header, backend, stream


def test_model_thread_keeps_conventional_images_flowing_and_batches_the_backlog(weights):
    import threading

    clock = VirtualClock()
    scan, mask, header, backend, stream = _slow_causal_stream(weights, 8, clock, call_s=0.3)
    sent, lock = [], threading.Lock()

    def send(image):
        with lock:
            sent.append(image)

    attach_scheduler(stream, send, max_pending=4, clock=clock)
    acc = FrameAccumulator(header, time_dim="repetition")
    conv_times = []
    for acq in acquisitions(scan, mask, calib_lines=CALIB):  # as fast as they come: no time between frames
        for frame in acc.add(acq):
            for image in stream.add(frame):  # only conventional images come out here
                assert int(image.image_series_index) == 0
                conv_times.append(clock.now())
            assert len(stream.held[(0, 0, 0)]) <= 4  # frames no window needs any more are let go
    flushed = stream.flush()
    assert flushed == [] and len(conv_times) == 8
    assert [im.repetition for im in sent] == list(range(8)) and all("Fallback" not in im.meta for im in sent)
    # the backlog went as batches, so 8 frames took far fewer than 8 slow calls
    assert sum(backend.sizes) == 8 and len(backend.sizes) < 8 and max(backend.sizes) > 1
    # frames did not wait for one slow call each: the queue holds 4 windows before the frame path waits for
    # the model (the fifth frame's conventional image leaves before its window waits for a place), and then
    # one call frees the places for the rest
    assert conv_times[:5] == [0.0] * 5 and max(conv_times) <= 0.3, (conv_times, backend.sizes)


def test_real_time_model_lag_is_bounded_by_flagged_fallbacks(weights):
    """A model slower than the frame rate: the model series stays within max_lag_ms, never drifting."""
    import threading

    # 12 frames in 0.6 s against 3.6 s of model work: the lag must be cut by fallbacks
    clock = VirtualClock()
    scan, mask, header, backend, stream = _slow_causal_stream(weights, 12, clock, per_item_s=0.3)
    sent, lock = [], threading.Lock()

    def send(image):
        with lock:
            sent.append(image)

    attach_scheduler(stream, send, max_pending=64, max_lag_ms=800, clock=clock)
    acc = FrameAccumulator(header, time_dim="repetition")
    conv = []
    for acq in acquisitions(scan, mask, calib_lines=CALIB):
        for frame in acc.add(acq):
            conv.extend(stream.add(frame))
            clock.sleep(0.05)  # frames arrive every 50 ms; the model needs 300 ms a frame
    stream.flush()
    assert [im.repetition for im in conv] == list(range(12))
    assert sorted(im.repetition for im in sent) == list(range(12))  # one model-series image per frame
    behind = [im for im in sent if "Fallback" in im.meta]
    modelled = [im for im in sent if "Fallback" not in im.meta]
    assert behind and modelled, ("a slow model should give some model images and some flagged fallbacks",
                                 [(im.repetition, im.meta.get("Fallback")) for im in sent])
    maps = stream.cache.get(0)[0]
    for im in behind:  # a fallback carries the frame's view-sharing SENSE image (causal: lines up to t)
        assert im.meta["ReconMethod"] == "view-sharing SENSE"
        expected = view_sharing_sense(scan, mask, maps, im.repetition, causal=True)
        np.testing.assert_allclose(pixels(im), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("name", ["kgmgt_cine", "kgmgt_cine_causal", "kgmgt_cine_service", "kgmgt_cine_causal_service",
                                  "sgfmri_multicontrast", "sgfmri_multicontrast_service"])
def test_shipped_dl_pipelines_load_and_emit_both_series(name):
    from gadgets import properties
    from pipelines.pipeline_config import load_gadgets, pipeline_from_config_file

    pipeline = load_gadgets(pipeline_from_config_file(name))
    dl = pipeline.gadgets[-2]
    assert dl.module in ("gadgets.cine_kgmgt", "gadgets.multicontrast") and pipeline.gadgets[-1].module == "gadgets.images"
    assert properties.get(dl.config, "series_index", -1) == 1
    assert properties.get(dl.config, "conventional_series_index", -1) == 0
    assert properties.get(dl.config, "inference", "in-process") == ("service" if name.endswith("_service") else "in-process")
    if name.startswith("kgmgt"):
        assert properties.get(dl.config, "mode", "") == ("causal" if "causal" in name else "centered")


@pytest.mark.parametrize("wait", [8, 0])
def test_without_calibration_scan_first_windows_wait_for_time_averaged_maps(stream_host, weights, wait, monkeypatch):
    scan, mask = _scan("realtime", frames=8, slices=1)  # kt-uniform: the centre fills over a few frames
    operate(monkeypatch, stream_host, kgmgt_weights=weights["kgmgt"], device="cpu")
    xml = pipeline_text("kgmgt_cine", MODULE, map_wait_frames=wait, max_lag_ms=UNREACHED_LAG_MS)
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=xml,
                         items=acquisitions(scan, mask))  # no calibration lines
    assert result.closed and not result.texts
    conv, model = series(result.images, 0), series(result.images, 1)
    assert [im.repetition for im in model] == list(range(8)) and len(conv) == 8
    fallbacks = [im.repetition for im in model if "Fallback" in im.meta]
    first_sense = min(im.repetition for im in conv if "SENSE" in im.meta["ImageComment"])
    assert first_sense > 0  # the maps really came from the time-averaged centre, frames later
    if wait:
        assert fallbacks == [] and all(im.meta["CoilMaps"] == "time-averaged k-space centre" for im in model)
    else:
        assert fallbacks and all("no coil maps yet" in model[t].meta["Fallback"] for t in fallbacks)


def test_real_time_every_model_series_image_leaves_within_max_lag(weights):
    """Fallbacks never wait behind model work, and a window the busy model cannot serve in time falls back."""
    import threading

    clock = VirtualClock()
    scan, mask, header, backend, stream = _slow_causal_stream(weights, 12, clock, call_s=0.3)
    released, sent, lock = {}, {}, threading.Lock()

    def send(image):
        with lock:
            assert image.repetition not in sent, "two model-series images for one frame"
            sent[image.repetition] = (clock.now(), image)

    max_lag = 0.8
    attach_scheduler(stream, send, max_pending=64, max_lag_ms=max_lag * 1000, clock=clock)
    acc = FrameAccumulator(header, time_dim="repetition")
    for acq in acquisitions(scan, mask, calib_lines=CALIB):
        for frame in acc.add(acq):
            list(stream.add(frame))  # causal: frame t's window is released now
            released[frame.key("repetition")[3]] = clock.now()
            clock.sleep(0.05)  # frames every 50 ms; the model needs 300 ms a call
    stream.flush()
    assert sorted(sent) == list(range(12))
    lags = {t: sent[t][0] - released[t] for t in sent}
    assert max(lags.values()) <= max_lag + 1e-9, lags  # the bound itself: virtual time has no scheduling slack
    assert any("Fallback" not in im.meta for _, im in sent.values())
    assert any("Fallback" in im.meta for _, im in sent.values())  # the busy model could not serve every window


def test_slice_groups_held_at_once_are_bounded_and_every_frame_still_gets_its_image(weights):
    """A stream with more slices than the operator's cap: the oldest slice groups are ended early, not held."""
    from gadgets import host_settings

    scan = small_cine(slices=6, frames=3, coils=4, ny=NY, nx=NY, order_dim="repetition")
    mask = line_mask("kt-uniform", NY, 3, accel=4, acs=4)
    header = make_header(scan)
    settings = host_settings.load({}).with_values(max_cache_entries=2)
    stream = KGMgTStream(header, ET.fromstring('<configuration><property name="mode" value="centered"/></configuration>'),
                         backend=InProcessBackend(device="cpu", weights={"kgmgt": str(weights["kgmgt"])}),
                         settings=settings)
    acc = FrameAccumulator(header, time_dim="repetition")
    images, most = [], 0
    for acq in acquisitions(scan, mask, calib_lines=CALIB):
        for frame in acc.add(acq):
            images += stream.add(frame)
            most = max(most, len(stream.held), len(stream.histories))
    for frame in acc.flush():
        images += stream.add(frame)
    images += stream.flush()
    assert most <= 2  # the operator's cap (6 slices arrived)
    model = series(images, 1)
    assert sorted((im.slice, im.repetition) for im in model) == [(s, t) for s in range(6) for t in range(3)]
