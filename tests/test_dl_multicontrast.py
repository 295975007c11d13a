"""SGF-MRI pairing gadget: shift detection, the persistent reference store, one stream, across sessions and host restarts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import ismrmrd

from gadgets.multicontrast import rigid_shift, shift_image
from gadgets.reference_store import ReferenceStore, StoreSettings, identity_hash, store_key
from models.masks import line_mask
from models.phantoms import brain_pair
from pipelines.host import StreamHost
from pipelines.session import SessionOptions
from simulator.acquire import acquisitions, exam_acquisitions
from simulator.client import run_session
from simulator.header import make_header
from simulator.scan import scan_from_images
from pipelines.processes import python_env, stop, wait_port
from tests.dl_support import free_port, operate, pipeline_text, pixels, series, tiny_weights

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


@pytest.fixture(autouse=True)
def _operator(monkeypatch, weights):
    """The host operator's weights and device for every test here (pipelines cannot set them)."""
    operate(monkeypatch, None, sgfmri_weights=weights["sgfmri"], device="cpu")


def _xml(weights, **props):
    """The pipeline with these per-scan properties (``weights`` are the operator's, set by ``_operator``)."""
    return pipeline_text("sgfmri_multicontrast", MODULE, **props)


def header_of(scan, patient: str = "SIMULATED", **kw):
    """The simulator's header with the patient named (the store pairs only the same patient and study)."""
    h = make_header(scan, **kw)
    h.subjectInformation.patientID = patient
    return h


# ------------------------------------------------------------------------------------------ units
def test_rigid_shift_finds_six_pixels_between_contrasts_and_shift_image_undoes_it():
    ref, tgt = brain_pair(N, seed=3)
    moved = np.roll(ref, 6, axis=0)  # reference 6 px down: target(x) = moved(x + 6)
    dy, dx, confidence = rigid_shift(moved, tgt)
    assert abs(dy + 6) < 0.5 and abs(dx) < 0.5 and confidence > 5
    assert np.hypot(*rigid_shift(ref, tgt)[:2]) < 1.0
    np.testing.assert_array_equal(shift_image(moved, dy, dx), ref)


def test_reference_store_round_trip_identity_orientation_age_limit_and_purge(tmp_path):
    store = ReferenceStore(StoreSettings(tmp_path, max_age_s=60))
    img = (np.arange(12).reshape(3, 4) + 1j).astype(np.complex64)
    axial = [0.0, 0.0, 1.0]
    card = store.put("patient-a", "1.2.3", (0.0, 0.0, -5.0), img, {"contrast": 0, "slice_dir": axial})
    got, why = store.get("patient-a", "1.2.3", (0.0, 0.0, -5.04), slice_dir=axial)  # same position to 0.1 mm
    assert why == "" and got.meta["contrast"] == 0
    np.testing.assert_array_equal(got.image, img)
    with np.load(card.with_suffix(".npz"), allow_pickle=False) as data:  # plain arrays, no pickle
        assert data["image"].dtype == np.complex64
    assert json.loads(card.read_text())["frame_of_reference_uid"] == "1.2.3"
    assert store.get("patient-a", "1.2.3", (0.0, 0.0, 5.0))[0] is None
    assert store.get("patient-a", "9.9.9", (0.0, 0.0, -5.0))[0] is None
    other, why = store.get("patient-b", "1.2.3", (0.0, 0.0, -5.0))  # same frame of reference, another patient
    assert other is None and "this patient and study" in why
    assert store.get("", "1.2.3", (0.0, 0.0, -5.0))[0] is None and store.put("", "1.2.3", (0, 0, 0), img) is None
    tilted, why = store.get("patient-a", "1.2.3", (0.0, 0.0, -5.0), slice_dir=[0.0, 1.0, 0.0])
    assert tilted is None and "orientation" in why
    late, why = store.get("patient-a", "1.2.3", (0.0, 0.0, -5.0), now=got.meta["stored_unix"] + 61)
    assert late is None and "age limit" in why
    assert store.purge(now=got.meta["stored_unix"] + 61) == 1 and not list(tmp_path.glob("*.npz"))


def test_reference_store_is_bounded_in_entries_and_bytes(tmp_path):
    img = np.ones((16, 16), np.complex64)  # 2 KiB
    store = ReferenceStore(StoreSettings(tmp_path, max_entries=3, max_bytes=10 * 2 ** 20))
    for z in range(5):
        store.put("p", "1.2.3", (0.0, 0.0, float(z)), img)
    assert len(list(tmp_path.glob("*.npz"))) == 3
    assert store.get("p", "1.2.3", (0.0, 0.0, 0.0))[0] is None and store.get("p", "1.2.3", (0.0, 0.0, 4.0))[0] is not None
    small = ReferenceStore(StoreSettings(tmp_path / "small", max_bytes=6000))
    for z in range(4):
        small.put("p", "1.2.3", (0.0, 0.0, float(z)), img)
    assert sum(f.stat().st_size for f in (tmp_path / "small").iterdir()) <= 6000
    assert small.put("p", "1.2.3", (0, 0, 9.0), np.ones((64, 64), np.complex64)) is None  # one image over the bound


def test_identity_hash_names_patient_and_study():
    ref, _ = brain()
    a, b = header_of(ref, "patient-a"), header_of(ref, "patient-b")
    assert identity_hash(a) != identity_hash(b) and identity_hash(a) == identity_hash(header_of(ref, "patient-a"))
    study = header_of(ref, "patient-a")
    study.studyInformation.studyInstanceUID = "1.2.840.99"
    assert identity_hash(study) != identity_hash(a)
    anonymous = make_header(ref)
    anonymous.subjectInformation = None
    anonymous.studyInformation = None
    assert identity_hash(anonymous) == ""


# ------------------------------------------------------------------------------------------ end to end
def _targets(result):
    assert result.closed and not result.texts and not result.errors, (result.texts, result.errors)
    return series(result.images, 1)


def test_within_one_stream(stream_host, weights, reference_store, tmp_path):
    ref, tgt = brain()
    result = run_session("127.0.0.1", stream_host.port, header=make_header(tgt, n_contrasts=2),
                         items=exam_acquisitions([ref, tgt], [None, MASK]), config_text=_xml(weights))
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
    assert len(list(reference_store.glob("*.npz"))) == 2  # both reference slices kept for later scans


def test_a_client_cannot_choose_where_the_store_writes(stream_host, weights, tmp_path):
    ref, tgt = brain()
    elsewhere = tmp_path / "client_chosen"
    result = run_session("127.0.0.1", stream_host.port, header=make_header(tgt, n_contrasts=2),
                         items=exam_acquisitions([ref, tgt], [None, MASK]),
                         config_text=_xml(weights, reference_store=elsewhere))
    assert result.closed and any("reference_store" in t for t in result.texts), result.texts
    assert not elsewhere.exists()


def _reflag(items, pattern: str):
    """Readouts re-flagged as a given source flags them (the simulator's own flags removed).

    ``scanner``: a reference series whose end only LAST_IN_REPETITION marks, then the target series with
    LAST_IN_SLICE on each slice's last line and LAST_IN_REPETITION on its end (the pattern that gave the
    target's images first and the reference's only at the end of the stream); ``generator``: python-ismrmrd-server's
    generate_cartesian_shepp_logan_dataset.py, FIRST/LAST_IN_ENCODE_STEP1 + _SLICE + _REPETITION on each
    slice's first and last line; ``bare``: no flags but LAST_IN_MEASUREMENT on the very last readout.
    """
    items = list(items)
    for a in items:
        calib = [f for f in (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
                 if a.is_flag_set(f)]
        a.clear_all_flags()
        for f in calib:
            a.set_flag(f)
    key = [(a.idx.contrast, a.idx.slice) for a in items]
    last = {k: i for i, k in enumerate(key)}
    first = {k: i for i, k in reversed(list(enumerate(key)))}
    for i, a in enumerate(items):
        k = key[i]
        if pattern == "scanner":
            if i == max(j for j, kk in enumerate(key) if kk[0] == k[0]):
                a.set_flag(ismrmrd.ACQ_LAST_IN_REPETITION)
            if k[0] != 0 and last[k] == i:
                a.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        if pattern == "generator":
            if first[k] == i:
                for f in (ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1, ismrmrd.ACQ_FIRST_IN_SLICE, ismrmrd.ACQ_FIRST_IN_REPETITION):
                    a.set_flag(f)
            if last[k] == i:
                for f in (ismrmrd.ACQ_LAST_IN_ENCODE_STEP1, ismrmrd.ACQ_LAST_IN_SLICE, ismrmrd.ACQ_LAST_IN_REPETITION):
                    a.set_flag(f)
    items[-1].set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    return items


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`streamrecon serve --reference-store DIR` in its own process: the host's command line names the store."""
    store = tmp_path_factory.mktemp("served") / "references"
    seeded = ReferenceStore(StoreSettings(store))
    for name, age in (("stale", 7201.0), ("fresh", 10.0)):  # the host's default age limit is 7200 s
        card = seeded.put(name, "2.25.seeded", (0.0, 0.0, 0.0), np.ones((4, 4), np.complex64))
        info = json.loads(card.read_text())
        card.write_text(json.dumps({**info, "stored_unix": time.time() - age}))
    port = free_port()
    env = python_env()
    env.pop("STREAMRECON_REFERENCE_STORE", None)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--no-preload-models",
                             "--reference-store", str(store), "--log-level", "WARNING"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        yield port, store
    finally:
        stop(proc)


def test_serve_purges_references_past_their_age_at_start(served):
    _, store = served
    seeded = ReferenceStore(StoreSettings(store))
    assert seeded.get("stale", "2.25.seeded", (0.0, 0.0, 0.0))[0] is None
    assert not (store / (store_key("stale", "2.25.seeded", (0.0, 0.0, 0.0)) + ".npz")).exists()
    assert seeded.get("fresh", "2.25.seeded", (0.0, 0.0, 0.0))[0] is not None


@pytest.mark.parametrize("pattern,slices", [("scanner", 1), ("scanner", 2), ("generator", 2), ("bare", 2)])
def test_reference_completes_before_its_target_through_serve(served, weights, pattern, slices):
    port, store = served
    ref, tgt = brain(slices=slices, uid=f"2.25.order.{pattern}.{slices}")
    if pattern == "scanner" and slices == 1:  # the first scan meets a store with nothing of this frame of reference
        assert all(json.loads(c.read_text())["frame_of_reference_uid"] == "2.25.seeded" for c in store.glob("*.json"))
    items = _reflag(exam_acquisitions([ref, tgt], [None, MASK], calib_lines=CALIB), pattern)
    r = run_session("127.0.0.1", port, header=make_header(tgt, n_contrasts=2), items=items,
                    config_text=_xml(weights))
    model = _targets(r)
    order = [(int(im.image_series_index), im.contrast) for im in r.images]
    # every reference image arrives before any image of its target
    assert order[:slices] == [(0, 0)] * slices and all(c == 1 for _, c in order[slices:]), order
    assert len(model) == slices
    for im in model:
        assert im.meta["ReferenceSource"] == "this stream" and "Fallback" not in im.meta
    assert len(list(store.glob("*.npz"))) >= slices  # written where the host's command line said


def test_two_patients_with_one_frame_of_reference_never_pair(stream_host, weights):
    uid = "2.25.shared.by.two.patients"
    ref_a, tgt_a = brain(uid=uid, seed=0)
    _, tgt_b = brain(uid=uid, seed=7)  # same frame of reference UID and slice positions
    xml = _xml(weights)
    r = run_session("127.0.0.1", stream_host.port, header=header_of(ref_a, "patient-a"), items=acquisitions(ref_a),
                    config_text=xml)
    assert r.closed and len(r.images) == 2
    b = run_session("127.0.0.1", stream_host.port, header=header_of(tgt_b, "patient-b"), config_text=xml,
                    items=acquisitions(tgt_b, MASK, calib_lines=CALIB))
    for im in _targets(b):
        assert im.meta["ReferenceSource"].startswith("none: no stored reference of this patient and study")
        assert im.meta["Fallback"].startswith("single-contrast") and "ReferenceShift" not in im.meta
    a = run_session("127.0.0.1", stream_host.port, header=header_of(tgt_a, "patient-a"), config_text=xml,
                    items=acquisitions(tgt_a, MASK, calib_lines=CALIB))  # the positive control: same patient pairs
    for im in _targets(a):
        assert im.meta["ReferenceSource"] == "store" and "Fallback" not in im.meta


def test_a_reference_of_other_anatomy_is_refused_not_shifted_onto_the_target(stream_host, weights):
    ref, tgt = brain(shift_px=17, uid="2.25.misregistered")
    r = run_session("127.0.0.1", stream_host.port, header=make_header(tgt, n_contrasts=2), config_text=_xml(weights),
                    items=exam_acquisitions([ref, tgt], [None, MASK], calib_lines=CALIB))
    for im in _targets(r):
        assert im.meta["ReferenceSource"].startswith("none: this stream reference refused, reference does not match")
        assert im.meta["ReferenceAlignment"] == "refused" and im.meta["Fallback"].startswith("single-contrast")


def test_across_sessions_and_after_a_host_restart(weights, tmp_path, monkeypatch):
    ref, tgt = brain()
    stranger = brain(uid="2.25.999")[1]
    xml = _xml(weights)
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
                assert im.meta["ReferenceSource"] == "store" and "Fallback" not in im.meta
                assert im.meta["ReferenceStored"].endswith("measurement " + make_header(ref).measurementInformation.measurementID)
            outputs.append([pixels(im) for im in model])
            # another frame of reference: no reference, single-contrast, flagged
            s = run_session("127.0.0.1", host.port, header=make_header(stranger), config_text=xml,
                            items=acquisitions(stranger, MASK, calib_lines=CALIB))
            for im in _targets(s):
                assert im.meta["Fallback"].startswith("single-contrast (no usable reference: no stored reference")
                assert im.meta["ReferenceSource"].startswith("none: no stored reference")
        finally:
            host.shutdown()
            host.server_close()
    for a, b in zip(*outputs):  # the same reference gives the same images after the restart
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    # over the age limit the stored reference is not used
    host = StreamHost("127.0.0.1", 0, SessionOptions(), idle_timeout_s=10.0)
    host.start_background()
    try:
        old = run_session("127.0.0.1", host.port, header=make_header(tgt), config_text=_xml(weights, reference_max_age_s=0.001),
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
            weights, **props), items=exam_acquisitions([ref, tgt], [None, MASK], calib_lines=CALIB))
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


@pytest.mark.skipif(not __import__("models.weights", fromlist=["shipped_path"]).shipped_path("sgfmri_brain_ur").exists(),
                    reason="shipped SGF-MRI weights not in models/weights yet")
def test_shipped_weights_beat_zero_filled(stream_host, tmp_path, monkeypatch):
    from models.metrics import psnr, ssim
    from simulator.scan import phantom_scan

    ref, tgt = phantom_scan("brain", ny=64, nx=64, slices=2, n_coils=8)
    mask = line_mask("equispaced", 64, 1, accel=4, seed=1)
    operate(monkeypatch, None, device="cpu", sgfmri_weights="")  # the shipped weights
    xml = pipeline_text("sgfmri_multicontrast", MODULE)
    r = run_session("127.0.0.1", stream_host.port, header=make_header(tgt, n_contrasts=2), config_text=xml,
                    items=exam_acquisitions([ref, tgt], [None, mask], calib_lines=(20, 44)), timeout=300)
    conv = {im.slice: pixels(im) for im in series(r.images, 0) if im.contrast == 1}
    model = {im.slice: im for im in _targets(r)}
    assert len(conv) == len(model) == 2
    for s, im in model.items():
        assert "Fallback" not in im.meta and im.meta["ModelVersion"].startswith("sgfmri_brain_ur")
        truth = np.abs(tgt.reference[s, 0])
        assert psnr(pixels(im), truth) > psnr(conv[s], truth)
        assert ssim(pixels(im), truth) > ssim(conv[s], truth) + 0.01


def test_reference_crosses_gadgetron_processes_through_the_store(weights, tmp_path, monkeypatch):
    """As Gadgetron runs it: every scan in fresh `python -m gadgetron` processes, one after the other."""
    from pipelines.pipeline_config import parse_pipeline
    from pipelines.gadgetron.parent import run_pipeline_as_externals

    ref, tgt = brain(uid="2.25.gadgetron", slices=1)
    gadgets = parse_pipeline(_xml(weights)).gadgets
    first, errors = run_pipeline_as_externals(gadgets, make_header(ref).toXML().encode(), acquisitions(ref))
    assert errors == [] and len(first) == 1 and first[0].meta["Role"] == "reference"
    second, errors = run_pipeline_as_externals(gadgets, make_header(tgt).toXML().encode(),
                                               acquisitions(tgt, MASK, calib_lines=CALIB))
    assert errors == [] and [int(im.image_series_index) for im in second] == [0, 1]
    model = second[1]
    assert model.meta["ReferenceSource"] == "store" and "Fallback" not in model.meta
    assert model.meta["ImageComment"].startswith("SGF-MRI | R=4.0")
