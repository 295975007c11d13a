"""report.json and the console say what the numbers are (issue 18's small defects, one test each)."""
from __future__ import annotations

import json

import ismrmrd
import numpy as np

from simulator.client import StreamResult
from simulator.replay_report import fallback_summary, report_warnings
from simulator.replay import main as replay_main
from simulator.results import frame_latencies_ms
from tests.test_user_facing import write_undersampled_ismrmrd


def _image(frame: int, fallback: str | None = None, series: int = 1) -> ismrmrd.Image:
    im = ismrmrd.Image.from_array(np.ones((4, 4), np.float32), transpose=False)
    im.repetition, im.image_series_index = frame, series
    im.meta = {"Fallback": fallback} if fallback else {}
    return im


def test_fallback_reasons_add_up_to_the_count():
    """Reasons that differ only in figures are one kind; every kind is listed, so the counts add up."""
    images = [_image(t, f"model busy: its image expected in {2000 + 37 * t} ms > max_lag_ms (2000)") for t in range(30)]
    images += [_image(30 + t, f"no coil maps yet for slice {t % 4}") for t in range(6)]
    images += [_image(36 + t, "inference service down") for t in range(3)] + [_image(39, "model failed: boom")]
    images += [_image(40 + t) for t in range(4)]
    fb = fallback_summary(images)
    assert fb["count"] == 40 and fb["images"] == 44 and not fb["all"]
    assert sum(r["images"] for r in fb["reasons"]) == 40
    assert fb["reasons"][0]["images"] == 30 and fb["reasons"][0]["reason"].startswith("model busy: its image expected in 2000")
    report = {"series": {"1": {"name": "KGMgT", "fallbacks": fb, "model_ms_per_image": {"n": 0}}}, "frame_ms": 36}
    text = report_warnings(report)[0]
    assert "40 of 44 images are fallbacks" in text and "1 more for 1 other reasons" in text


def _lag_report(order: str, time_dimension: str, frames: int) -> dict:
    return {"order": order, "time_dimension": time_dimension, "frames_per_slice": frames, "frame_ms": 36.0,
            "series": {"1": {"name": "KGMgT", "fallbacks": {"count": 0}, "model_ms_per_image": {"n": 8, "p50": 2124.0}}}}


def test_lag_warning_only_for_real_time_cine():
    assert any("slower than real time" in w for w in report_warnings(_lag_report("realtime", "repetition", 20)))
    for report in (_lag_report("segmented", "phase", 20), _lag_report("realtime", "phase", 20),
                   _lag_report("realtime", "repetition", 1)):
        assert not any("slower than real time" in w for w in report_warnings(report)), report


def test_latency_is_never_negative_with_lookahead():
    """A pipeline without look-ahead timed with --lookahead 1: frame t's image arrives before frame t+1's
    readouts are sent; its latency counts from frame t's last readout, not a later one."""
    r = StreamResult()
    r.send_times = {(0, 0, 0): 1.000, (0, 0, 1): 1.036, (0, 0, 2): 1.072}
    r.images = [_image(0, series=0), _image(1, series=0), _image(2, series=0)]
    r.image_times = [1.010, 1.046, 1.080]
    lat = frame_latencies_ms(r, lookahead=1)
    assert min(lat) >= 0 and np.allclose(lat, [10.0, 10.0, 8.0])


def test_single_frame_undersampled_file_counts_its_frame(stream_host, tmp_path, capsys):
    path = tmp_path / "one.h5"
    write_undersampled_ismrmrd(path, frames=1)
    code = replay_main([str(path), "--port", str(stream_host.port), "--pipeline", "cine_conventional", "--out",
                        str(tmp_path / "o"), "--no-progress"])
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert code == 0 and rep["frames"] == rep["frames_expected"] == 1
    assert rep["series"]["0"]["frames"] == 1 and rep["series"]["0"]["scored"] == 0
    row = next(line for line in out.splitlines() if line.startswith("0 "))  # the table's series-0 row
    assert int(row[22:29]) == 1, row  # frames column (label padded to 22)


def test_separate_calibration_block_is_reported(stream_host, tmp_path, capsys):
    """A file with R=4 imaging lines and a 28-line calibration block sent as calibration-only readouts."""
    from simulator.acquire import acquisitions
    from simulator.header import make_header
    from simulator.scan import phantom_scan

    scan = phantom_scan("cine", ny=64, nx=32, frames=2, n_coils=2, seed=1)
    mask = np.zeros((2, 64), bool)
    mask[:, ::4] = True
    path = tmp_path / "calib.h5"
    d = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    d.write_xml_header(make_header(scan, accel=4.0, calib_lines=28).toXML())
    for a in acquisitions(scan, mask, calib_lines=(18, 46)):
        d.append_acquisition(a)
    d.close()
    code = replay_main([str(path), "--port", str(stream_host.port), "--pipeline", "cine_conventional", "--out",
                        str(tmp_path / "o"), "--no-progress"])
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert code == 0, capsys.readouterr()
    assert rep["acs_lines"] == 28


def test_ctrl_c_keeps_the_images_already_received(stream_host, tmp_path, monkeypatch, capsys):
    """A real SIGINT once the first image is back: sending stops, the host's images of the frames sent still
    arrive, and report.json and images.h5 are written with them (exit status 130, as for Ctrl-C)."""
    import os
    import signal
    import threading

    from simulator import replay_streams as replay_module

    first_image = threading.Event()
    original = replay_module.Progress.image

    def image(self, im):
        original(self, im)
        first_image.set()

    monkeypatch.setattr(replay_module.Progress, "image", image)

    def press_ctrl_c():
        if first_image.wait(60):
            os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    out = tmp_path / "o"
    code = replay_main(["cine", "--port", str(stream_host.port), "--pipeline", "cine_conventional", "--matrix", "32",
                        "--frames", "40", "--coils", "2", "--frame-ms", "150", "--out", str(out), "--no-progress"])
    presser.join(5)
    printed = capsys.readouterr()
    rep = json.loads((out / "report.json").read_text())
    assert code == 130 and rep["interrupted"], printed
    assert 1 <= rep["frames"] < 40 and rep["series"]["0"]["frames"] == rep["frames"]
    assert (out / "images.h5").exists()
    assert "interrupted" in printed.err and any("interrupted (Ctrl-C)" in w for w in rep["warnings"])


def test_to_file_writes_the_scan_as_an_ismrmrd_file_without_a_host(tmp_path, capsys):
    """`--to-file`: what replay would send, as a raw file for other clients (python-ismrmrd-server's, Gadgetron's)."""
    from simulator.readers import read_ismrmrd

    path = tmp_path / "scan.h5"
    assert replay_main(["cine", "--matrix", "32", "--frames", "3", "--coils", "2", "--accel", "4", "--mask",
                        "kt-gaussian", "--acs", "8", "--to-file", str(path), "--no-progress"]) == 0
    assert "readouts and the header" in capsys.readouterr().out
    back = read_ismrmrd(path)[0]
    assert back.frames == 3 and back.coils == 2 and back.acquired is not None  # undersampled, as it would be sent
    assert replay_main(["cine", "--no-progress"]) == 2
    assert "--pipeline NAME is required" in capsys.readouterr().err
