"""A site's own data as sources: the shared Sunnybrook file, DICOM series folders, every shared file.

DICOM series folders are made by the project's own DICOM writer from a
replay (what a site's viewer would hold) and read back; geometry
(PixelSpacing, positions, orientation) and TriggerTime survive the round
trip, and ``dciodvfy`` (Debian dicom3tools) finds no error in the cine files.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from simulator.replay import main as replay_main
from simulator.sources import load_source, split_selector

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SUNNYBROOK = DATA / "cine" / "sunnybrook_sax_cine.h5"
needs_data = pytest.mark.skipif(not SUNNYBROOK.is_file(), reason=f"shared data not found at {DATA}")


def _replay(argv, capsys):
    code = replay_main(argv + ["--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_selector_splits_only_after_an_existing_path(tmp_path):
    f = tmp_path / "a.h5"
    f.write_bytes(b"x")
    assert split_selector(f"{f}:SCD1:4") == (str(f), ["SCD1", "4"])
    assert split_selector(str(f)) == (str(f), [])
    assert split_selector("cine") == ("cine", [])


@needs_data
def test_sunnybrook_file_is_a_source_with_its_own_geometry():
    scan = load_source(f"{SUNNYBROOK}:SCD0000501:4", n_coils=2, max_frames=4)[0]
    assert scan.frames == 4 and scan.recon_shape == (256, 256)
    np.testing.assert_allclose(scan.fov_mm[:2], (256 * 1.3672, 256 * 1.3672), rtol=1e-4)
    assert scan.slice_positions_mm[0, 2] == pytest.approx(85.84, abs=0.01)
    np.testing.assert_allclose(scan.trigger_times_ms, [10, 44, 78, 112])
    assert scan.frame_ms == pytest.approx(34.0)
    default = load_source(str(SUNNYBROOK), n_coils=2, max_frames=2)[0]
    assert any("SCD0000101" in n for n in default.notes) and any("slice 6 of 12" in n for n in default.notes)
    with pytest.raises(ValueError, match="SCD9"):
        load_source(f"{SUNNYBROOK}:SCD9")
    with pytest.raises(ValueError, match="slice 40 does not exist"):
        load_source(f"{SUNNYBROOK}:SCD0000501:40")


@needs_data
@pytest.mark.parametrize("path", sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*")
                                        if p.is_file() and not p.name.endswith((".txt", ".md"))) if DATA.is_dir() else [])
def test_every_shared_data_file_is_a_source(path):
    scans = load_source(str(DATA / path), n_coils=2, max_frames=2)
    assert scans and all(s.kspace.shape[2] == 2 and np.isfinite(s.fov_mm).all() for s in scans)
    ny, nx = scans[0].recon_shape
    fov = scans[0].fov_mm
    # Square pixels unless the file says otherwise (NIfTI spacing is isotropic in the shared files too).
    assert fov[1] / ny == pytest.approx(fov[0] / nx, rel=1e-3), (path, fov, ny, nx)


def test_non_square_image_gets_square_pixels(tmp_path):
    frames = np.random.default_rng(0).random((3, 48, 40)).astype(np.float32) + 0.1
    np.save(tmp_path / "cine.npy", frames)
    scan = load_source(str(tmp_path / "cine.npy"), n_coils=2)[0]
    assert scan.fov_mm[0] / 40 == pytest.approx(scan.fov_mm[1] / 48)


def test_text_file_named_h5_names_the_file(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("not hdf5\n")
    with pytest.raises(ValueError, match="notes.h5: not an HDF5 file"):
        load_source(str(bad))


def test_dicom_cine_round_trip_and_dciodvfy(stream_host, tmp_path, capsys):
    """A 40x32 cine (non-square) replayed into DICOM, then that folder replayed as a source."""
    pydicom = pytest.importorskip("pydicom")
    frames = np.random.default_rng(1).random((4, 40, 32)).astype(np.float32)
    frames[:, 10:30, 8:24] += 2.0
    np.save(tmp_path / "cine.npy", frames)
    first = tmp_path / "first"
    code, out, err = _replay([str(tmp_path / "cine.npy"), "--port", str(stream_host.port), "--pipeline",
                              "cine_conventional", "--coils", "2", "--order", "segmented", "--segments", "2",
                              "--dicom", "--out", str(first)], capsys)
    assert code == 0, err
    files = sorted((first / "dicom").glob("*.dcm"))
    assert len(files) == 4
    ds = [pydicom.dcmread(f) for f in files]
    dy, dx = (float(v) for v in ds[0].PixelSpacing)
    assert dy == pytest.approx(dx) and (ds[0].Rows, ds[0].Columns) == (40, 32)  # not stretched
    assert sorted(float(d.TriggerTime) for d in ds) == pytest.approx([0, 36, 72, 108])
    assert all(int(d.CardiacNumberOfImages) == 4 and d.ScanOptions == "CG" for d in ds)
    if shutil.which("dciodvfy") is not None:
        run = subprocess.run(["dciodvfy", str(files[1])], capture_output=True, text=True, timeout=60)
        report = run.stdout + run.stderr
        assert not [l for l in report.splitlines() if l.startswith("Error")], report

    # The folder (plus a file that is not DICOM, as folders have) is a source with the same geometry.
    (first / "dicom" / "README.txt").write_text("exported images\n")
    scan = load_source(str(first / "dicom"), n_coils=2)[0]
    assert scan.frames == 4 and scan.recon_shape == (40, 32)
    assert scan.fov_mm[0] == pytest.approx(32 * dx) and scan.fov_mm[1] == pytest.approx(40 * dy)
    np.testing.assert_allclose(scan.trigger_times_ms, [0, 36, 72, 108])
    second = tmp_path / "second"
    code, out, err = _replay([str(first / "dicom"), "--port", str(stream_host.port), "--pipeline", "cine_conventional",
                              "--coils", "2", "--out", str(second)], capsys)
    assert code == 0, err
    import json
    report = json.loads((second / "report.json").read_text())
    assert report["series"]["0"]["frames"] == 4 and report["series"]["0"]["psnr"] > 20


def test_dicom_folder_with_two_series_asks_which(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    for number, desc in ((3, "cine sax"), (4, "cine 4ch")):
        uid = generate_uid()
        for i in range(2):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = uid, number, desc, i + 1
            ds.Rows = ds.Columns = 16
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.PixelData = (np.arange(256, dtype=np.uint16) + i).tobytes()
            ds.save_as(tmp_path / f"IM{number}{i}", enforce_file_format=True)
    with pytest.raises(ValueError, match=r"2 DICOM series \(3 \(cine sax\), 4 \(cine 4ch\)\); pick one"):
        load_source(str(tmp_path))
    scan = load_source(f"{tmp_path}:4", n_coils=2)[0]
    assert scan.frames == 2 and scan.recon_shape == (16, 16)
