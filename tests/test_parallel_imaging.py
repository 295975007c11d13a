"""Parallel imaging in the conventional series: Siemens-layout iPAT-2 files replayed through the embedded host.

Each file (``simulator/siemens_layout.py``: 4 coils, R=2, 28 calibration lines
embedded or as a separate reference scan, or a time-interleaved
calibration; a header without ``<version>``; noise scans; 2x readout
oversampling) is read back with the simulator's ISMRMRD reader and sent as
it is (its own XML and readouts) to ``cine_conventional``. The image must
be unfolded: within 1 dB of an offline CG-SENSE of the same file's data
(run to convergence, maps from the same calibration data), and far above
the folded zero-filled image the same pipeline gives with
``parallel_imaging=off`` (what Gadgetron's ``default.xml`` returns).
Scores compare magnitudes after the best scalar scale (the host pre-whitens:
its units are noise standard deviations).
"""
from __future__ import annotations

import ismrmrd
import numpy as np
import pytest

from simulator.acquire import acquisitions
from simulator.benchmarks.parallel_imaging import offline_cg_sense, pipeline_with, pixels, psnr
from simulator.client import run_session
from simulator.header import make_header
from simulator.readers import read_ismrmrd
from simulator.siemens_layout import write_siemens_pi
from tests.streams import small_cine

CALIBRATION = (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("siemens")
    return {mode: write_siemens_pi(folder / f"{mode}.h5", mode, repetitions=3 if mode == "interleaved" else 1)
            for mode in ("embedded", "separate", "interleaved")}


@pytest.mark.parametrize("mode", ["embedded", "separate", "interleaved"])
def test_an_ipat2_file_is_unfolded_within_1db_of_cg_sense_and_far_above_the_folded_image(mode, files, stream_host):
    written = files[mode]
    scans = read_ismrmrd(written.path)
    raw = scans[0].raw
    assert "<version>" not in raw.xml and "SIEMENS" in raw.xml
    header = ismrmrd.xsd.CreateFromDocument(raw.xml)
    assert header.encoding[0].parallelImaging.accelerationFactor.kspace_encoding_step_1 == 2
    assert header.encoding[0].parallelImaging.calibrationMode.value == mode
    flagged = [a for a in raw.acquisitions if any(a.is_flag_set(f) for f in CALIBRATION)]
    assert len(flagged) == (0 if mode == "interleaved" else 28 * 2)  # two slices

    unfolded = run_session("127.0.0.1", stream_host.port, header=raw.xml, items=raw.acquisitions,
                           config_file="cine_conventional", timeout=60)
    folded = run_session("127.0.0.1", stream_host.port, header=raw.xml, items=raw.acquisitions,
                         config_text=pipeline_with(parallel_imaging="off"), timeout=60)
    frames = 2 * (3 if mode == "interleaved" else 1)
    for result in (unfolded, folded):
        assert result.closed and not result.texts and not result.errors and len(result.images) == frames

    key = lambda im: (im.repetition, im.slice)  # noqa: E731
    for image, zero_filled in zip(sorted(unfolded.images, key=key), sorted(folded.images, key=key)):
        s, t = int(image.slice), int(image.repetition)
        truth = written.scan.reference[s, t]
        got, folded_db = psnr(pixels(image), truth), psnr(pixels(zero_filled), truth)
        if mode == "interleaved" and t == 0:
            # the first repetition alone holds no calibration: it says so, and is the zero-filled image
            assert image.meta["ParallelImaging"] == "not applied: no coil maps yet"
            np.testing.assert_array_equal(pixels(image), pixels(zero_filled))
            continue
        reference_db = psnr(offline_cg_sense(written, raw, s, t), truth)
        assert abs(got - reference_db) <= 1.0, (mode, s, t, got, reference_db)
        assert got >= folded_db + 4.0, (mode, s, t, got, folded_db)
        assert image.meta["ReconMethod"] == "parallel imaging (CG-SENSE)"
        assert "parallel imaging" in image.meta["ImageComment"] and f"{mode} calibration" in image.meta["ParallelImaging"]
        assert zero_filled.meta["ReconMethod"].startswith("zero-filled")


def test_unaccelerated_data_gives_the_same_images_with_parallel_imaging_on_as_off(stream_host):
    scan = small_cine(slices=1, frames=3, coils=4, ny=32, nx=32)
    header = make_header(scan)
    assert header.encoding[0].parallelImaging is None
    auto = run_session("127.0.0.1", stream_host.port, header=header, items=acquisitions(scan),
                       config_file="cine_conventional", timeout=30)
    forced = run_session("127.0.0.1", stream_host.port, header=header, items=acquisitions(scan),
                         config_text=pipeline_with(parallel_imaging="on"), timeout=30)
    off = run_session("127.0.0.1", stream_host.port, header=header, items=acquisitions(scan),
                      config_text=pipeline_with(parallel_imaging="off"), timeout=30)
    assert len(auto.images) == len(forced.images) == len(off.images) == 3
    for a, f, o in zip(auto.images, forced.images, off.images):
        np.testing.assert_array_equal(a.data, o.data)
        np.testing.assert_array_equal(f.data, o.data)  # every line measured: nothing to unfold
        assert "ParallelImaging" not in a.meta and a.meta["ReconMethod"] == "zero-filled SENSE"
        assert f.meta["ParallelImaging"] == "not needed: no line missing"


def test_a_bad_parallel_imaging_property_is_refused_with_its_name(stream_host):
    scan = small_cine(slices=1, frames=1, coils=2, ny=16, nx=16)
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan), items=acquisitions(scan),
                         config_text=pipeline_with(parallel_imaging="grappa-please"), timeout=30)
    assert any("property 'parallel_imaging'" in t for t in result.texts + result.errors), (result.texts, result.errors)
    assert result.closed
