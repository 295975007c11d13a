"""The conventional gadgets one by one, through the embedded chain's connection."""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import ismrmrd
import numpy as np
import pytest
from gadgetron.types.recon_data import read_recon_data, write_recon_data

from gadgets import properties
from gadgets.frames import FrameAccumulator, frame_to_recon_data, frames_from
from gadgets.noise import NoiseStatistics, whiten
from gadgets.oversampling import crop_readout
from models.fft import fft1c, ifft1c
from pipelines.chain import Chain
from pipelines.pipeline_config import PipelineError, load_gadgets, parse_pipeline
from simulator.acquire import acquisitions
from simulator.header import make_header
from tests.streams import small_cine


def run_chain(xml_stream: str, header, items):
    pipeline = load_gadgets(parse_pipeline(f"<configuration><version>2</version><stream>{xml_stream}</stream></configuration>"),
                            ("gadgets", "tests.gadgets_for_tests"))
    chain = Chain(pipeline.gadgets, header)
    chain.start()
    out = []
    import threading
    t = threading.Thread(target=lambda: out.extend(chain.output()))
    t.start()
    for item in items:
        chain.feed(item)
    chain.close_input()
    assert chain.join(30)
    t.join(30)
    return out, chain.errors


def test_noise_prewhitening_gives_identity_covariance():
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.2, 0.3, 2.0]])
    def noise(n):
        return (mix @ (rng.standard_normal((3, n)) + 1j * rng.standard_normal((3, n))) / np.sqrt(2)).astype(np.complex64)
    stats = NoiseStatistics()
    for _ in range(20):
        stats.add(noise(256), 5.0)
    w = stats.whitening_matrix()
    white = whiten(noise(20000), w)
    cov = white @ white.conj().T / white.shape[1]
    np.testing.assert_allclose(cov, np.eye(3), atol=0.05)


def test_prewhiten_gadget_consumes_noise_and_whitens(tmp_path):
    scan = small_cine(slices=1, frames=1, coils=3, ny=8, nx=8)
    rng = np.random.default_rng(1)
    acqs = list(acquisitions(scan))
    noise = []
    for _ in range(8):
        a = ismrmrd.Acquisition.from_array((rng.standard_normal((3, 64)) * [[1], [3], [0.5]]).astype(np.complex64))
        a.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        a.sample_time_us = acqs[0].sample_time_us / 2  # noise sampled at twice the bandwidth
        noise.append(a)
    out, errors = run_chain('<external><execute name="gadgets.noise" target="prewhiten" type="python"/></external>',
                            make_header(scan), noise + acqs)
    assert not errors and len(out) == len(acqs)
    assert not any(o.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) for o in out)
    # Channel 1 has 3x the noise amplitude: whitening divides it by ~3. The
    # noise was measured at twice the acquisition's bandwidth (twice its
    # noise variance), so the acquisition is scaled up by sqrt(2) to reach
    # unit noise variance.
    ratio = np.abs(out[0].data[1]).mean() / np.abs(acqs[0].data[1]).mean()
    assert 0.3 < ratio / np.sqrt(2) < 0.37


def test_crop_readout_keeps_central_fov_pixels():
    rng = np.random.default_rng(2)
    image = np.zeros((2, 64), np.complex64)
    image[:, 16:48] = rng.standard_normal((2, 32)) + 1j * rng.standard_normal((2, 32))
    cropped = crop_readout(fft1c(image), 32)
    np.testing.assert_allclose(ifft1c(cropped), image[:, 16:48], atol=1e-5)


def test_accumulator_triggers_and_flushes():
    scan = small_cine(slices=1, frames=3, coils=2, ny=8, nx=8)
    header = make_header(scan)
    acqs = list(acquisitions(scan))
    for a in acqs:  # strip the flags: real-time counter changes and the end of stream must suffice
        a.clear_all_flags()
    acc = FrameAccumulator(header, time_dim="repetition")
    done = [f for a in acqs for f in acc.add(a)]
    assert len(done) == 2  # frames 0 and 1 closed by the counter change
    done += acc.flush()
    assert [f.key("repetition") for f in done] == [(0, 0, 0, t) for t in range(3)]
    assert all(f.sampled.all() for f in done)
    # A late readout of a completed frame is dropped, not turned into a second image.
    assert acc.add(acqs[0]) == [] and acc.dropped_late == 1


def test_recon_data_round_trips_through_gadgetron_serialisation():
    scan = small_cine(slices=1, frames=1, coils=3, ny=12, nx=10)
    acqs = list(acquisitions(scan, np.array([[i % 2 == 0 or 4 <= i < 8 for i in range(12)]]), calib_lines=(4, 8)))
    acc = FrameAccumulator(make_header(scan))
    (frame,) = [f for a in acqs for f in acc.add(a)]
    buf = io.BytesIO()
    write_recon_data(buf, frame_to_recon_data(frame))
    buf.seek(2)  # past the message id
    (back,) = list(frames_from(read_recon_data(buf)))
    np.testing.assert_array_equal(back.kspace, frame.kspace)
    np.testing.assert_array_equal(back.sampled, frame.sampled)
    np.testing.assert_array_equal(back.calibration_sampled, frame.calibration_sampled)
    assert back.calibration_sampled.sum() == 4 and back.sampled.sum() == 8
    assert back.reference_header.idx.kspace_encode_step_1 == frame.reference_header.idx.kspace_encode_step_1
    assert abs(back.acceleration - 1.5) < 1e-6


def test_properties_parse_and_name_bad_values():
    cfg = ET.fromstring('<configuration><property name="n" value="3"/><property name="flag" value="yes"/>'
                        '<property name="bad" value="x"/></configuration>')
    assert properties.get(cfg, "n", 0) == 3 and properties.get(cfg, "flag", False) is True
    assert properties.get(cfg, "missing", 1.5) == 1.5
    with pytest.raises(ValueError, match="property 'bad'"):
        properties.get(cfg, "bad", 0)


@pytest.mark.parametrize("xml,message", [
    ("<configuration><version>1</version><stream/></configuration>", "version-2"),
    ("<configuration><version>2</version></configuration>", "no <stream>"),
    ("<configuration><version>2</version><stream><parallel/></stream></configuration>", "<parallel>"),
    ("<configuration><version>2</version><stream><external><connect port='1'/></external></stream></configuration>", "connect"),
    ("<configuration><version>2</version><stream><external><execute name='gadgets.frames' type='matlab' target='x'/></external></stream></configuration>", "matlab"),
])
def test_pipeline_parse_errors(xml, message):
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(xml)


def test_gadgetron_style_buffer_with_stacked_phases_is_split_into_frames():
    """Gadgetron's C++ BucketToBufferGadget stacks phases along N: each becomes a frame."""
    from gadgetron.types.recon_data import ReconBit, ReconBuffer, ReconData

    scan = small_cine(slices=1, frames=3, coils=2, ny=8, nx=8)
    acc = FrameAccumulator(make_header(scan), time_dim="repetition")
    frames = [f for a in acquisitions(scan) for f in acc.add(a)]
    data = np.stack([np.transpose(f.kspace, (2, 1, 0)) for f in frames], axis=-1)  # RO, E1, CHA, N
    data = data[:, :, None, :, :, None, None]
    headers = np.stack([f.headers for f in frames], axis=-1)[:, None, :, None, None]
    buffer = ReconBuffer(np.asfortranarray(data), None, None, headers, frames[0].sampling)
    split = list(frames_from(ReconData([ReconBit(buffer)])))
    assert len(split) == 3
    for a, b in zip(split, frames):
        np.testing.assert_array_equal(a.kspace, b.kspace)
        assert a.reference_header.idx.repetition == b.reference_header.idx.repetition


def test_crop_operator_equals_fft_crop():
    from gadgets.oversampling import crop_operator

    rng = np.random.default_rng(3)
    d = (rng.standard_normal((4, 96)) + 1j * rng.standard_normal((4, 96))).astype(np.complex64)
    np.testing.assert_allclose(d @ crop_operator(96, 48), crop_readout(d, 48), atol=1e-5)


def test_accumulator_memory_stays_bounded_on_long_real_time_scans():
    scan = small_cine(slices=1, frames=1, coils=1, ny=4, nx=4)
    acc = FrameAccumulator(make_header(scan), time_dim="repetition", max_done=64)
    (acq,) = [a for a in acquisitions(scan)][:1]
    for t in range(1000):
        acq.idx.repetition = t
        acq.clear_all_flags()
        acq.set_flag(ismrmrd.ACQ_LAST_IN_REPETITION)
        assert len(acc.add(acq)) == 1
    assert len(acc.done) == 64 and not acc.open


def test_every_last_in_flag_and_a_contrast_change_close_a_frame():
    """Phase-counted header (gated or static): LAST_IN_REPETITION/CONTRAST end a frame as LAST_IN_PHASE/SLICE do,
    and the first readout of another contrast closes the frames of the one before (a reference before its target)."""
    scan = small_cine(slices=1, frames=1, coils=2, ny=8, nx=8)
    header = make_header(scan)
    (acq,) = list(acquisitions(scan))[:1]
    for flag in (ismrmrd.ACQ_LAST_IN_REPETITION, ismrmrd.ACQ_LAST_IN_CONTRAST, ismrmrd.ACQ_LAST_IN_PHASE,
                 ismrmrd.ACQ_LAST_IN_SLICE):
        acc = FrameAccumulator(header, time_dim="phase")
        acq.clear_all_flags()
        acq.set_flag(flag)
        assert len(acc.add(acq)) == 1 and not acc.open
    acc = FrameAccumulator(header, time_dim="phase")
    acq.clear_all_flags()
    for contrast, line in ((0, 0), (0, 1), (1, 0)):
        acq.idx.contrast, acq.idx.kspace_encode_step_1 = contrast, line
        done = acc.add(acq)
    assert [f.reference_header.idx.contrast for f in done] == [0] and list(acc.open) == [(0, 1, 0, 0)]
    assert done[0].sampled[:2].all()
    # lines of a set or an average interleave inside one frame: their last-in flags close nothing
    acq.set_flag(ismrmrd.ACQ_LAST_IN_SET)
    acq.set_flag(ismrmrd.ACQ_LAST_IN_AVERAGE)
    acq.idx.kspace_encode_step_1 = 1
    assert acc.add(acq) == [] and list(acc.open) == [(0, 1, 0, 0)]
    # contrasts interleaved line by line (multi-echo) keep their frames open without the counter trigger
    acc = FrameAccumulator(header, time_dim="phase", trigger_on_counter=False)
    acq.clear_all_flags()
    for contrast in (0, 1, 0, 1):
        acq.idx.contrast = contrast
        assert acc.add(acq) == []
    assert sorted(acc.open) == [(0, 0, 0, 0), (0, 1, 0, 0)]
