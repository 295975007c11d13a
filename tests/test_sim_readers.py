"""Readers on small files written in each exact on-disk layout, and masks."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from models.masks import FAMILIES, achieved_acceleration, acs_lines, line_mask, line_mask_from_array
from models.metrics import psnr
from simulator.acquire import acquisitions
from models.shared_data import shared_data_dir
from simulator.images import image_pair_scans, read_image_file
from simulator.readers import pair_m4raw, read_cmrxrecon, read_fastmri, read_ismrmrd, read_mask_file, read_mat_arrays
from simulator.scan import phantom_scan
from simulator.sources import load_source
from simulator.writers import write_cmrxrecon, write_fastmri, write_ismrmrd


@pytest.fixture(scope="module")
def cine():
    return phantom_scan("cine", ny=32, nx=24, frames=3, n_coils=3, slices=2, seed=5)


def test_ismrmrd_round_trip(tmp_path, cine):
    p = tmp_path / "cine.h5"
    n = write_ismrmrd(p, cine)
    assert n == 2 * 3 * 32
    [back] = read_ismrmrd(p)
    np.testing.assert_array_equal(back.kspace, cine.kspace)
    assert back.readout_oversampling == 2 and back.recon_shape == (32, 24)
    assert back.time_dimension == "repetition" and back.frame_ms == cine.frame_ms
    np.testing.assert_allclose(np.abs(back.reference), np.abs(cine.reference), atol=1e-4)
    np.testing.assert_allclose(back.slice_positions_mm, cine.slice_positions_mm)
    assert back.measurement_id == cine.measurement_id and back.fov_mm == cine.fov_mm


def test_ismrmrd_multicontrast_gated(tmp_path):
    ref, tgt = phantom_scan("brain", ny=24, n_coils=2)
    p = tmp_path / "exam.h5"
    write_ismrmrd(p, ref)
    # Append the target contrast's readouts to the same dataset.
    import ismrmrd

    d = ismrmrd.Dataset(str(p), "dataset", create_if_needed=False)
    for a in acquisitions(tgt):
        d.append_acquisition(a)
    d.close()
    scans = read_ismrmrd(p)
    assert [s.contrast for s in scans] == [0, 1]
    np.testing.assert_array_equal(scans[1].kspace, tgt.kspace)
    gated = phantom_scan("cine", ny=16, nx=16, frames=4, n_coils=2, time_dimension="phase")
    write_ismrmrd(tmp_path / "g.h5", gated, order="segmented", segments=2)
    [g] = read_ismrmrd(tmp_path / "g.h5")
    assert g.time_dimension == "phase" and g.frames == 4
    np.testing.assert_array_equal(g.kspace, gated.kspace)


@pytest.mark.parametrize("single_coil", [False, True])
def test_fastmri_with_padding(tmp_path, single_coil):
    s = phantom_scan("cine", ny=20, nx=16, frames=1, n_coils=4, slices=2, seed=1)
    p = tmp_path / "file1000.h5"
    write_fastmri(p, s, pad_columns=6, single_coil=single_coil)
    with h5py.File(p) as f:  # the exact fastMRI layout
        k = f["kspace"]
        assert k.shape == ((2, 32, 32) if single_coil else (2, 4, 32, 32))  # (slices, [coils,] H=kx, W=ky+12)
        assert np.all(np.asarray(k)[..., :6] == 0) and np.all(np.asarray(k)[..., -6:] == 0)
        rec_name = "reconstruction_esc" if single_coil else "reconstruction_rss"
        recon = f[rec_name][()]
        assert recon.shape == (2, 16, 20)
        assert {"acquisition", "max", "norm", "patient_id"} <= set(f.attrs)
    scan = read_fastmri(p)
    assert scan.kspace.shape == ((2, 1, 1, 32, 32) if single_coil else (2, 1, 4, 32, 32))
    assert scan.encoded_lines == (6, 26)
    acqs = list(acquisitions(scan))
    assert len(acqs) == 2 * 20  # padding columns are never sent
    assert {a.idx.kspace_encode_step_1 for a in acqs} == set(range(6, 26))
    # The reader's reference is the file's reconstruction, transposed to (ky rows, kx columns).
    ref = np.abs(scan.reference[:, 0])
    assert ref.shape == (2, 20, 16)
    np.testing.assert_allclose(ref, np.transpose(recon, (0, 2, 1)), rtol=1e-4, atol=1e-6)


def test_m4raw_pairing(tmp_path):
    ref, tgt = phantom_scan("brain", ny=16, n_coils=2)
    for name, sc in (("2022061003_T101", ref), ("2022061003_T201", tgt), ("2022061003_T202", tgt), ("2022061101_T101", ref)):
        write_fastmri(tmp_path / f"{name}.h5", sc)
    groups = pair_m4raw(tmp_path)
    assert set(groups) == {"2022061003", "2022061101"}
    assert [p.name for p in groups["2022061003"]["T2"]] == ["2022061003_T201.h5", "2022061003_T202.h5"]
    scans = load_source(str(tmp_path))
    assert [s.contrast for s in scans] == [0, 1]
    assert scans[0].frame_of_reference_uid == scans[1].frame_of_reference_uid
    assert psnr(np.abs(scans[1].reference), np.abs(tgt.reference)) > 40


@pytest.mark.parametrize("version", ["7.3", "5"])
@pytest.mark.parametrize("multicoil", [True, False])
def test_cmrxrecon_2023(tmp_path, version, multicoil):
    rng = np.random.default_rng(0)
    t, z, c, ky, kx = 3, 2, 4, 20, 16
    full = (rng.normal(size=(t, z, c, ky, kx)) + 1j * rng.normal(size=(t, z, c, ky, kx))).astype(np.complex64)
    if not multicoil:
        full = full[:, :, 0]
    m = line_mask("uniform", ky, 1, accel=4, acs=4)[0]
    mask2d = np.repeat(m[:, None], kx, axis=1).astype(np.float64)  # (ky, kx) as h5py sees MATLAB's (kx, ky)
    sub = full * (m[:, None] if not multicoil else m[:, None])
    p = tmp_path / "cine_sax.mat"
    write_cmrxrecon(p, full, version=version, layout="2023", masks={"mask04": mask2d}, undersampled={"kspace_sub04": sub})
    if version == "7.3":
        with h5py.File(p) as f:  # compound complex, reversed axes, MATLAB user block
            assert f["kspace_full"].dtype.names == ("real", "imag")
            assert f["kspace_full"].shape == full.shape
        assert open(p, "rb").read(10) == b"MATLAB 7.3"
    arrays = read_mat_arrays(p)
    np.testing.assert_array_equal(arrays["kspace_full"], full)
    scan = read_cmrxrecon(p)
    assert scan.kspace.shape == (z, t, c if multicoil else 1, ky, kx)
    np.testing.assert_array_equal(scan.kspace[1, 2], full[2, 1] if multicoil else full[2, 1][None])
    assert scan.time_dimension == "phase"
    np.testing.assert_array_equal(scan.file_mask, np.repeat(m[None], t, axis=0))
    sub_scan = read_cmrxrecon(p, key="kspace_sub04")
    np.testing.assert_array_equal(sub_scan.file_mask[0], m)


def test_cmrxrecon_2024_kt_mask_file(tmp_path):
    rng = np.random.default_rng(1)
    t, z, c, ky, kx = 4, 1, 2, 24, 12
    full = (rng.normal(size=(t, z, c, ky, kx)) + 1j * rng.normal(size=(t, z, c, ky, kx))).astype(np.complex64)
    kt = line_mask("kt-gaussian", ky, t, accel=4, acs=4, seed=3)
    mask3d = np.repeat(kt[:, :, None], kx, axis=2).astype(np.float64)  # (t, ky, kx) as h5py sees it
    write_cmrxrecon(tmp_path / "cine_lax.mat", full, layout="2024", undersampled={"kus": full * kt[:, None, None, :, None]})
    write_cmrxrecon(tmp_path / "cine_lax_mask_ktGaussian4.mat", np.zeros((1, 1, 1, 1), np.complex64), layout="2024", masks={"mask": mask3d})
    scan = read_cmrxrecon(tmp_path / "cine_lax.mat", mask_path=tmp_path / "cine_lax_mask_ktGaussian4.mat")
    np.testing.assert_array_equal(scan.file_mask, kt)
    np.testing.assert_array_equal(read_mask_file(tmp_path / "cine_lax_mask_ktGaussian4.mat", ky, t), kt)
    [via_source] = load_source(str(tmp_path / "cine_lax.mat"))
    assert via_source.kspace.shape == (1, 4, 2, 24, 12)
    # Only sampled lines are sent when the file's kt mask is used.
    acqs = list(acquisitions(scan, scan.file_mask))
    assert len(acqs) == kt.sum()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("accel", [4, 8, 16, 24])
def test_mask_acceleration_reached(family, accel):
    ny, frames = 246, 12
    acs = 11 if family == "vd-random" else 16
    m = line_mask(family, ny, frames, accel=accel, acs=acs, seed=7)
    assert m.shape == (frames, ny) and m.dtype == bool
    assert abs(achieved_acceleration(m) / accel - 1) < 0.1
    varies = len({row.tobytes() for row in m}) > 1
    assert varies == (family in ("kt-uniform", "kt-gaussian", "random", "vd-random"))


@pytest.mark.parametrize("family,acs", [("uniform", 24), ("kt-gaussian", 16), ("kt-uniform", 16), ("vd-random", 11)])
def test_mask_acs_as_asked(family, acs):
    m = line_mask(family, 246, 8, accel=4, acs=acs, seed=1)
    c = 246 // 2
    assert m[:, c - acs // 2:c - acs // 2 + acs].all()
    assert acs_lines(m) >= acs
    # 5x with 11 central lines (dual U-Net paper).
    m5 = line_mask("vd-random", 128, 8, accel=5, acs=11)
    assert abs(achieved_acceleration(m5) - 5) < 0.5 and m5[:, 64 - 5:64 + 6].all()


def test_mask_from_array_shapes():
    kt = line_mask("kt-uniform", 20, 5, accel=4, acs=4)
    np.testing.assert_array_equal(line_mask_from_array(np.repeat(kt[:, :, None], 8, 2), 20, 5), kt)
    m2 = np.repeat(kt[0][:, None], 8, 1)
    np.testing.assert_array_equal(line_mask_from_array(m2, 20, 5), np.repeat(kt[:1], 5, 0))
    np.testing.assert_array_equal(line_mask_from_array(m2.T, 20, 5), np.repeat(kt[:1], 5, 0))
    with pytest.raises(ValueError):
        line_mask_from_array(np.ones((3, 7)), 20, 5)


def test_image_files(tmp_path):
    from PIL import Image

    img = (np.outer(np.hanning(40), np.hanning(30)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(255 - img).save(tmp_path / "b.png")
    frames = read_image_file(tmp_path / "a.png")
    assert frames.shape == (1, 40, 30) and np.isclose(frames.max(), 1)
    [s] = load_source(str(tmp_path / "a.png"), n_coils=3, noise_std=0.0)
    assert s.kspace.shape == (1, 1, 3, 40, 60)
    assert psnr(s.reference, frames[None]) > 100
    assert np.abs(np.angle(s.reference[0, 0][frames[0] > 0.3])).max() > 0.1  # synthetic phase applied
    pair = load_source(f"{tmp_path / 'a.png'}+{tmp_path / 'b.png'}", n_coils=2, matrix=16)
    assert [p.contrast for p in pair] == [0, 1] and pair[0].kspace.shape == (1, 1, 2, 16, 32)
    np.savez  # noqa: B018 (numpy present)
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((4, 12, 10)))
    [c] = load_source(str(tmp_path / "c.npy"), n_coils=2)
    assert c.frames == 4


DATA = shared_data_dir()


@pytest.mark.skipif(not (DATA / "cine" / "giraf_sax_cine25.mat").exists(), reason="shared data absent")
def test_real_cine_and_multicontrast():
    [s] = load_source(str(DATA / "cine" / "giraf_sax_cine25.mat"), n_coils=4, matrix=48, max_frames=4)
    assert s.kspace.shape == (1, 4, 4, 48, 96) and s.time_dimension == "repetition"
    pair = image_pair_scans(DATA / "multicontrast" / "patientA_groundtruth_T1.png",
                            DATA / "multicontrast" / "patientA_groundtruth_T2.png", n_coils=2, matrix=32)
    assert pair[0].kspace.shape == (1, 1, 2, 32, 64)
    mc = read_image_file(DATA / "multicontrast" / "T2_FLAIR_T1pre_T1post.mat", variable="FLAIR", matrix=32)
    nii = read_image_file(DATA / "multicontrast" / "T1w.nii.gz", matrix=32)
    assert mc.shape == nii.shape == (1, 32, 32) and mc.max() == pytest.approx(1)
