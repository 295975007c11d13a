"""Hostile and broken input: each refused with a message, and the server keeps serving."""
from __future__ import annotations

import io
import socket
import struct
import time

import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolSerializer

from simulator.acquire import acquisitions
from simulator.client import run_session
from simulator.fuzz import exchange
from simulator.header import make_header
from tests.streams import small_cine


@pytest.fixture(scope="module")
def scan():
    return small_cine(slices=1, frames=3, coils=4, ny=16, nx=16)


def _bytes(*items) -> bytes:
    buf = io.BytesIO()
    ser = ProtocolSerializer(buf)
    for item in items:
        ser.serialize(item)
    return buf.getvalue()


def _exchange(port: int, payload: bytes, *, half_close: bool = True, timeout: float = 20.0):
    """Send raw bytes, then read the host's answer to the end: (texts, closed, images)."""
    return exchange(port, payload, timeout, half_close)


def _good_session_still_works(port: int, scan) -> None:
    result = run_session("127.0.0.1", port, header=make_header(scan), items=acquisitions(scan),
                         config_file="cine_conventional")
    assert result.closed and len(result.images) == scan.frames and not result.texts


def _prefix(scan) -> bytes:
    return _bytes(ConfigFile("cine_conventional"), make_header(scan))


CASES = {
    "unknown pipeline": (lambda s: _bytes(ConfigFile("no_such_pipeline")), "unknown pipeline 'no_such_pipeline'"),
    "path in pipeline name": (lambda s: _bytes(ConfigFile("../setup.cfg")), "not a plain file name"),
    "C++ gadget node": (lambda s: _bytes(ConfigText(
        "<configuration><version>2</version><stream><gadget><name>Acc</name><dll>gadgetron_mricore</dll>"
        "<classname>AccumulatorGadget</classname></gadget></stream></configuration>")), "C++ <gadget> 'AccumulatorGadget'"),
    "unknown module": (lambda s: _bytes(ConfigText(
        "<configuration><version>2</version><stream><external><execute name=\"gadgets.nope\" target=\"x\" "
        "type=\"python\"/></external></stream></configuration>")), "unknown gadget module 'gadgets.nope'"),
    "module outside allowed packages": (lambda s: _bytes(ConfigText(
        "<configuration><version>2</version><stream><external><execute name=\"os\" target=\"system\" "
        "type=\"python\"/></external></stream></configuration>")), "not in the allowed packages"),
    "missing target": (lambda s: _bytes(ConfigText(
        "<configuration><version>2</version><stream><external><execute name=\"gadgets.frames\" "
        "target=\"no_such_gadget\" type=\"python\"/></external></stream></configuration>")), "has no target 'no_such_gadget'"),
    "pipeline not XML": (lambda s: _bytes(ConfigText("<configuration><version>2")), "not well-formed XML"),
    "header not ISMRMRD XML": (lambda s: _bytes(ConfigFile("cine_conventional")) + struct.pack("<HI", 3, 13) + b"<notismrmrd/>",
                               "not a valid ISMRMRD XML header"),
    "header length over the limit": (lambda s: _bytes(ConfigFile("cine_conventional")) + struct.pack("<HI", 3, 2**31),
                                     "exceeds the limit"),
    "unknown message id": (lambda s: _prefix(s) + struct.pack("<H", 777), "unknown message id 777"),
    "data before config": (lambda s: _bytes(make_header(s)), "expected CONFIG_FILE or CONFIG_TEXT"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_with_text_and_close(stream_host, scan, case):
    make, expected = CASES[case]
    texts, closed, images = _exchange(stream_host.port, make(scan))
    assert closed, f"{case}: no CLOSE"
    assert any(expected in t for t in texts), f"{case}: {texts}"
    _good_session_still_works(stream_host.port, scan)


def test_huge_acquisition_claim_refused_without_allocation(stream_host, scan):
    acq = next(acquisitions(scan))
    head = ismrmrd.AcquisitionHeader.from_buffer_copy(acq.getHead())
    head.number_of_samples = 60000
    head.active_channels = head.available_channels = 1000  # 480 MB of samples claimed
    payload = _prefix(scan) + struct.pack("<H", 1008) + bytes(head)
    texts, closed, _ = _exchange(stream_host.port, payload)
    assert closed and any("exceeds the limit" in t for t in texts), texts
    _good_session_still_works(stream_host.port, scan)


def test_counts_disagreeing_with_data_are_caught(stream_host, scan):
    """Header claims twice the samples the readout carries: the stream desynchronises and is refused."""
    acqs = list(acquisitions(scan))
    good = _bytes(*acqs[:5])
    head = ismrmrd.AcquisitionHeader.from_buffer_copy(acqs[5].getHead())
    head.number_of_samples *= 2
    lying = struct.pack("<H", 1008) + bytes(head) + acqs[5].data.tobytes()  # half the data it claims
    rest = _bytes(*acqs[6:12])
    texts, closed, images = _exchange(stream_host.port, _prefix(scan) + good + lying + rest)
    assert closed and texts, "expected a refusal"
    assert any("unknown message id" in t or "truncated" in t or "samples" in t for t in texts), texts
    # The first frame's readouts that did arrive still yield an image.
    assert len(images) >= 1
    _good_session_still_works(stream_host.port, scan)


def test_channel_count_disagreeing_with_header_is_named(stream_host, scan):
    acqs = list(acquisitions(scan))
    odd = ismrmrd.Acquisition.from_array(np.zeros((3, acqs[0].number_of_samples), np.complex64))
    odd.idx.kspace_encode_step_1 = 1
    texts, closed, images = _exchange(stream_host.port, _prefix(scan) + _bytes(*acqs[:20], odd))
    assert closed and any("3 channels" in t and "4" in t for t in texts), texts
    # Frame 0 was complete before the bad readout, frame 1 partial: both still imaged.
    assert len(images) == 2


def test_truncated_message(stream_host, scan):
    acqs = list(acquisitions(scan))
    data = _bytes(*acqs[:20])
    texts, closed, images = _exchange(stream_host.port, _prefix(scan) + data[:-100])
    assert closed and any("truncated" in t for t in texts), texts
    assert len(images) == 2  # frame 0 complete, frame 1 partial: both still reconstructed
    _good_session_still_works(stream_host.port, scan)


def test_missing_close_is_reported_but_images_delivered(stream_host, scan):
    texts, closed, images = _exchange(stream_host.port, _prefix(scan) + _bytes(*acquisitions(scan)))
    assert closed and len(images) == scan.frames
    assert any("without sending CLOSE" in t for t in texts)


def test_client_vanishing_mid_stream(stream_host, scan):
    acqs = list(acquisitions(scan))
    sock = socket.create_connection(("127.0.0.1", stream_host.port))
    sock.sendall(_prefix(scan) + _bytes(*acqs[:10]))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST, like a scanner losing the link
    time.sleep(0.2)
    _good_session_still_works(stream_host.port, scan)


def test_gadget_exception_reaches_peer_and_frames_before_it_survive(stream_host, scan):
    xml = ("<configuration><version>2</version><stream>"
           "<external><execute name=\"gadgets.frames\" target=\"accumulate_frames\" type=\"python\"/></external>"
           "<external><execute name=\"tests.gadgets_for_tests\" target=\"fail_after\" type=\"python\"/>"
           "<configuration><property name=\"count\" value=\"2\"/></configuration></external>"
           "<external><execute name=\"gadgets.conventional\" target=\"reconstruct\" type=\"python\"/></external>"
           "<external><execute name=\"tests.gadgets_for_tests\" target=\"ImageCounter\" type=\"python\"/></external>"
           "<external><execute name=\"gadgets.images\" target=\"emit_images\" type=\"python\"/></external>"
           "</stream></configuration>")
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan), items=acquisitions(scan), config_text=xml)
    assert result.closed
    assert any("deliberate failure after 2 items" in t for t in result.texts), result.texts
    assert len(result.images) == 2
    assert [im.meta["SeenByCounter"] for im in result.images] == ["1", "2"]
    _good_session_still_works(stream_host.port, scan)
