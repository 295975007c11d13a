"""What came back: images to files, scores against the truth, frame latency.

Scores (:mod:`models.metrics`, fastMRI conventions): PSNR, SSIM and NMSE of
magnitudes, each received image against the scan's fully sampled reference
frame, with no rescaling of the received image and the reference maximum
as dynamic range; per frame, and the mean over frames. The zero-filled
reconstruction of exactly the lines that were sent (coil-combined with the
true maps when simulated, root-sum-of-squares otherwise) is scored the same
way, side by side.

Frame latency (DESIGN.md): from the moment the last readout a frame's
output needs had been sent (frame ``t + lookahead`` of the same slice and
contrast, clamped to the last frame; ``lookahead = 1`` for a centred
3-frame window, 0 for conventional pipelines) to the arrival of that
frame's image.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import ismrmrd
import numpy as np

from models.metrics import nmse, psnr, ssim

from .acquire import frame_key, normalise_mask
from .client import StreamResult
from .scan import Scan, coil_images_to_recon

Key = tuple[int, int, int]  # (slice, contrast, frame)


def image_array(image: ismrmrd.Image) -> np.ndarray:
    """The 2-D picture of an image (first channel, first partition), ``(ny, nx)``."""
    data = np.asarray(image.data)
    while data.ndim > 2:
        data = data[0]
    return data


def by_series(images: list[ismrmrd.Image]) -> dict[int, dict[Key, ismrmrd.Image]]:
    """``{image_series_index: {(slice, contrast, frame): image}}`` (a repeated key keeps the first)."""
    out: dict[int, dict[Key, ismrmrd.Image]] = defaultdict(dict)
    for im in images:
        out[int(im.image_series_index)].setdefault(frame_key(im), im)
    return dict(out)


def zero_filled_images(scan: Scan, mask: np.ndarray | None) -> np.ndarray:
    """``(slices, frames, ny, nx)`` zero-filled coil-combined images from the sent lines only."""
    m = normalise_mask(scan, mask)
    k = scan.kspace * m[:, :, None, :, None]
    out = np.empty(scan.reference.shape, dtype=np.complex64)
    ny_r = scan.reference.shape[-2]
    for s in range(scan.slices):
        maps = scan.coil_maps[s] if scan.coil_maps is not None else None
        img = coil_images_to_recon(k[s], scan.reference.shape[-1], maps if maps is not None and maps.shape[-2] == scan.ny else None)
        y0 = img.shape[-2] // 2 - ny_r // 2
        out[s] = img[..., y0:y0 + ny_r, :]
    return out


def score_frames(pred: dict[Key, np.ndarray], scans: list[Scan]) -> list[dict]:
    """Per-frame scores of ``pred`` against the matching scan's reference (matched by contrast)."""
    by_contrast = {s.contrast: s for s in scans}
    rows = []
    for key in sorted(pred):
        s_idx, c, t = key
        scan = by_contrast.get(c)
        if scan is None or s_idx >= scan.slices or t >= scan.frames:
            rows.append({"slice": s_idx, "contrast": c, "frame": t, "error": "no reference for this frame"})
            continue
        ref = scan.reference[s_idx, t]
        img = pred[key]
        if img.shape != ref.shape:
            rows.append({"slice": s_idx, "contrast": c, "frame": t, "error": f"image {img.shape} vs reference {ref.shape}"})
            continue
        rows.append({"slice": s_idx, "contrast": c, "frame": t, "psnr": psnr(img, ref), "ssim": ssim(img, ref), "nmse": nmse(img, ref)})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean PSNR/SSIM/NMSE over the scored frames (inf PSNR of exact frames is kept out of the mean)."""
    ok = [r for r in rows if "psnr" in r]
    finite = [r["psnr"] for r in ok if np.isfinite(r["psnr"])]
    return {
        "frames": len(ok),
        "psnr": float(np.mean(finite)) if finite else (float("inf") if ok else None),
        "ssim": float(np.mean([r["ssim"] for r in ok])) if ok else None,
        "nmse": float(np.mean([r["nmse"] for r in ok])) if ok else None,
        "unscored": len(rows) - len(ok),
    }


def _window_frames(image: ismrmrd.Image) -> list[int] | None:
    """The frames a model image was made from, from its ``Window`` meta ("t-1,t,t+1"), if it says."""
    try:
        text = image.meta.get("Window")
    except Exception:
        return None
    if not text:
        return None
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        return None


def frame_latencies_ms(result: StreamResult, *, series: int | None = None, lookahead: int = 0,
                       last_frame: dict[tuple[int, int], int] | None = None) -> list[float]:
    """Latency of every received image (of ``series``, or all) in ms, per the module docstring.

    An image whose meta names its ``Window`` (the deep-learning gadgets do)
    is timed from the last-sent readout of those frames, which is exactly
    "the last readout the frame's output needs", also for periodic gated
    windows; other images use ``lookahead``.
    """
    if last_frame is None:
        last_frame = defaultdict(int)
        for s, c, t in result.send_times:
            last_frame[(s, c)] = max(last_frame[(s, c)], t)
    out = []
    for im, t_arr in zip(result.images, result.image_times):
        if series is not None and int(im.image_series_index) != series:
            continue
        s, c, t = frame_key(im)
        window = _window_frames(im)
        if window:
            sends = [result.send_times.get((s, c, f)) for f in window]
            sent = max(x for x in sends if x is not None) if any(x is not None for x in sends) else None
        else:
            sent = result.send_times.get((s, c, min(t + lookahead, last_frame.get((s, c), t))))
        if sent is not None:
            out.append((t_arr - sent) * 1000.0)
    return out


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "max": None, "n": 0}
    v = np.asarray(values)
    return {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "max": float(v.max()), "n": int(v.size)}


def save_images_h5(path: Path, images: list[ismrmrd.Image]) -> None:
    """All received images into an ISMRMRD .h5, one image group per series (``images_<series>``)."""
    if path.exists():
        path.unlink()
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    try:
        for im in images:
            dset.append_image(f"images_{int(im.image_series_index)}", im)
    finally:
        dset.close()


def _to_uint8(frames: np.ndarray, vmax: float) -> np.ndarray:
    return (np.clip(np.abs(frames) / max(vmax, 1e-12), 0, 1) * 255).astype(np.uint8)


def save_pictures(out_dir: Path, rows: dict[str, np.ndarray], stem: str, *, max_frames: int = 12) -> list[Path]:
    """A PNG strip (one row per entry of ``rows``, up to ``max_frames`` frames across) and one GIF per row.

    ``rows`` maps a label (``reference``, ``zero-filled``, ``series0``...) to
    ``(frames, ny, nx)`` magnitudes; all share the reference's grey scale.
    """
    from PIL import Image

    written = []
    vmax = max(float(np.abs(r).max()) for r in rows.values())
    n = min(max_frames, min(len(r) for r in rows.values()))
    picks = np.linspace(0, min(len(r) for r in rows.values()) - 1, n).round().astype(int)
    strip = np.concatenate([np.concatenate(list(_to_uint8(r[picks], vmax)), axis=1) for r in rows.values()], axis=0)
    p = out_dir / f"{stem}_strip.png"
    Image.fromarray(strip).save(p)
    written.append(p)
    for label, r in rows.items():
        if len(r) < 2:
            continue
        frames = [Image.fromarray(f) for f in _to_uint8(r, vmax)]
        g = out_dir / f"{stem}_{label}.gif"
        frames[0].save(g, save_all=True, append_images=frames[1:], duration=60, loop=0)
        written.append(g)
    return written


def save_dicom(out_dir: Path, images: list[ismrmrd.Image], scans: list[Scan]) -> int:
    """One MR DICOM file per image (pydicom, an optional dependency); returns the count written."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    for_uid = scans[0].frame_of_reference_uid
    series_uids: dict[int, str] = {}
    study_uid = generate_uid()
    count = 0
    scales: dict[int, float] = {}
    for im in images:
        series = int(im.image_series_index)
        series_uids.setdefault(series, generate_uid())
        arr = np.abs(image_array(im)).astype(np.float64)
        # One scale per series (from its first image), so a cine's frames
        # keep their relative brightness in a DICOM viewer.
        scale = scales.setdefault(series, 4095.0 / max(arr.max(), 1e-12))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "MR", study_uid, series_uids[series]
        ds.FrameOfReferenceUID, ds.SeriesNumber, ds.InstanceNumber = for_uid, series + 1, int(im.image_index)
        ds.PatientName, ds.PatientID = "streamrecon^phantom", "SIMULATED"
        ds.Rows, ds.Columns = arr.shape
        fov = im.field_of_view
        dy, dx = float(fov[1]) / arr.shape[0], float(fov[0]) / arr.shape[1]
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = float(fov[2])
        # ISMRMRD's position is the image centre; DICOM's is the centre of
        # the first (top-left) pixel.
        centre, read, phase = (np.asarray(v, dtype=np.float64) for v in (im.position, im.read_dir, im.phase_dir))
        corner = centre - read * dx * (arr.shape[1] / 2 - 0.5) - phase * dy * (arr.shape[0] / 2 - 0.5)
        ds.ImagePositionPatient = [float(v) for v in corner]
        ds.ImageOrientationPatient = [float(v) for v in im.read_dir] + [float(v) for v in im.phase_dir]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.clip(np.rint(arr * scale), 0, 65535).astype(np.uint16).tobytes()
        ds.save_as(out_dir / f"s{series:02d}_sl{im.slice:02d}_c{im.contrast}_f{frame_key(im)[2]:03d}.dcm", enforce_file_format=True)
        count += 1
    return count


def write_report(path: Path, report: dict) -> None:
    def clean(o):
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.floating, float)):
            if np.isnan(o):
                return None
            return float(o) if np.isfinite(o) else ("inf" if o > 0 else "-inf")
        if isinstance(o, np.integer):
            return int(o)
        return o

    path.write_text(json.dumps(clean(report), indent=2))


def format_table(report: dict) -> str:
    """A short human-readable summary of a replay report."""
    def f(v, fmt):
        return "-" if v is None else (v if isinstance(v, str) else format(v, fmt))

    lines = [f"pipeline {report['pipeline']}  source {report['source']}  acceleration {report['acceleration']:.2f}"
             f"  scanners {report['scanners']}  order {report['order']}",
             f"{'series':<22}{'frames':>7}{'PSNR dB':>9}{'SSIM':>8}{'NMSE':>10}   latency ms p50 / p95 / max"]
    zf = report["zero_filled"]
    lines.append(f"{'zero-filled input':<22}{zf['frames']:>7}{f(zf['psnr'], '.2f'):>9}{f(zf['ssim'], '.4f'):>8}{f(zf['nmse'], '.2e'):>10}")
    for name, s in report["series"].items():
        label = f"{name} {s.get('name', '')}".strip()
        lat = s.get("latency_ms") or {}
        lat_text = (f"{f(lat.get('p50'), '.1f')} / {f(lat.get('p95'), '.1f')} / {f(lat.get('max'), '.1f')}"
                    if lat.get("n") else "-")
        lines.append(f"{label[:22]:<22}{s['frames']:>7}{f(s['psnr'], '.2f'):>9}{f(s['ssim'], '.4f'):>8}"
                     f"{f(s['nmse'], '.2e'):>10}   {lat_text}")
    lines.append(f"throughput {report['throughput']['frames_per_s']:.1f} frames/s; latency = last readout a frame's "
                 f"image needs (its Window, else +{report['lookahead']} frames) -> image received")
    if report.get("pacing_measured_ms") is not None:
        lines.append(f"pacing: measured {report['pacing_measured_ms']:.2f} ms per frame block")
    for t in report.get("host_messages", []):
        lines.append(f"host: {t}")
    return "\n".join(lines)


__all__ = ["image_array", "by_series", "zero_filled_images", "score_frames", "summarise", "frame_latencies_ms", "percentiles",
           "save_images_h5", "save_pictures", "save_dicom", "write_report", "format_table"]
