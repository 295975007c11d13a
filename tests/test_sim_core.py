"""Core of the scanner simulator: phantoms, coils, Scan, header, acquisitions, client."""
from __future__ import annotations

import socket
import struct
import threading

import ismrmrd
import ismrmrd.xsd
import numpy as np
import pytest

from models.metrics import psnr
from models.phantoms import brain_pair, cardiac_cine
from models.synthetic import cardiac_waveform, coil_maps, periodic_motion, smooth_phase
from simulator.acquire import acquisitions, exam_acquisitions, frame_key, iter_kspace
from simulator.client import Pacing, run_session
from gadgets.header import time_dimension
from simulator.header import make_header
from simulator.recorder import RecordingHost
from simulator.scan import coil_images_to_recon, phantom_scan, scan_from_images


@pytest.fixture(scope="module")
def cine():
    return phantom_scan("cine", ny=32, nx=32, frames=4, n_coils=4, slices=2, seed=3)


def test_cardiac_cine_beats():
    c = cardiac_cine(48, 48, 10, seed=1)
    assert c.shape == (10, 48, 48) and c.dtype == np.complex64
    assert 0.95 <= np.abs(c).max() <= 1.0 + 1e-5
    # The bright blood pool shrinks at end-systole (cycle fraction 0.35) and refills.
    bright = (np.abs(c) > 0.7).reshape(10, -1).sum(1)
    systole = int(np.argmax([cardiac_waveform(t / 10) for t in range(10)]))
    assert bright[systole] < 0.85 * bright[0]
    assert abs(int(bright[-1]) - int(bright[0])) < 0.1 * bright[0]
    # The phase is smooth and not trivial.
    ph = np.angle(c[0][np.abs(c[0]) > 0.2])
    assert np.ptp(ph) > 0.5


def test_brain_pair_coregistered_different_contrast():
    ref, tgt = brain_pair(64, seed=2)
    assert ref.shape == tgt.shape == (64, 64) and ref.dtype == np.complex64
    support_r, support_t = np.abs(ref) > 0.03, np.abs(tgt) > 0.03
    assert (support_r == support_t).mean() > 0.97
    corr = np.corrcoef(np.abs(ref).ravel(), np.abs(tgt).ravel())[0, 1]
    assert corr < 0.9  # genuinely different contrasts


def test_coil_maps_normalised_and_smooth():
    m = coil_maps(8, 40, 80, seed=0)
    assert m.shape == (8, 40, 80) and m.dtype == np.complex64
    np.testing.assert_allclose(np.sum(np.abs(m) ** 2, axis=0), 1.0, rtol=1e-5)
    # Each coil is bright near its own side: the maps are not all alike.
    peaks = {np.unravel_index(np.argmax(np.abs(c)), c.shape) for c in m}
    assert len(peaks) >= 6
    assert np.max(np.abs(np.diff(np.abs(m), axis=-1))) < 0.2


def test_smooth_phase_and_motion():
    p = smooth_phase((32, 32), seed=4, max_rad=1.5)
    assert p.dtype == np.float32 and np.isclose(np.abs(p).max(), 1.5, atol=1e-5)
    img = np.abs(cardiac_cine(32, 32, 1)[0])
    mov = periodic_motion(img, 6, amplitude_px=3.0)
    assert mov.shape == (6, 32, 32)
    np.testing.assert_allclose(mov[0], img, atol=1e-6)  # R wave: undeformed
    assert np.abs(mov[2] - img).max() > 0.1


def test_scan_from_images_truth(cine):
    s = cine
    assert s.kspace.shape == (2, 4, 4, 32, 64) and s.kspace.dtype == np.complex64
    assert s.reference.shape == (2, 4, 32, 32) and s.coil_maps.shape == (2, 4, 32, 32)
    rec = np.stack([coil_images_to_recon(s.kspace[i], 32, s.coil_maps[i]) for i in range(2)])
    np.testing.assert_allclose(rec, s.reference, atol=1e-4)
    assert np.allclose(s.slice_positions_mm[:, 2], [-5, 5])
    noisy = scan_from_images(np.abs(s.reference[0]), n_coils=2, noise_std=0.01, seed=1)
    clean = scan_from_images(np.abs(s.reference[0]), n_coils=2, noise_std=0.0, seed=1)
    est = np.std(noisy.kspace - clean.kspace)
    assert 0.008 < est < 0.012


def test_header_round_trip(cine):
    h = make_header(cine, accel=4, calib_lines=12, n_contrasts=2)
    back = ismrmrd.xsd.CreateFromDocument(h.toXML())
    assert back == h
    enc = back.encoding[0]
    assert (enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y) == (64, 32)
    assert (enc.reconSpace.matrixSize.x, enc.reconSpace.matrixSize.y) == (32, 32)
    assert enc.encodedSpace.fieldOfView_mm.x == 2 * enc.reconSpace.fieldOfView_mm.x
    lim = enc.encodingLimits
    assert lim.kspace_encoding_step_1.center == 16 and lim.kspace_encoding_step_1.maximum == 31
    assert lim.repetition.maximum == 3 and lim.phase.maximum == 0 and lim.slice.maximum == 1
    assert lim.contrast.maximum == 1
    assert enc.parallelImaging.accelerationFactor.kspace_encoding_step_1 == 4
    assert enc.parallelImaging.calibrationMode.value == "embedded"
    assert back.acquisitionSystemInformation.receiverChannels == 4
    assert back.measurementInformation.frameOfReferenceUID == cine.frame_of_reference_uid
    assert time_dimension(back) == "repetition"


def test_acquisitions_counters_and_flags(cine):
    rng = np.random.default_rng(0)
    mask = rng.random((4, 32)) < 0.4
    mask[:, 14:18] = True
    acqs = list(acquisitions(cine, mask, calib_lines=(12, 20)))
    n_calib_only = int(np.sum(~mask[0, 12:20])) * cine.slices
    assert len(acqs) == 2 * mask.sum() + n_calib_only
    assert [a.scan_counter for a in acqs] == list(range(1, len(acqs) + 1))
    ts = [a.acquisition_time_stamp for a in acqs]
    assert all(b >= a for a, b in zip(ts, ts[1:])) and ts[-1] > ts[0]
    assert sum(a.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT) for a in acqs) == 1
    assert acqs[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    for key in {frame_key(a) for a in acqs}:
        mine = [a for a in acqs if frame_key(a) == key]
        assert mine[0].is_flag_set(ismrmrd.ACQ_FIRST_IN_SLICE) and mine[0].is_flag_set(ismrmrd.ACQ_FIRST_IN_REPETITION)
        assert mine[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE) and mine[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_REPETITION)
        assert sum(a.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE) for a in mine) == 1
    for a in acqs:
        k = a.idx.kspace_encode_step_1
        assert a.data.shape == (4, 64) and a.center_sample == 32 and a.idx.phase == 0
        assert tuple(a.position) == tuple(cine.slice_positions_mm[a.idx.slice])
        in_calib = 12 <= k < 20
        both = a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
        only = a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
        assert (both or only) == in_calib and not (both and only)
        if only:
            assert not mask[a.idx.repetition, k] and a.idx.repetition == 0
        else:
            assert mask[a.idx.repetition, k]
        np.testing.assert_array_equal(a.data, cine.kspace[a.idx.slice, a.idx.repetition, :, k, :])


def test_realtime_frames_complete_in_turn(cine):
    acqs = list(acquisitions(cine, order="realtime"))
    frames = [frame_key(a)[2] for a in acqs]
    assert frames == sorted(frames)  # frame t finishes before t+1 begins
    by_slice = [frame_key(a)[0] for a in acquisitions(cine, order="slice")]
    assert by_slice == sorted(by_slice)


def test_segmented_completes_frames_only_at_the_end():
    s = phantom_scan("cine", ny=32, nx=32, frames=5, n_coils=2, time_dimension="phase", frame_ms=40.0)
    segs = 4
    acqs = list(acquisitions(s, order="segmented", segments=segs))
    assert len(acqs) == 5 * 32
    assert all(a.idx.repetition == 0 for a in acqs)
    last_idx = {}
    for i, a in enumerate(acqs):
        last_idx[frame_key(a)] = i
    last_beat_start = len(acqs) - 5 * (32 // segs)
    assert all(i >= last_beat_start for i in last_idx.values())
    # Each frame's lines are spread over every heartbeat and physiology stamps restart per beat.
    phys = [a.physiology_time_stamp[0] for a in acqs]
    assert phys[0] == 0 and max(phys) < 5 * 40 and phys.count(0) == segs
    first_beat_phases = [a.idx.phase for a in acqs[:5 * 8]]
    assert sorted(set(first_beat_phases)) == [0, 1, 2, 3, 4]
    h = make_header(s)
    assert time_dimension(h) == "phase"


def test_exam_contrast_stream():
    ref, tgt = phantom_scan("brain", ny=32, n_coils=2)
    acqs = list(exam_acquisitions([ref, tgt]))
    assert [a.idx.contrast for a in acqs] == [0] * 32 + [1] * 32
    assert [a.scan_counter for a in acqs] == list(range(1, 65))
    assert sum(a.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT) for a in acqs) == 1
    assert acqs[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    assert ref.frame_of_reference_uid == tgt.frame_of_reference_uid and ref.measurement_id != tgt.measurement_id


def test_fully_sampled_zero_filled_through_socket(cine):
    """Readouts sent over TCP and re-gridded by the recording host reproduce the truth (> 40 dB)."""
    header = make_header(cine)
    with RecordingHost(answer="zero-filled") as host:
        res = run_session(host.host, host.port, header=header, items=acquisitions(cine), config_file="cine_conventional", timeout=20)
        rec = host.wait_sessions(1)[0]
    assert res.closed and not res.texts and not res.errors and res.receive_error is None
    assert rec.config == "cine_conventional" and rec.config_kind == "file"
    assert rec.header == header and rec.close_received
    k, m = iter_kspace(rec.acquisitions, cine.kspace.shape)
    assert m.all()
    sense = np.stack([coil_images_to_recon(k[s], 32, cine.coil_maps[s]) for s in range(2)])
    assert psnr(sense, cine.reference) > 40
    # The host's images (RSS of the received lines) also match the reference magnitude.
    assert len(res.images) == 8 and len(res.image_times) == 8
    got = {frame_key(im): np.squeeze(im.data) for im in res.images}
    for (s, _, t), img in got.items():
        assert psnr(img, cine.reference[s, t]) > 40
    assert set(res.send_times) == set(got)


def test_config_text_with_trailing_nul(cine):
    xml = "<configuration><gadget><name>x</name></gadget></configuration>"
    with RecordingHost() as host:
        res = run_session(host.host, host.port, header=make_header(cine), items=[], config_text=xml, trailing_nul=True, timeout=10)
        rec = host.wait_sessions(1)[0]
    assert res.closed
    assert rec.config == xml and rec.config_kind == "text"


def _raw_host(answer: bytes):
    """A one-shot server that reads until CLOSE is seen (or EOF) and answers ``answer`` bytes."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve():
        conn, _ = srv.accept()
        conn.settimeout(10)
        data = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.endswith(struct.pack("<H", 4)):
                break
        conn.sendall(answer)
        conn.close()
        srv.close()

    threading.Thread(target=serve, daemon=True).start()
    return port


def test_client_reads_gadgetron_error_and_text(cine):
    msg = b"gadget failed: boom"
    answer = struct.pack("<HQ", 8, len(msg)) + msg + struct.pack("<HI", 5, 6) + b"oops\0\0" + struct.pack("<H", 4)
    port = _raw_host(answer)
    res = run_session("127.0.0.1", port, header=make_header(cine), items=[], config_file="x", timeout=10)
    assert res.errors == ["gadget failed: boom"]
    assert res.texts == ["oops"]
    assert res.closed


def test_client_never_hangs_on_silent_host(cine):
    srv = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never answers
    try:
        res = run_session("127.0.0.1", srv.getsockname()[1], header=make_header(cine), items=acquisitions(cine),
                          config_file="x", timeout=0.5, pacing=Pacing())
    finally:
        srv.close()
    assert not res.closed and not res.images
    assert res.timed_out or res.receive_error is not None
