"""``streamrecon bench pi``: the conventional series on Siemens-layout iPAT files, against CG-SENSE and the folded image.

For each calibration mode (embedded, separate reference scan, interleaved)
a Siemens-layout file (:mod:`simulator.siemens_layout`: brain phantom, 4
coils, R=2, 28 calibration lines, header without ``<version>``, noise
scans, 2x readout oversampling) is replayed as it is to an embedded host in
this process through ``cine_conventional`` twice: as shipped (parallel
imaging ``auto``) and with ``parallel_imaging=off`` (the folded
zero-filled image, as Gadgetron's ``default.xml`` gives). Each image is
scored against the simulated truth, beside an offline CG-SENSE of the same
file's readouts (50 iterations, maps from the same calibration data).
PSNR compares magnitudes after the least-squares scale (the host
pre-whitens, so its units are noise standard deviations), with the truth's
maximum as the range.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import ismrmrd
import numpy as np

from models.baselines import cg_sense
from models.coils import estimate_coil_maps
from models.machine import machine
from pipelines.host import StreamHost
from pipelines.session import SessionOptions
from simulator.client import run_session
from simulator.readers import read_ismrmrd
from simulator.siemens_layout import write_siemens_pi

PIPELINE = Path(__file__).resolve().parents[2] / "pipelines" / "cine_conventional.xml"
CALIBRATION = (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
MODES = ("embedded", "separate", "interleaved")


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of ``|image|`` against ``|reference|`` after the least-squares scale (reference maximum as range)."""
    a, r = np.abs(image).astype(np.float64), np.abs(reference).astype(np.float64)
    scale = float((a * r).sum() / max((a * a).sum(), 1e-30))
    return float(10 * np.log10(r.max() ** 2 / np.mean((scale * a - r) ** 2)))


def pipeline_with(**props: str) -> str:
    """``cine_conventional.xml`` with extra properties on its conventional node."""
    extra = "".join(f'<property name="{k}" value="{v}"/>' for k, v in props.items())
    anchor = '<property name="combine" value="sense"/>'
    text = PIPELINE.read_text()
    if anchor not in text:
        raise ValueError(f"{PIPELINE} has no {anchor}")
    return text.replace(anchor, anchor + extra)


def pixels(image) -> np.ndarray:
    return np.asarray(image.data).reshape(image.data.shape[-2:])


def offline_cg_sense(written, raw, slice_: int, repetition: int, iterations: int = 50) -> np.ndarray:
    """CG-SENSE of the file's own readouts of one frame, cropped to the recon matrix.

    Maps from the file's calibration lines (embedded, separate) or, for an
    interleaved calibration, from the time average of the slice's first two
    repetitions, as a scanner's TSENSE does.
    """

    ny, nx = written.scan.reference.shape[-2:]
    coils, kx = written.scan.kspace.shape[2], written.scan.kspace.shape[-1]
    data, lines = np.zeros((coils, ny, kx), np.complex64), np.zeros(ny, bool)
    calib, average, counts = np.zeros_like(data), np.zeros_like(data), np.zeros(ny)
    for a in raw.acquisitions:
        if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) or a.idx.slice != slice_:
            continue
        k = a.idx.kspace_encode_step_1
        if any(a.is_flag_set(f) for f in CALIBRATION):
            calib[:, k] = a.data
        if a.idx.repetition < 2:
            average[:, k] += a.data
            counts[k] += 1
        separate_reference = written.mode == "separate" and a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
        if a.idx.repetition == repetition and not separate_reference:
            data[:, k], lines[k] = a.data, True
    if written.mode == "interleaved":
        calib = average / np.maximum(counts, 1)[None, :, None]
    lo, hi = written.calibration
    maps = estimate_coil_maps(calib, (lo, hi))
    image = cg_sense(data[None], lines[None], maps, lam=1e-3, iterations=iterations)[0]
    return image[:, (kx - nx) // 2:(kx - nx) // 2 + nx]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon bench pi", description=__doc__.splitlines()[0])
    p.add_argument("--matrix", type=int, default=96)
    p.add_argument("--noise", type=float, default=0.05, help="k-space noise standard deviation")
    p.add_argument("--out", default="", help="also write this markdown file")
    args = p.parse_args(argv)

    lines = [f"# streamrecon bench pi, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"Command: `{('streamrecon bench pi ' + ' '.join(argv)).strip()}`", "",
             f"Machine: {machine()}", "",
             f"Siemens-layout files: brain phantom {args.matrix}x{args.matrix}, 4 coils, R=2, 28 calibration lines, "
             f"2 slices (interleaved: 3 repetitions), noise {args.noise:g}; `cine_conventional` in an embedded host.", "",
             "| calibration | slice | repetition | conventional series dB | offline CG-SENSE dB | difference | "
             "folded (parallel_imaging=off) dB | gain | s/frame | ReconMethod |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for line in lines:
        print(line)
    host = StreamHost("127.0.0.1", 0, SessionOptions(), idle_timeout_s=30.0)
    host.start_background()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mode in MODES:
                w = write_siemens_pi(Path(tmp) / f"{mode}.h5", mode, matrix=args.matrix, noise_std=args.noise,
                                     repetitions=3 if mode == "interleaved" else 1)
                raw = read_ismrmrd(w.path)[0].raw
                t0 = time.perf_counter()
                on = run_session("127.0.0.1", host.port, header=raw.xml, items=raw.acquisitions,
                                 config_file="cine_conventional", timeout=120)
                per_frame = (time.perf_counter() - t0) / max(1, len(on.images))
                off = run_session("127.0.0.1", host.port, header=raw.xml, items=raw.acquisitions,
                                  config_text=pipeline_with(parallel_imaging="off"), timeout=120)
                key = lambda im: (im.repetition, im.slice)  # noqa: E731
                for a, b in zip(sorted(on.images, key=key), sorted(off.images, key=key)):
                    s, t = int(a.slice), int(a.repetition)
                    truth = w.scan.reference[s, t]
                    got, folded = psnr(pixels(a), truth), psnr(pixels(b), truth)
                    ref = psnr(offline_cg_sense(w, raw, s, t), truth)
                    line = (f"| {mode} | {s} | {t} | {got:.2f} | {ref:.2f} | {got - ref:+.2f} | {folded:.2f} | "
                            f"{got - folded:+.2f} | {per_frame:.3f} | {a.meta['ReconMethod']} |")
                    lines.append(line)
                    print(line, flush=True)
    finally:
        host.shutdown()
        host.server_close()
    lines += ["", "s/frame: the whole session's wall time (send, reconstruct, receive) over its images."]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    return 0
