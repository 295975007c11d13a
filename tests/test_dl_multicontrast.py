"""SGF-MRI pairing gadget: shift detection, the persistent reference store, one stream, across sessions and host restarts."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gadgets.multicontrast import rigid_shift, shift_image
from gadgets.reference_store import ReferenceStore
from models.masks import line_mask
from models.phantoms import brain_pair
from pipelines.host import StreamHost
from pipelines.session import SessionOptions
from simulator.acquire import acquisitions, exam_acquisitions
from simulator.client import run_session
from simulator.header import make_header
from simulator.scan import scan_from_images
from tests.dl_support import operate, pipeline_text, pixels, series, tiny_weights

N = 48
MODULE = "gadgets.multicontrast"
CALIB = (16, 32)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("weights"))


def brain(shift_px: int = 0, slices: int = 2, uid: str = "2.25.4242", seed: int = 0):
    """Reference (T1w, contrast 0, optionally moved by ``shift_px`` along y) and target (T2w, contrast 1) scans."""
    pairs = [brain_pair(N, seed=seed + s) for s in range(slices)]
    ref = np.stack([np.roll(p[0], shift_px, axis=0) for p in pairs])[:, None]
    tgt = np.stack([p[1] for p in pairs])[:, None]
    kw = dict(n_coils=4, seed=seed, fov_mm=(220.0, 220.0, 5.0), frame_ms=1000.0, frame_of_reference_uid=uid)
    return (scan_from_images(ref, name="brain_T1w", contrast=0, **kw),
            scan_from_images(tgt, name="brain_T2w", contrast=1, **kw))


MASK = line_mask("equispaced", N, 1, accel=4, seed=0)


def _xml(monkeypatch, weights, store, **props):
    """The pipeline (per-scan properties) after setting the host operator's weights, device and store."""
    operate(monkeypatch, None, sgfmri_weights=weights["sgfmri"], device="cpu", reference_store=store)
    return pipeline_text("sgfmri_multicontrast", MODULE, **props)


# ------------------------------------------------------------------------------------------ units
def test_rigid_shift_finds_six_pixels_between_contrasts_and_shift_image_undoes_it():
    ref, tgt = brain_pair(N, seed=3)
    moved = np.roll(ref, 6, axis=0)  # reference 6 px down: target(x) = moved(x + 6)
    dy, dx, confidence = rigid_shift(moved, tgt)
    assert abs(dy + 6) < 0.5 and abs(dx) < 0.5 and confidence > 5
    assert np.hypot(*rigid_shift(ref, tgt)[:2]) < 1.0
    np.testing.assert_array_equal(shift_image(moved, dy, dx), ref)


def test_reference_store_round_trip_age_limit_and_purge(tmp_path):
    store = ReferenceStore(tmp_path, max_age_s=60)
    img = (np.arange(12).reshape(3, 4) + 1j).astype(np.complex64)
    card = store.put("1.2.3", (0.0, 0.0, -5.0), img, {"contrast": 0})
    got, why = store.get("1.2.3", (0.0, 0.0, -5.04))  # same position to 0.1 mm
    assert why == "" and got.meta["contrast"] == 0
    np.testing.assert_array_equal(got.image, img)
    with np.load(card.with_suffix(".npz"), allow_pickle=False) as data:  # plain arrays, no pickle
        assert data["image"].dtype == np.complex64
    assert json.loads(card.read_text())["frame_of_reference_uid"] == "1.2.3"
    assert store.get("1.2.3", (0.0, 0.0, 5.0))[0] is None
    assert store.get("9.9.9", (0.0, 0.0, -5.0))[0] is None
    late, why = store.get("1.2.3", (0.0, 0.0, -5.0), now=got.meta["stored_unix"] + 61)
    assert late is None and "age limit" in why
    assert store.purge(now=got.meta["stored_unix"] + 61) == 1 and not list(tmp_path.glob("*.npz"))


# ------------------------------------------------------------------------------------------ end to end
def _targets(result):
    assert result.closed and not result.texts and not result.errors, (result.texts, result.errors)
    return series(result.images, 1)


def test_within_one_stream(stream_host, weights, tmp_path, monkeypatch):
    ref, tgt = brain()
    result = run_session("127.0.0.1", stream_host.port, header=make_header(tgt, n_contrasts=2),
                         items=exam_acquisitions([ref, tgt], [None, MASK]), config_text=_xml(monkeypatch, weights, tmp_path))
    conv = series(result.images, 0)
    model = _targets(result)
    assert [(im.contrast, im.slice) for im in conv] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [im.meta["Role"] for im in conv] == ["reference", "reference", "target", "target"]
    assert [(im.contrast, im.slice) for im in model] == [(1, 0), (1, 1)]
    for im in model:
        assert im.meta["ReferenceSource"] == "this stream" and "Fallback" not in im.meta
        assert im.meta["ReferenceAlignment"] == "within tolerance"
        assert im.meta["Model"] == "SGF-MRI" and im.meta["ModelVersion"] == "tiny-test-1"
        assert im.meta["ImageComment"].startswith("SGF-MRI | R=4.0")
        np.testing.assert_allclose(im.position[:], tgt.slice_positions_mm[im.slice], atol=1e-5)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # both reference slices kept for later scans


def test_across_sessions_and_after_a_host_restart(weights, tmp_path, monkeypatch):
    ref, tgt = brain()
    stranger = brain(uid="2.25.999")[1]
    xml = _xml(monkeypatch, weights, tmp_path)
    outputs = []
    for restart in range(2):
        host = StreamHost("127.0.0.1", 0, SessionOptions(), idle_timeout_s=10.0)
        host.start_background()
        try:
            if restart == 0:  # the reference scan, its own session
                r = run_session("127.0.0.1", host.port, header=make_header(ref), items=acquisitions(ref), config_text=xml)
                assert r.closed and len(r.images) == 2 and not series(r.images, 1)
            t = run_session("127.0.0.1", host.port, header=make_header(tgt), config_text=xml,
                            items=acquisitions(tgt, MASK, calib_lines=CALIB))
            model = _targets(t)
            assert len(model) == 2 and len(series(t.images, 0)) == 2
            for im in model:
                assert im.meta["ReferenceSource"].startswith("store (") and "Fallback" not in im.meta
            outputs.append([pixels(im) for im in model])
            # another frame of reference: no reference, single-contrast, flagged
            s = run_session("127.0.0.1", host.port, header=make_header(stranger), config_text=xml,
                            items=acquisitions(stranger, MASK, calib_lines=CALIB))
            for im in _targets(s):
                assert im.meta["Fallback"].startswith("single-contrast (no usable reference: no stored reference")
                assert "ReferenceSource" not in im.meta
        finally:
            host.shutdown()
            host.server_close()
    for a, b in zip(*outputs):  # the same reference gives the same images after the restart
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    # over the age limit the stored reference is not used
    host = StreamHost("127.0.0.1", 0, SessionOptions(), idle_timeout_s=10.0)
    host.start_background()
    try:
        old = run_session("127.0.0.1", host.port, header=make_header(tgt), config_text=_xml(monkeypatch, weights, tmp_path, reference_max_age_s=0.001),
                          items=acquisitions(tgt, MASK, calib_lines=CALIB))
    finally:
        host.shutdown()
        host.server_close()
    assert all("age limit" in im.meta["Fallback"] for im in _targets(old))


def test_six_pixel_shift_detected_and_corrected(stream_host, weights, tmp_path, monkeypatch):
    # The target brings its own calibration lines, so its coil maps (hence its zero-filled
    # input) do not depend on where the reference was: only the reference input differs.
    outputs = {}
    for name, shift, props in (("aligned", 0, {}), ("corrected", 6, {}), ("uncorrected", 6, {"max_shift_px": 100})):
        ref, tgt = brain(shift_px=shift, uid=f"2.25.{name}")
        r = run_session("127.0.0.1", stream_host.port, header=make_header(tgt, n_contrasts=2), config_text=_xml(
            monkeypatch, weights, tmp_path / name, **props), items=exam_acquisitions([ref, tgt], [None, MASK], calib_lines=CALIB))
        outputs[name] = model = _targets(r)
        for im in model:
            dy, dx = (float(v) for v in im.meta["ReferenceShift"].split(","))
            if shift:
                assert abs(dy + shift) < 0.5 and abs(dx) < 0.5, im.meta["ReferenceShift"]
            else:
                assert np.hypot(dy, dx) < 1.0
    assert all(im.meta["ReferenceAlignment"] == "corrected" for im in outputs["corrected"])
    assert all(im.meta["ReferenceAlignment"] == "within tolerance" for im in outputs["uncorrected"])
    for a, c, u in zip(outputs["aligned"], outputs["corrected"], outputs["uncorrected"]):
        a, c, u = pixels(a), pixels(c), pixels(u)
        # correcting the shift brings the output back to what an aligned reference gives
        assert np.abs(c - a).mean() < 0.2 * np.abs(u - a).mean(), (np.abs(c - a).mean(), np.abs(u - a).mean())


@pytest.mark.skipif(not __import__("models.weights", fromlist=["shipped_path"]).shipped_path("sgfmri_brain_small").exists(),
                    reason="shipped SGF-MRI weights not in models/weights yet")
def test_shipped_weights_beat_zero_filled(stream_host, tmp_path, monkeypatch):
    from models.metrics import psnr, ssim
    from simulator.scan import phantom_scan

    ref, tgt = phantom_scan("brain", ny=64, nx=64, slices=2, n_coils=8)
    mask = line_mask("equispaced", 64, 1, accel=4, seed=1)
    operate(monkeypatch, None, device="cpu", reference_store=tmp_path)
    xml = pipeline_text("sgfmri_multicontrast", MODULE)
    r = run_session("127.0.0.1", stream_host.port, header=make_header(tgt, n_contrasts=2), config_text=xml,
                    items=exam_acquisitions([ref, tgt], [None, mask], calib_lines=(20, 44)), timeout=300)
    conv = {im.slice: pixels(im) for im in series(r.images, 0) if im.contrast == 1}
    model = {im.slice: im for im in _targets(r)}
    assert len(conv) == len(model) == 2
    for s, im in model.items():
        assert "Fallback" not in im.meta and im.meta["ModelVersion"].startswith("sgfmri_brain_small")
        truth = np.abs(tgt.reference[s, 0])
        assert psnr(pixels(im), truth) > psnr(conv[s], truth)
        assert ssim(pixels(im), truth) > ssim(conv[s], truth) + 0.01


def test_reference_crosses_gadgetron_processes_through_the_store(weights, tmp_path, monkeypatch):
    """As Gadgetron runs it: every scan in fresh `python -m gadgetron` processes, one after the other."""
    from pipelines.pipeline_config import parse_pipeline
    from simulator.gadgetron_parent import run_pipeline_as_externals

    ref, tgt = brain(uid="2.25.gadgetron", slices=1)
    gadgets = parse_pipeline(_xml(monkeypatch, weights, tmp_path)).gadgets
    first, errors = run_pipeline_as_externals(gadgets, make_header(ref).toXML().encode(), acquisitions(ref))
    assert errors == [] and len(first) == 1 and first[0].meta["Role"] == "reference"
    second, errors = run_pipeline_as_externals(gadgets, make_header(tgt).toXML().encode(),
                                               acquisitions(tgt, MASK, calib_lines=CALIB))
    assert errors == [] and [int(im.image_series_index) for im in second] == [0, 1]
    model = second[1]
    assert model.meta["ReferenceSource"].startswith("store (") and "Fallback" not in model.meta
    assert model.meta["ImageComment"].startswith("SGF-MRI | R=4.0")
