"""The same gadget files run the way Gadgetron 4.x runs them.

:mod:`pipelines.gadgetron.parent` plays Gadgetron's part: for every
``<external>`` node it listens on a port, launches ``python -m gadgetron
PORT MODULE TARGET`` (the ``gadgetron`` package's own launcher), sends
CONFIG (id 2), HEADER (id 3), the items and CLOSE, and reads back what the
module sends with the ``gadgetron`` package's own readers. Like Gadgetron,
it passes one node's output on as the next node's input, so frames cross
process boundaries as ``ReconData``.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import ismrmrd
import numpy as np

from pipelines.pipeline_config import parse_pipeline
from simulator.acquire import acquisitions
from pipelines.gadgetron.parent import run_external, run_pipeline_as_externals
from simulator.header import make_header
from tests.streams import direct_sense, images_by_key, small_cine

ROOT = Path(__file__).resolve().parents[1]


def test_conventional_pipeline_as_gadgetron_externals():
    scan = small_cine(slices=2, frames=4, coils=4, ny=24, nx=20)
    header_xml = make_header(scan).toXML().encode()
    pipeline = parse_pipeline((ROOT / "pipelines" / "cine_conventional.xml").read_text())
    items, errors = run_pipeline_as_externals(pipeline.gadgets, header_xml, acquisitions(scan))
    assert not errors
    assert len(items) == scan.slices * scan.frames
    assert all(isinstance(im, ismrmrd.Image) for im in items)
    assert [im.image_index for im in items] == list(range(1, 1 + len(items)))
    got = images_by_key(items)
    for (s, t), img in got.items():
        expected = direct_sense(scan.kspace[s, t], scan.kspace[s, 0], scan.recon_shape[1])
        np.testing.assert_allclose(img, expected, rtol=1e-4, atol=1e-4 * expected.max())
    np.testing.assert_allclose(items[0].position[:], scan.slice_positions_mm[0], atol=1e-5)


def test_failing_gadget_reaches_gadgetron_as_error_message():
    scan = small_cine(slices=1, frames=2, coils=2, ny=16, nx=16)
    config = ET.fromstring('<configuration><property name="time_dimension" value="heartbeat"/></configuration>')
    run = run_external("gadgets.frames", "accumulate_frames", config, make_header(scan).toXML().encode(),
                       list(acquisitions(scan)))
    assert run.items == []
    assert len(run.errors) == 1 and "time_dimension must be 'phase' or 'repetition'" in run.errors[0]
    assert run.returncode != 0
