"""End to end through the embedded host on a real loopback socket."""
from __future__ import annotations

import threading
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from models.metrics import psnr
from simulator.acquire import acquisitions
from simulator.client import run_session
from simulator.header import make_header
from tests.streams import direct_rss, direct_sense, images_by_key, small_cine

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "cine_conventional.xml"


@pytest.fixture(scope="module")
def cine():
    return small_cine(slices=2, frames=12, coils=8)


def _check_headers(scan, result, time_dim="repetition", slice_major=False):
    assert result.closed, f"no CLOSE; texts={result.texts} receive_error={result.receive_error}"
    assert result.texts == [] and result.errors == []
    images = result.images
    assert len(images) == scan.slices * scan.frames
    keys = [(im.slice, getattr(im, time_dim)) for im in images]
    assert sorted(keys) == [(s, t) for s in range(scan.slices) for t in range(scan.frames)]
    # Frames come back in acquisition order: real time interleaves slices
    # frame by frame; gated cine does one breath-hold per slice.
    assert keys == sorted(keys, key=(lambda k: k) if slice_major else (lambda k: (k[1], k[0])))
    ny, nx = scan.recon_shape
    for n, im in enumerate(images, start=1):
        assert im.image_index == n and im.image_series_index == 0
        assert tuple(im.matrix_size) == (nx, ny, 1)
        assert im.image_type == ismrmrd.IMTYPE_MAGNITUDE
        np.testing.assert_allclose(im.field_of_view[:], scan.fov_mm, rtol=1e-6)
        np.testing.assert_allclose(im.position[:], scan.slice_positions_mm[im.slice], atol=1e-5)
        np.testing.assert_allclose(im.read_dir[:], scan.read_dir)
        np.testing.assert_allclose(im.phase_dir[:], scan.phase_dir)
        np.testing.assert_allclose(im.slice_dir[:], scan.slice_dir)
        assert im.contrast == scan.contrast
        assert im.acquisition_time_stamp > 0
        assert "zero-filled" in im.meta["ImageComment"] and "R=1.0" in im.meta["ImageComment"]
        assert im.meta["ImageSeriesDescription"]
    stamps = [im.acquisition_time_stamp for im in images]
    assert stamps == sorted(stamps)


def test_config_file_sense_matches_direct_numpy_and_truth(stream_host, cine):
    header = make_header(cine)
    for name in ("cine_conventional", "cine_conventional.xml"):
        result = run_session("127.0.0.1", stream_host.port, header=header, items=acquisitions(cine), config_file=name)
        _check_headers(cine, result)
        got = images_by_key(result.images)
        nx = cine.recon_shape[1]
        for s in range(cine.slices):
            for t in range(cine.frames):
                expected = direct_sense(cine.kspace[s, t], cine.kspace[s, 0], nx)
                np.testing.assert_allclose(got[(s, t)], expected, rtol=1e-4, atol=1e-4 * expected.max())
                assert psnr(got[(s, t)], cine.reference[s, t]) > 40


@pytest.mark.parametrize("trailing_nul", [False, True])
def test_config_text_rss_equals_numpy(stream_host, cine, trailing_nul):
    xml = PIPELINE.read_text().replace('value="sense"', 'value="rss"')
    result = run_session("127.0.0.1", stream_host.port, header=make_header(cine), items=acquisitions(cine),
                         config_text=xml, trailing_nul=trailing_nul)
    _check_headers(cine, result)
    got = images_by_key(result.images)
    for s in range(cine.slices):
        for t in range(cine.frames):
            expected = direct_rss(cine.kspace[s, t], cine.recon_shape[1])
            np.testing.assert_allclose(got[(s, t)], expected, rtol=1e-4, atol=1e-5 * expected.max())


def test_gated_segmented_cine_completes_every_phase(stream_host):
    scan = small_cine(slices=2, frames=6, coils=4, ny=24, nx=20, order_dim="phase")
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan),
                         items=acquisitions(scan, order="segmented", segments=4), config_file="cine_conventional")
    _check_headers(scan, result, time_dim="phase", slice_major=True)
    got = images_by_key(result.images, "phase")
    for (s, t), img in got.items():
        assert psnr(img, scan.reference[s, t]) > 40


def test_uint16_output_for_scanners(stream_host, cine):
    xml = PIPELINE.read_text().replace('name="output" value="float"', 'name="output" value="uint16"')
    result = run_session("127.0.0.1", stream_host.port, header=make_header(cine), items=acquisitions(cine), config_text=xml)
    assert result.closed and len(result.images) == cine.slices * cine.frames
    first = result.images[0]
    assert first.data.dtype == np.uint16 and first.data.max() == 4095
    scale = float(first.meta["ScaleFactor"])
    assert all(float(im.meta["ScaleFactor"]) == scale for im in result.images)


def test_undersampled_with_calibration_lines(stream_host):
    from models.masks import line_mask

    scan = small_cine(slices=1, frames=6, coils=8, ny=48, nx=32)
    mask = line_mask("uniform", scan.ny, scan.frames, accel=4, acs=16, seed=1)
    c = scan.ny // 2
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan, accel=4, calib_lines=16),
                         items=acquisitions(scan, mask, calib_lines=(c - 8, c + 8)), config_file="cine_conventional")
    assert result.closed and len(result.images) == scan.frames
    for im in result.images:
        accel = float(im.meta["Acceleration"])
        assert 2.5 < accel < 4.5
        assert im.meta["CoilMaps"] == "calibration lines"


def test_four_concurrent_sessions_equal_sequential(stream_host):
    scans = [small_cine(slices=1, frames=5, coils=4, ny=24, nx=20) for _ in range(1)] * 4
    header = make_header(scans[0])
    sequential = [run_session("127.0.0.1", stream_host.port, header=header, items=acquisitions(s),
                              config_file="cine_conventional") for s in scans]
    concurrent: list = [None] * 4

    def one(i: int) -> None:
        concurrent[i] = run_session("127.0.0.1", stream_host.port, header=header, items=acquisitions(scans[i]),
                                    config_file="cine_conventional")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    for seq, con in zip(sequential, concurrent):
        assert con is not None and con.closed and len(con.images) == len(seq.images) == 5
        for a, b in zip(seq.images, con.images):
            np.testing.assert_array_equal(a.data, b.data)
            assert a.image_index == b.image_index and a.repetition == b.repetition


def test_preload_imports_every_shipped_pipeline_and_warms_the_models(stream_host):
    from models import inference

    assert stream_host.preload_pipelines() == []
    loaded = {key[0] for key in inference._MODELS}
    assert {"kgmgt", "sgfmri"} <= loaded  # the in-process DL pipelines' weights are in memory before any scan
