"""The same gadget files run the way Gadgetron 4.x runs them.

The test plays Gadgetron's part: for every ``<external>`` node of the
pipeline it listens on a port, launches ``python -m gadgetron PORT MODULE
TARGET`` (the ``gadgetron`` package's own launcher), sends CONFIG (id 2,
the node's ``<configuration>``), HEADER (id 3), the items and CLOSE, and
reads back what the module sends, using the ``gadgetron`` package's own
readers and writers. Like Gadgetron, it passes one node's output on as the
next node's input, so frames cross process boundaries as ``ReconData``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from gadgetron.external import constants, readers, writers
from gadgetron.types.recon_data import ReconData, read_recon_data, write_recon_data

import ismrmrd
from pipelines.pipeline_config import parse_pipeline
from simulator.acquire import acquisitions
from simulator.header import make_header
from tests.streams import direct_sense, images_by_key, small_cine

ROOT = Path(__file__).resolve().parents[1]


class _Sock:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"module closed the connection ({len(data)} of {n} bytes)")
            data += chunk
        return data

    def write(self, data) -> None:
        self.sock.sendall(bytes(data))


def _write_item(dest: _Sock, item) -> None:
    if isinstance(item, ismrmrd.Acquisition):
        writers.write_acquisition(dest, item)
    elif isinstance(item, ismrmrd.Image):
        writers.write_image(dest, item)
    elif isinstance(item, ReconData):
        write_recon_data(dest, item)
    else:
        raise TypeError(type(item))


def run_external(module: str, target: str, config: ET.Element, header_xml: bytes, items):
    """One Gadgetron external node: returns (items it sent back, errors (id 8), return code)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT), GADGETRON_EXTERNAL_LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "gadgetron", str(port), module, target], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listener.settimeout(60)
    conn, _ = listener.accept()
    listener.close()
    conn.settimeout(60)
    dest = _Sock(conn)
    received, errors = [], []
    import threading

    def receive() -> None:
        try:
            while True:
                (mid,) = constants.GadgetMessageIdentifier.unpack(dest.read(2))
                if mid == constants.GADGET_MESSAGE_CLOSE:
                    return
                if mid == constants.GADGET_MESSAGE_ERROR:
                    (n,) = constants.uint64.unpack(dest.read(8))
                    errors.append(dest.read(n).decode())
                elif mid == constants.GADGET_MESSAGE_ISMRMRD_ACQUISITION:
                    received.append(readers.read_acquisition(dest))
                elif mid == constants.GADGET_MESSAGE_ISMRMRD_IMAGE:
                    received.append(readers.read_image(dest))
                elif mid == constants.GADGET_MESSAGE_RECON_DATA:
                    received.append(read_recon_data(dest))
                else:
                    raise AssertionError(f"unexpected message {mid}")
        except EOFError:
            return

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    config_bytes = ET.tostring(config)
    try:
        dest.write(constants.GadgetMessageIdentifier.pack(constants.GADGET_MESSAGE_CONFIG))
        dest.write(constants.uint32.pack(len(config_bytes)) + config_bytes)
        dest.write(constants.GadgetMessageIdentifier.pack(constants.GADGET_MESSAGE_HEADER))
        dest.write(constants.uint32.pack(len(header_xml)) + header_xml)
        for item in items:
            _write_item(dest, item)
        dest.write(constants.GadgetMessageIdentifier.pack(constants.GADGET_MESSAGE_CLOSE))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the module stopped reading (it failed); its answer is still read below
    thread.join(60)
    conn.close()
    proc.wait(60)
    return received, errors, proc.returncode


def test_conventional_pipeline_as_gadgetron_externals():
    scan = small_cine(slices=2, frames=4, coils=4, ny=24, nx=20)
    header_xml = make_header(scan).toXML().encode()
    pipeline = parse_pipeline((ROOT / "pipelines" / "cine_conventional.xml").read_text())
    items = list(acquisitions(scan))
    for spec in pipeline.gadgets:
        items, errors, code = run_external(spec.module, spec.target, spec.config, header_xml, items)
        assert not errors and code == 0, (spec.label, errors)
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
    items, errors, code = run_external("gadgets.frames", "accumulate_frames", config,
                                       make_header(scan).toXML().encode(), list(acquisitions(scan)))
    assert items == []
    assert len(errors) == 1 and "time_dimension must be 'phase' or 'repetition'" in errors[0]
    assert code != 0
