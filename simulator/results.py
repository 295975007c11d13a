"""What came back: images to files, scores against the truth, frame latency.

Scores (:mod:`models.metrics`, fastMRI conventions): PSNR, SSIM and NMSE of
magnitudes, each received image against the scan's fully sampled reference
frame, with no rescaling of the received image and the reference maximum
as dynamic range; per frame, and the mean over frames. The zero-filled
reconstruction of exactly the lines that were sent (coil-combined with the
true maps when simulated, root-sum-of-squares otherwise) is scored the same
way, side by side, and for real-time cine so is view-sharing SENSE of the
same lines (:func:`view_shared_images`: each missing line from the nearest
frame that measured it, up to ``t`` or ``t+1``), the best classical image a
scanner can show during the scan and what a model series falls back to.

Fallback images (meta ``Fallback``) are flagged per frame in
``report.json`` and marked in the pictures: a white frame and ``FALLBACK``
on their tiles, ``FALLBACK`` in their GIF titles, so a series that is partly
the model's and partly classical cannot pass for one that "improves".

Frame latency (docs/design.md): from the moment the last readout a frame's
output needs had been sent (frame ``t + lookahead`` of the same slice and
contrast, clamped to the last frame; ``lookahead = 1`` for a centred
3-frame window, 0 for conventional pipelines; never a readout sent after
the image arrived) to the arrival of that frame's image.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import ismrmrd
import numpy as np

from models.metrics import nmse, psnr, ssim
from models.view_sharing import view_share

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


def view_shared_images(scan: Scan, mask: np.ndarray | None, causal: bool = False) -> np.ndarray:
    """``(slices, frames, ny, nx)`` view-sharing images of the sent lines, as a stream has them.

    Frame ``t`` takes each line it did not measure from the nearest frame
    that did, looking no later than ``t`` (``causal``) or ``t+1`` (a centred
    window); coil-combined like :func:`zero_filled_images` (true maps when
    simulated, root-sum-of-squares otherwise).
    """
    m = normalise_mask(scan, mask)
    out = np.empty(scan.reference.shape, dtype=np.complex64)
    ny_r = scan.reference.shape[-2]
    for s in range(scan.slices):
        k = scan.kspace[s] * m[s][:, None, :, None]
        maps = scan.coil_maps[s] if scan.coil_maps is not None else None
        maps = maps if maps is not None and maps.shape[-2] == scan.ny else None
        for t in range(scan.frames):
            shared, _ = view_share(k, m[s], t, latest=t if causal else t + 1)
            img = coil_images_to_recon(shared, scan.reference.shape[-1], maps)
            y0 = img.shape[-2] // 2 - ny_r // 2
            out[s, t] = img[..., y0:y0 + ny_r, :]
    return out


def fallback_of(image: ismrmrd.Image) -> str | None:
    """Why an image is a fallback (its ``Fallback`` meta), or None for the model's own image."""
    try:
        why = image.meta.get("Fallback")
    except Exception:
        return None
    return str(why) if why else None


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


def intensity_ratio(pred: dict[Key, np.ndarray], scans: list[Scan]) -> float | None:
    """Median over frames of (image 99th percentile / reference 99th percentile): about 1 when a series is on
    the reference's intensity scale, as every streamrecon series is; far from 1 for a pipeline that scales
    its own way (python-ismrmrd-server's modules send 0..4095 integers), whose unrescaled scores mislead."""
    by_contrast = {s.contrast: s for s in scans}
    ratios = []
    for (s_idx, c, t), img in pred.items():
        scan = by_contrast.get(c)
        if scan is None or s_idx >= scan.slices or t >= scan.frames or img.shape != scan.reference.shape[-2:]:
            continue
        ref = float(np.percentile(np.abs(scan.reference[s_idx, t]), 99))
        if ref > 0:
            ratios.append(float(np.percentile(np.abs(img), 99)) / ref)
    return float(np.median(ratios)) if ratios else None


def summarise(rows: list[dict]) -> dict:
    """Frames received and scored, mean PSNR/SSIM/NMSE over the scored ones (inf PSNR of exact frames kept out of the mean)."""
    ok = [r for r in rows if "psnr" in r]
    finite = [r["psnr"] for r in ok if np.isfinite(r["psnr"])]
    # "frames" counts every image that came back, scored or not (an undersampled source's images
    # cannot be scored but did arrive); "scored" the ones with scores.
    return {
        "frames": len(rows),
        "scored": len(ok),
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
        needs = _window_frames(im) or range(t, min(t + lookahead, last_frame.get((s, c), t)) + 1)
        # A readout sent after the image arrived was evidently not needed for it (a pipeline that
        # does not look ahead, timed with --lookahead 1): the latest one sent before counts, so a
        # latency is never negative.
        sent = [x for x in (result.send_times.get((s, c, f)) for f in needs) if x is not None]
        before = [x for x in sent if x <= t_arr]
        if before:
            out.append((t_arr - max(before)) * 1000.0)
        elif sent:  # the image came back before the client had noted its readout as sent: no latency to speak of
            out.append(0.0)
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
    vs = report.get("view_sharing")
    if vs and vs.get("frames"):
        lines.append(f"{'view-sharing SENSE':<22}{vs['frames']:>7}{f(vs['psnr'], '.2f'):>9}{f(vs['ssim'], '.4f'):>8}"
                     f"{f(vs['nmse'], '.2e'):>10}   (classical anchor, {'causal' if vs.get('causal') else 'centred'})")
    for name, s in report["series"].items():
        label = f"{name} {s.get('name', '')}".strip()
        lat = s.get("latency_ms") or {}
        lat_text = (f"{f(lat.get('p50'), '.1f')} / {f(lat.get('p95'), '.1f')} / {f(lat.get('max'), '.1f')}"
                    if lat.get("n") else "-")
        fb = s.get("fallbacks") or {}
        fb_text = (f"   FALLBACK {fb['count']}/{fb['images']}" if fb.get("all") else
                   f"   fallback {fb['count']}/{fb['images']}" if fb.get("count") else "")
        lines.append(f"{label[:22]:<22}{s['frames']:>7}{f(s['psnr'], '.2f'):>9}{f(s['ssim'], '.4f'):>8}"
                     f"{f(s['nmse'], '.2e'):>10}   {lat_text}{fb_text}")
    lines.append(f"throughput {report['throughput']['frames_per_s']:.1f} frames/s; latency = last readout a frame's "
                 f"image needs (its Window, else +{report['lookahead']} frames) -> image received")
    if report.get("pacing_measured_ms") is not None:
        lines.append(f"pacing: measured {report['pacing_measured_ms']:.2f} ms per frame block")
    if report.get("scoring", "").startswith("none"):
        lines.append(f"scores: {report['scoring']}")
    for t in report.get("adjustments", []):
        lines.append(f"note: {t}")
    for t in report.get("host_messages", []):
        lines.append(f"host: {t}")
    return "\n".join(lines)


__all__ = ["image_array", "by_series", "intensity_ratio", "zero_filled_images", "view_shared_images", "fallback_of",
           "score_frames", "summarise", "frame_latencies_ms", "percentiles",
           "save_images_h5", "write_report", "format_table"]
