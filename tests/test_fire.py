"""The shipped pipelines as python-ismrmrd-server modules, under that server itself (unmodified).

The server (``../shared/tools/python-ismrmrd-server/main.py``, MIT) runs in
its own process on a loopback port with the repository and
``pipelines/fire`` on its PYTHONPATH, so it imports ``streamrecon_<pipeline>``
by the config name like any of its own modules; its ``client.py`` sends an
ISMRMRD file and writes what came back.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest

from pipelines.processes import free_port, stop, wait_port

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT.parent / "shared" / "tools" / "python-ismrmrd-server"
FRAMES, COILS, MATRIX = 6, 4, 48


def _server_problem() -> str | None:
    if not (SERVER / "main.py").is_file():
        return f"python-ismrmrd-server not found at {SERVER}"
    try:
        import matplotlib  # noqa: F401  (the server imports its invertcontrast module, which imports it)
    except ImportError:
        return "matplotlib is not installed (python-ismrmrd-server imports it): pip install '.[test]'"
    return None


pytestmark = pytest.mark.skipif(_server_problem() is not None, reason=str(_server_problem()))


@pytest.fixture(scope="module")
def fire_server(tmp_path_factory):
    """python-ismrmrd-server's main.py, unmodified, on a free loopback port; yields (port, log path)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("fire") / "server.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "pipelines" / "fire")]),
               STREAMRECON_CPU_THREADS="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "main.py", "-p", str(port), "-H", "127.0.0.1"], cwd=SERVER, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, timeout=60)
        yield port, log_path
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def gated_cine_file(tmp_path_factory) -> Path:
    """A small gated cine (kt-Gaussian 4x) as an ISMRMRD file: the gated model series has no lag bound,
    so every model image is the model's even on a loaded machine."""
    from models.masks import line_mask
    from simulator.scan import phantom_scan
    from simulator.writers import write_ismrmrd

    scan = phantom_scan("cine", ny=MATRIX, nx=MATRIX, frames=FRAMES, n_coils=COILS, time_dimension="phase")
    path = tmp_path_factory.mktemp("fire_data") / "cine.h5"
    write_ismrmrd(path, scan, line_mask("kt-gaussian", scan.ny, scan.frames, accel=4, acs=12, seed=0))
    return path


def _client(port: int, data: Path, config: str, workdir: Path, parameters: dict | None = None) -> tuple[Path, str]:
    """python-ismrmrd-server's client.py: ``data`` to ``config``; returns (output file, its log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if parameters is not None:  # the client sends <config>.json from its folder as the config JSON
        (workdir / f"{config}.json").write_text(json.dumps({"parameters": parameters}))
    out = workdir / "out.h5"
    run = subprocess.run([sys.executable, str(SERVER / "client.py"), "-a", "127.0.0.1", "-p", str(port), "-c", config,
                          "-o", str(out), str(data)], cwd=workdir, capture_output=True, text=True, timeout=240)
    return out, run.stdout + run.stderr


def _images(path: Path) -> dict[int, list[ismrmrd.Image]]:
    with h5py.File(path, "r") as f:
        group = list(f.keys())[0]
        names = [k for k in f[group].keys() if k.startswith("image")]
    dset = ismrmrd.Dataset(str(path), group, create_if_needed=False)
    try:
        images = [dset.read_image(n, i) for n in names for i in range(dset.number_of_images(n))]
    finally:
        dset.close()
    out: dict[int, list[ismrmrd.Image]] = {}
    for im in images:
        out.setdefault(int(im.image_series_index), []).append(im)
    return out


def _meta(image: ismrmrd.Image) -> dict:
    text = image.attribute_string
    return dict(ismrmrd.Meta.deserialize(text.decode() if isinstance(text, bytes) else text))


def test_unmodified_server_runs_the_kgmgt_cine_module_and_returns_model_images(fire_server, gated_cine_file, tmp_path):
    port, log_path = fire_server
    out, log = _client(port, gated_cine_file, "streamrecon_kgmgt_cine", tmp_path / "int16")
    series = _images(out)
    assert sorted(series) == [0, 1], (series.keys(), log[-2000:], log_path.read_text()[-3000:])
    for index, name in ((0, None), (1, "KGMgT")):
        images = series[index]
        assert len(images) == FRAMES
        for im in images:
            meta = _meta(im)
            assert im.data.dtype == np.int16 and 0 < im.data.max() <= 4095
            assert meta["DataRole"] == "Image"
            assert float(meta["WindowWidth"]) > 0 and float(meta["WindowCenter"]) > 0
            assert meta["SeriesDescription"] == meta["ImageSeriesDescription"]
            assert "STREAMRECON" in meta["ImageProcessingHistory"]
            if name:
                assert meta["Model"] == name and "Fallback" not in meta, meta
                assert meta["SeriesDescription"] == name
    # The model series is the model's own picture, not a copy of the conventional one.
    model = np.stack([np.asarray(im.data, np.float32) for im in series[1]])
    conventional = np.stack([np.asarray(im.data, np.float32) for im in series[0]])
    assert np.abs(model - conventional).mean() > 1.0


def test_float_output_on_request_and_errors_reach_the_scanner(fire_server, gated_cine_file, tmp_path):
    port, log_path = fire_server
    out, log = _client(port, gated_cine_file, "streamrecon_cine_conventional", tmp_path / "float",
                       parameters={"output": "float"})
    images = _images(out)[0]
    assert len(images) == FRAMES and all(im.data.dtype == np.float32 for im in images), log[-2000:]
    assert _meta(images[0])["DataRole"] == "Image"

    # A request the module cannot honour: an ERROR text naming it, then the server's CLOSE.
    _client(port, gated_cine_file, "streamrecon_cine_conventional", tmp_path / "bad", parameters={"output": "rgb"})
    server_log = log_path.read_text()
    assert "parameters.output 'rgb'" in server_log


def test_a_non_cartesian_scan_is_refused_in_one_text(fire_server):
    """Through the project's own stream client: TEXT 'ERROR ...' naming the trajectory, then CLOSE, no images."""
    from simulator.client import run_session
    from simulator.header import make_header
    from simulator.scan import phantom_scan

    port, _ = fire_server
    scan = phantom_scan("cine", ny=32, nx=32, frames=2, n_coils=2)
    xml = make_header(scan).toXML().replace("<trajectory>cartesian</trajectory>", "<trajectory>radial</trajectory>")
    result = run_session("127.0.0.1", port, header=xml, items=[], config_file="streamrecon_cine_conventional",
                         timeout=60)
    assert result.closed and not result.images
    assert any(t.startswith("ERROR") and "radial" in t for t in result.texts), result.texts


def test_every_shipped_pipeline_has_a_fire_module():
    """Every pipeline a scanner could ask for has its module; only Gadgetron's connect mode and the
    test pipelines have none (connect mode attaches to a Gadgetron gadget-server)."""
    from pipelines.pipeline_config import pipeline_names

    modules = {p.stem.removeprefix("streamrecon_") for p in (ROOT / "pipelines" / "fire").glob("streamrecon_*.py")}
    wanted = {n for n in pipeline_names() if not n.endswith("_connect") and n not in ("ingest_sink", "passthrough")}
    assert modules == wanted


def test_scores_against_a_third_party_pipeline_come_with_a_warning(fire_server, tmp_path, capsys):
    """The reference server's own invertcontrast module sends inverted int16 0..4095 images: replay scores them
    (PSNR far below 0 dB), and says the number is no quality figure."""
    from simulator.replay import main as replay_main

    port, _ = fire_server
    out = tmp_path / "inv"
    replay_main(["cine", "--port", str(port), "--pipeline", "invertcontrast", "--matrix", "32", "--frames", "3",
                 "--coils", "2", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["series"]["0"]["frames"] == 3 and report["series"]["0"]["psnr"] < 0
    assert report["series"]["0"]["intensity_ratio"] > 100
    assert any("is not a quality figure here" in w for w in report["warnings"])
    assert "WARNING: series 0" in printed and "not a quality figure" in printed
