"""ISMRMRD header versions: the simulator writes what Gadgetron 4.7 requires; the embedded host takes any."""
from __future__ import annotations

import logging

import pytest

from pipelines.protocol import ISMRMRD_HEADER_VERSION
from simulator.acquire import acquisitions
from simulator.client import run_session
from simulator.header import make_header
from tests.streams import small_cine


def test_the_simulator_writes_the_version_ismrmrd_1_14_requires():
    assert ISMRMRD_HEADER_VERSION == 14
    assert "<version>14</version>" in make_header(small_cine(slices=1, frames=1, coils=2)).toXML()


@pytest.mark.parametrize("version", [1, 2, None])
def test_the_embedded_host_accepts_other_versions_and_says_so(version, stream_host, caplog):
    caplog.set_level(logging.INFO, logger="pipelines.session")
    scan = small_cine(slices=1, frames=2, coils=2, ny=16, nx=16)
    header = make_header(scan)
    header.version = version
    result = run_session("127.0.0.1", stream_host.port, header=header, items=acquisitions(scan),
                         config_file="cine_conventional.xml", timeout=30)
    assert len(result.images) == 2 and not result.texts and result.closed
    assert any(f"accepted ISMRMRD header version {version}" in r.getMessage() for r in caplog.records)
