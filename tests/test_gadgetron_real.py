"""The gadgets under a real Gadgetron 4.7.2: every shipped pipeline, failures, connect mode.

One Gadgetron (``pipelines.gadgetron.server``) serves this module on a free
loopback port with this venv's ``python`` first on its PATH; one in-process
``streamrecon gadget-server`` serves the connect-mode pipelines (rewritten to
free ports). Every shipped pipeline is sent the same scan three ways - to
the embedded host, to Gadgetron with the project's stream client (what
``streamrecon replay`` uses), and to Gadgetron with Gadgetron's own
``gadgetron_ismrmrd_client`` from an ISMRMRD file - and must give the same
images. Skipped, with the reason, only where no Gadgetron is installed
(``../shared/tools/gadgetron/install.sh /opt/gadgetron``; CI installs it).
"""
from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from models.masks import line_mask
from models.phantoms import brain_pair
from pipelines.gadget_server import GadgetServer, served_gadgets
from simulator.acquire import acquisitions, exam_acquisitions
from simulator.client import run_session
from pipelines.gadgetron.server import (CLIENT_RACE, missing_reason, read_images_h5, run_ismrmrd_client, start_gadgetron,
                                        tagged_processes)
from simulator.header import make_header
from simulator.writers import write_dataset
from pipelines.processes import free_port
from simulator.scan import scan_from_images
from tests.streams import small_cine

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
REASON = missing_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"real Gadgetron not available: {REASON}")

STALL_S = 2.0  # the peer-stall bound the Gadgetron nodes get here (STREAMRECON_PEER_STALL_S)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A private SGF-MRI reference store for both hosts (the default one is in the home folder)."""
    folder = tmp_path_factory.mktemp("references")
    mp = pytest.MonkeyPatch()
    mp.setenv("STREAMRECON_REFERENCE_STORE", str(folder))
    yield folder
    mp.undo()


def _connect_xml(text: str, ports: dict[str, int]) -> str:
    return re.sub(r'port="(\d+)"', lambda m: f'port="{ports[m.group(1)]}"', text)


@pytest.fixture(scope="module")
def connect_pipelines(tmp_path_factory):
    """The shipped ``*_connect.xml`` with their ports moved to free ones (same name, same gadgets)."""
    folder = tmp_path_factory.mktemp("connect")
    shipped = {p.name: p.read_text() for p in sorted(PIPELINES.glob("*_connect.xml"))}
    ports = {old: free_port() for text in shipped.values() for old in re.findall(r'<connect [^>]*port="(\d+)"', text)}
    for name, text in shipped.items():
        (folder / name).write_text(_connect_xml(text, ports))
    return folder


@pytest.fixture(scope="module")
def gadgetron(store, connect_pipelines, service):
    # the host operator's settings reach Gadgetron's Python nodes through its environment
    server = start_gadgetron({p.name: p.read_text() for p in connect_pipelines.glob("*.xml")},
                             env={"STREAMRECON_PEER_STALL_S": str(STALL_S), "STREAMRECON_REFERENCE_STORE": str(store),
                                  "STREAMRECON_INFERENCE_ENDPOINT": service})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gadget_server(connect_pipelines, store):
    server = GadgetServer(served_gadgets([connect_pipelines]))
    server.start_background()
    yield server
    server.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """``streamrecon infer-server`` (tiny weights) for the ``*_service.xml`` pipelines."""
    from tests.dl_support import start_service, stop, tiny_weights

    weights = tiny_weights(tmp_path_factory.mktemp("weights"))
    proc, endpoint = start_service(weights, models="kgmgt,sgfmri")
    yield endpoint
    stop(proc)


# ------------------------------------------------------------------------------------------ scans
N = 32


def cine_scan(order: str):
    """Small cine; gated (phase) for the KGMgT pipelines so no window falls back on timing alone."""
    scan = small_cine(slices=1, frames=4, coils=4, ny=N, nx=N, order_dim="phase" if order == "segmented" else "repetition")
    mask = line_mask("kt-gaussian", N, scan.frames, accel=2, acs=16, seed=0) if order == "segmented" else None
    header = make_header(scan, accel=2 if mask is not None else 1, calib_lines=16 if mask is not None else 0)
    items = list(acquisitions(scan, mask, order=order, calib_lines=(8, 24) if mask is not None else None))
    return header, items


def brain_exam():
    ref, tgt = brain_pair(N, seed=0)
    kw = dict(n_coils=4, seed=0, fov_mm=(220.0, 220.0, 5.0), frame_ms=1000.0, frame_of_reference_uid="2.25.77")
    scans = [scan_from_images(ref[None, None], name="brain_T1w", contrast=0, **kw),
             scan_from_images(tgt[None, None], name="brain_T2w", contrast=1, **kw)]
    mask = line_mask("equispaced", N, 1, accel=4, seed=0)
    return make_header(scans[1], n_contrasts=2), list(exam_acquisitions(scans, [None, mask]))


def scan_for(pipeline: str):
    if pipeline.startswith("sgfmri"):
        return brain_exam()
    return cine_scan("segmented" if pipeline.startswith("kgmgt") else "realtime")


SHIPPED = sorted(p.stem for p in PIPELINES.glob("*.xml"))


def _key(item) -> tuple:
    if isinstance(item, ismrmrd.Image):
        return (int(item.image_series_index), int(item.slice), int(item.contrast), int(item.phase),
                int(item.repetition), int(item.image_index))
    return (int(item.idx.slice), int(item.idx.contrast), int(item.idx.kspace_encode_step_1), int(item.scan_counter))


def _arrays(items) -> list[tuple[tuple, np.ndarray]]:
    return [(_key(i), np.asarray(i.data)) for i in sorted(items, key=_key)]


def assert_same(got, expected, what: str) -> None:
    got, expected = _arrays(got), _arrays(expected)
    assert [k for k, _ in got] == [k for k, _ in expected], what
    for (key, a), (_, b) in zip(got, expected):
        scale = float(np.abs(b).max()) or 1.0
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{what}: {key}")


def _write_h5(path: Path, header, items) -> None:
    write_dataset(path, header, items)


def _results(result) -> list:
    return list(result.images) + [o for o in result.other if isinstance(o, ismrmrd.Acquisition)]


# ------------------------------------------------------------------------------------------ parity
# Gadgetron's own client is run on the execute-mode pipelines; their _service, _triton and _connect
# variants differ only behind the gadgets (inference backend, process model), which the project's
# stream client already checks against the embedded host, and each client run starts every node's
# Python process again (the suite's time on 2 cores).
THROUGH_GADGETRON_CLIENT = {"cine_conventional", "kgmgt_cine", "kgmgt_cine_causal", "sgfmri_multicontrast",
                            "passthrough", "ingest_sink"}
@pytest.mark.parametrize("pipeline", SHIPPED)
def test_every_shipped_pipeline_gives_the_embedded_hosts_images_under_gadgetron(
        pipeline, gadgetron, gadget_server, service, stream_host, tmp_path, monkeypatch):
    from tests.dl_support import operate

    operate(monkeypatch, stream_host, inference_endpoint=service)  # Gadgetron got it in its environment
    header, items = scan_for(pipeline)
    how = {"config_file": f"{pipeline}.xml"}
    embedded = run_session("127.0.0.1", stream_host.port, header=header, items=items, timeout=60, **how)
    assert not embedded.errors and not embedded.texts and embedded.closed, (embedded.errors, embedded.texts)
    if pipeline != "ingest_sink":
        assert _results(embedded), f"{pipeline}: the embedded host returned nothing"

    data = tmp_path / "scan.h5"
    _write_h5(data, header, items)
    name = f"{pipeline}.xml"
    streamed = run_session("127.0.0.1", gadgetron.port, header=header, items=items, timeout=90, **how)
    log = gadgetron.log_tail()
    assert streamed.closed and not streamed.errors and not streamed.texts and not streamed.timed_out, \
        (streamed.errors, streamed.texts, log)
    assert_same(_results(streamed), _results(embedded), f"{pipeline} via the stream client")
    if pipeline not in THROUGH_GADGETRON_CLIENT:
        assert _wait_children_gone(gadgetron) == [], f"{pipeline}: processes outlived the sessions"
        return
    # passthrough sends acquisitions back, which makes the client abort: no retry can change that
    client = run_ismrmrd_client(gadgetron, data, tmp_path / "out.h5", config=name, retry_race=not embedded.other)
    if embedded.other:  # passthrough: gadgetron_ismrmrd_client aborts on acquisitions coming back (id 1008)
        # Its reader thread stops at the first acquisition (id 1008) and closes the socket; which message
        # is printed first depends on whether its writer thread was still writing (then EBADF).
        assert client.returncode != 0 and ("Unknown Message ID" in client.stderr or CLIENT_RACE in client.stderr), \
            client.stderr
    else:
        assert client.returncode == 0, f"{client.tries} tries: " + client.stdout[-2000:] + client.stderr[-2000:]
        assert_same(read_images_h5(tmp_path / "out.h5"), embedded.images, f"{pipeline} via gadgetron_ismrmrd_client")
    assert _wait_children_gone(gadgetron) == [], f"{pipeline}: processes outlived the sessions"


def test_connect_pipelines_mirror_their_execute_pipelines_and_agree_on_ports():
    served = served_gadgets([PIPELINES])  # raises on a port given to two gadgets
    assert {(g.spec.module, g.spec.target) for g in served.values()} >= {("gadgets.cine_kgmgt", "reconstruct")}
    for connect in sorted(PIPELINES.glob("*_connect.xml")):
        execute = PIPELINES / connect.name.replace("_connect", "")
        nodes = {}
        for path in (connect, execute):
            root = ET.fromstring(path.read_text())
            nodes[path] = [(e.find("execute").attrib, ET.tostring(e.find("configuration")))
                           for e in root.iter("external")]
            if path == connect:  # Gadgetron acts on the first action child: connect must come first
                assert all(list(e)[0].tag == "connect" for e in root.iter("external")), connect.name
        assert nodes[connect] == nodes[execute], connect.name


def test_streamrecon_replay_through_gadgetron_execute_and_connect(gadgetron, gadget_server, tmp_path, capsys):
    """The issue's step: ``streamrecon replay cine --port GT --pipeline ...`` gets every frame back."""
    from simulator.replay import main as replay

    for pipeline in ("cine_conventional.xml", "kgmgt_cine_connect.xml"):
        out = tmp_path / pipeline
        code = replay(["cine", "--port", str(gadgetron.port), "--pipeline", pipeline, "--frames", "4", "--matrix",
                       "32", "--coils", "4", "--accel", "2", "--mask", "kt-gaussian", "--acs", "16", "--order",
                       "segmented", "--lookahead", "1", "--timeout", "60", "--no-progress", "--out", str(out)])
        report = json.loads((out / "report.json").read_text())
        assert code == 0 and report["frames"] == 4 and report["host_messages"] == [], (pipeline, report, capsys.readouterr())
        assert all(s["frames"] == 4 for s in report["series"].values()), report["series"]


# ------------------------------------------------------------------------------------------ failures
def _failing_chain(position: int, count: int) -> str:
    """Three nodes passing acquisitions on; the one at ``position`` raises after ``count`` items."""
    nodes = []
    for i in range(3):
        target = ("tests.gadgets_for_tests", "fail_after") if i == position else ("gadgets.passthrough", "pass_through")
        nodes.append(f'<external name="N{i}"><execute name="{target[0]}" target="{target[1]}" type="python"/>'
                     f'<configuration><property name="count" value="{count}"/></configuration></external>')
    return ('<?xml version="1.0"?><configuration><version>2</version>'
            '<readers><reader><dll>gadgetron_core_readers</dll><classname>AcquisitionReader</classname></reader></readers>'
            '<writers><writer><dll>gadgetron_core_writers</dll><classname>AcquisitionWriter</classname></writer></writers>'
            f'<stream>{"".join(nodes)}</stream></configuration>')


def _gadgetron_children(gadgetron) -> list:
    """Per-connection Gadgetron processes and ``python -m gadgetron`` nodes still alive."""
    nodes = tagged_processes(gadgetron.tag)
    workers = [p for p in tagged_processes(gadgetron.tag, marker="bin/gadgetron") if p[0] != gadgetron.process.pid]
    return nodes + workers


def _wait_children_gone(gadgetron, seconds: float = 10.0) -> list:
    deadline = time.monotonic() + seconds
    while (left := _gadgetron_children(gadgetron)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.parametrize("position", [0, 1, 2], ids=["first", "middle", "last"])
def test_a_failing_gadget_reaches_the_client_and_ends_the_session_every_time(position, gadgetron):
    # 16 MB of readouts: more than the socket buffers hold, so the nodes
    # upstream of the failure do block on a peer that stopped reading.
    scan = small_cine(slices=1, frames=16, coils=16, ny=64, nx=64)
    header, items = make_header(scan), list(acquisitions(scan))
    xml = _failing_chain(position, count=40)
    for repeat in range(5):
        result = run_session("127.0.0.1", gadgetron.port, header=header, items=items, config_text=xml, timeout=60)
        reported = result.texts + result.errors
        assert any("deliberate failure after 40 items" in t for t in reported), (repeat, reported, gadgetron.log_tail())
        # the host ended it (its CLOSE), not our 60 s socket timeout: no wall-clock figure is asserted
        assert result.closed and not result.timed_out, (repeat, result.receive_error)
        assert _wait_children_gone(gadgetron) == [], f"repeat {repeat}: processes outlived the session"


def test_a_failing_served_gadget_is_reported_in_connect_mode_and_the_server_serves_on(gadgetron, gadget_server,
                                                                                       connect_pipelines):
    xml = (connect_pipelines / "cine_conventional_connect.xml").read_text()
    xml = xml.replace('<property name="combine" value="sense"/>', '<property name="combine" value="bogus"/>')
    assert "bogus" in xml
    header, items = cine_scan("realtime")
    for repeat in range(2):
        result = run_session("127.0.0.1", gadgetron.port, header=header, items=items, config_text=xml, timeout=60)
        assert any("property 'combine'" in t for t in result.texts + result.errors), (result.texts, result.errors)
        assert result.closed and not result.timed_out
    # the server still serves the next scan
    good = run_session("127.0.0.1", gadgetron.port, header=header, items=items,
                       config_file="cine_conventional_connect.xml", timeout=60)
    assert len(good.images) == 4 and not good.texts
