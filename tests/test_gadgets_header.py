"""One rule each for the time dimension and readout oversampling (gadgets.header), on real headers.

Real headers: ISMRMRD's own example headers (tests/fixtures/headers, a Siemens
Avanto header among them) and the ISMRMRD files the simulator writes (the
layout Siemens' converter gives an iPAT scan, plain cine files). The gadgets
and the simulator's file reader answer from the same functions, and the
images a pipeline makes do not depend on which counter a single-frame
header's rule picks.
"""
from __future__ import annotations

from pathlib import Path

import ismrmrd
import ismrmrd.xsd
import numpy as np
import pytest

from gadgets.header import oversampling_factor, time_dimension
from simulator.acquire import acquisitions, exam_acquisitions
from simulator.client import run_session
from simulator.header import make_header
from simulator.readers import read_ismrmrd
from simulator.scan import phantom_scan
from simulator.siemens_layout import write_siemens_pi
from simulator.writers import write_dataset, write_ismrmrd

HEADERS = Path(__file__).resolve().parent / "fixtures" / "headers"


def _header(name: str) -> ismrmrd.xsd.ismrmrdHeader:
    return ismrmrd.xsd.CreateFromDocument((HEADERS / name).read_text())


def _file_header(path: Path) -> ismrmrd.xsd.ismrmrdHeader:
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        xml = dset.read_xml_header()
    finally:
        dset.close()
    return ismrmrd.xsd.CreateFromDocument(xml.decode() if isinstance(xml, bytes) else xml)


def test_siemens_example_header_is_2x_oversampled_single_frame():
    for name in ("ismrmrd_example.xml", "ismrmrd_example_extended.xml"):
        header = _header(name)
        assert oversampling_factor(header) == 2.0  # 600 mm encoded over 300 mm recon
        assert time_dimension(header) == "repetition"  # no phase limit: no cardiac phases declared


def test_minimal_header_has_no_oversampling():
    header = _header("minimal.xml")
    assert oversampling_factor(header) == 1.0 and time_dimension(header) == "repetition"


def test_override_wins_and_is_checked():
    header = _header("minimal.xml")
    assert time_dimension(header, "phase") == "phase"
    with pytest.raises(ValueError, match="time_dimension must be"):
        time_dimension(header, "heartbeat")


@pytest.mark.parametrize("time_dim, frames", [("phase", 4), ("repetition", 4), ("repetition", 1)])
def test_written_files_read_back_by_the_same_rules(tmp_path, time_dim, frames):
    scan = phantom_scan("cine", ny=24, nx=20, frames=frames, n_coils=2, time_dimension=time_dim)
    path = tmp_path / "scan.h5"
    write_ismrmrd(path, scan)
    header = _file_header(path)
    assert time_dimension(header) == time_dim
    assert oversampling_factor(header) == scan.readout_oversampling == 2
    [back] = read_ismrmrd(path)
    assert back.time_dimension == time_dim and back.readout_oversampling == 2 and back.frames == frames


def test_siemens_layout_file(tmp_path):
    path = tmp_path / "pi.h5"
    write_siemens_pi(path, "interleaved", matrix=32, coils=2, slices=1, repetitions=3)
    header = _file_header(path)
    assert time_dimension(header) == "repetition" and oversampling_factor(header) == 2.0
    [back] = read_ismrmrd(path)
    assert back.frames == 3 and back.readout_oversampling == 2


def test_interpolated_recon_matrix_is_not_oversampling(tmp_path):
    """A recon matrix of half the readout samples over the same field of view is a coarser recon, not 2x
    oversampling: the field-of-view rule (ISMRMRD, Gadgetron) keeps every sample; counting samples would crop."""
    scan = phantom_scan("cine", ny=24, nx=20, frames=2, n_coils=2, readout_oversampling=2)
    path = tmp_path / "scan.h5"
    header = make_header(scan)
    header.encoding[0].reconSpace.fieldOfView_mm.x = header.encoding[0].encodedSpace.fieldOfView_mm.x
    header.encoding[0].reconSpace.matrixSize.x = scan.kx_encoded // 2
    write_dataset(path, header, acquisitions(scan))
    assert oversampling_factor(_file_header(path)) == 1.0
    [back] = read_ismrmrd(path)
    assert back.readout_oversampling == 1


def test_header_and_counters_that_disagree_are_refused(tmp_path):
    scan = phantom_scan("cine", ny=24, nx=20, frames=3, n_coils=2, time_dimension="phase")
    path = tmp_path / "scan.h5"
    header = make_header(scan)
    header.encoding[0].encodingLimits.phase.maximum = 0  # phases counted, none declared
    write_dataset(path, header, acquisitions(scan))
    with pytest.raises(ValueError, match="phase counter"):
        read_ismrmrd(path)


def test_single_frame_images_do_not_depend_on_the_time_counter(stream_host):
    """The rule changed the gadgets' answer for a header with neither limit (was "phase", now "repetition"):
    a single-frame exam gives bit-identical images either way."""
    ref, tgt = phantom_scan("brain", ny=32, n_coils=4)
    header = make_header(tgt, n_contrasts=2)
    assert time_dimension(header) == "repetition"
    items = list(exam_acquisitions([ref, tgt]))
    images = {}
    for prop in ("", '<property name="time_dimension" value="phase"/>'):
        config = (Path(__file__).resolve().parents[1] / "pipelines" / "cine_conventional.xml").read_text()
        anchor = '<property name="trigger_on_counter" value="true"/>'
        assert anchor in config
        config = config.replace(anchor, anchor + prop)
        result = run_session("127.0.0.1", stream_host.port, header=header, items=items, config_text=config)
        assert result.closed and not result.texts and not result.errors
        images[prop] = [np.asarray(im.data) for im in result.images]
    assert len(images[""]) == 2
    for a, b in zip(*images.values()):
        np.testing.assert_array_equal(a, b)
