"""The report of a ``streamrecon replay`` run: scores, latency, fallbacks and warnings, written to ``--out``.

Every received series is scored frame by frame against the scan's fully
sampled reference (and the zero-filled and view-sharing anchors beside it),
its frame latency measured from the last readout its frame needed, its
fallback images counted by reason; ``report.json``, ``images.h5``, the
picture strips and optional DICOM are written, and the warnings a person
should read (a series that is all fallbacks, a model slower than the scan,
readouts dropped as late) are listed.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import ismrmrd
import ismrmrd.xsd
import numpy as np

from models.evaluation.strips import save_pictures
from models.masks import achieved_acceleration, acs_lines

from .acquire import normalise_mask
from .client import StreamResult
from .header import make_header
from .dicom import save_dicom
from .replay_streams import raw_stream
from .results import (by_series, fallback_of, frame_latencies_ms, image_array, intensity_ratio, percentiles,
                      save_images_h5, score_frames, summarise, view_shared_images, write_report, zero_filled_images)
from .scan import Scan

log = logging.getLogger("streamrecon.replay")


INFORMATIONAL = re.compile(r"^\s*(DEBUG|INFO|NOTICE)\b", re.IGNORECASE)


def is_informational(text: str) -> bool:
    """A host TEXT that reports progress, not a failure (python-ismrmrd-server prefixes its levels)."""
    return bool(INFORMATIONAL.match(text))


def session_end(r: StreamResult) -> str | None:
    """Why a session ended without the host's CLOSE (a cut connection, a killed host, a timeout); None if it closed."""
    if r.closed:
        return None
    why = [w for w in (r.send_error and f"sending failed: {r.send_error}",
                       r.receive_error and f"receiving failed: {r.receive_error}",
                       r.timed_out and "timed out waiting for the host") if w]
    return "the connection ended before the host's CLOSE" + (f" ({'; '.join(why)})" if why else "")


def write_report_files(args, scans, masks, merged: list[StreamResult], wall: float, notes: list[str]) -> tuple[dict, int]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    target = scans[-1]
    accel = achieved_acceleration(normalise_mask(target, masks[-1]))
    zf = zero_filled_images(target, masks[-1])
    truth = all(s.has_truth for s in scans)
    zf_rows = score_frames({(s, target.contrast, t): zf[s, t] for s in range(target.slices) for t in range(target.frames)}, [target])
    series_rows: dict[int, list[dict]] = {}
    first = merged[0]
    series = by_series(first.images)
    ratios: dict[int, float | None] = {}
    for idx, imgs in sorted(series.items()):
        pictures = {k: np.abs(image_array(im)) for k, im in imgs.items()}
        series_rows[idx] = score_frames(pictures, scans)
        ratios[idx] = intensity_ratio(pictures, scans) if truth else None
        for row in series_rows[idx]:  # which frames are the model's and which stand in for it
            im = imgs.get((row["slice"], row["contrast"], row["frame"]))
            row["fallback"] = fallback_of(im) if im is not None else None
            row["recon"] = str(_meta(im, "ReconMethod") or "") if im is not None else ""
    vs_rows, causal = [], False
    if truth and args.order == "realtime" and target.frames > 1 and len(scans) == 1:
        # the classical anchor a real-time model series should beat (and falls back to)
        causal = any(str(_meta(im, "Mode") or "") == "causal" for imgs in series.values() for im in imgs.values())
        vs = view_shared_images(target, masks[-1], causal=causal)
        vs_rows = score_frames({(s, target.contrast, t): vs[s, t] for s in range(target.slices)
                                for t in range(target.frames)}, [target])
    if not truth:
        # An undersampled source has no fully sampled truth: no scores, only what arrived.
        why = "no fully sampled reference: the source is undersampled"
        zf_rows = [_unscored(r, why) for r in zf_rows]
        series_rows = {k: [_unscored(r, why) for r in v] for k, v in series_rows.items()}
    # Latency per series; the headline is the last series (the model's, when
    # a pipeline emits the conventional series 0 beside it).
    lat_by_series: dict[int, list[float]] = {k: [] for k in series}
    for r in merged:
        for k in series:
            lat_by_series[k] += frame_latencies_ms(r, lookahead=args.lookahead, series=k)
    lat_all = lat_by_series[max(series)] if series else []
    expected = sum(s.slices * s.frames for s in scans) if len(scans) == 1 else target.slices * target.frames
    # Headline scores are the target contrast's (an exam's reference contrast is an input, not a result).
    def target_rows(rows: list[dict]) -> list[dict]:
        return [r for r in rows if r["contrast"] == target.contrast]

    primary = summarise(target_rows(series_rows.get(max(series), []))) if series else summarise([])
    received = len(target_rows(series_rows.get(max(series), []))) if series else 0
    sent_frames = sum(len(r.send_times) for r in merged)
    frame_ms = args.frame_ms or target.frame_ms
    fallbacks = {k: fallback_summary(imgs.values()) for k, imgs in series.items()}
    model_ms = {k: model_time_ms(imgs.values()) for k, imgs in series.items()}
    host_errors = [t for r in merged for t in r.texts if not is_informational(t)] + [f"ERROR {e}" for r in merged for e in r.errors]
    report = {
        "pipeline": args.pipeline,
        "source": args.source,
        "order": args.order,
        "time_dimension": target.time_dimension,
        "frames_per_slice": target.frames,
        "mask": _mask_label(args, target),
        "acceleration": accel,
        # A file replayed as acquired says its own calibration block (separate calibration readouts
        # are not in the imaging mask); otherwise the fully sampled centre block of the mask.
        "acs_lines": (target.calibration_lines if target.calibration_lines and raw_stream(scans, masks, [len(scans) - 1])
                      else acs_lines(normalise_mask(target, masks[-1]))),
        "adjustments": notes,
        "source_notes": [n for s in scans for n in s.notes],
        "scanners": args.scanners,
        "lookahead": args.lookahead,
        "frames": primary["frames"] if truth else received,
        "frames_expected": expected,
        # The headline names its series: a pipeline with a conventional series beside the model's
        # has two sets of scores, and a bare top-level PSNR hid which one it was.
        "headline": {"series": str(max(series)) if series else None,
                     "name": _series_name(series[max(series)]) if series else "",
                     "frames": primary["frames"] if truth else received, "psnr": primary["psnr"],
                     "ssim": primary["ssim"], "nmse": primary["nmse"], "latency_ms": percentiles(lat_all)},
        "scoring": ("magnitude vs fully sampled reference, no rescaling, data range = reference max (fastMRI)" if truth
                    else "none: the source is undersampled and has no fully sampled reference"),
        "series": {str(k): {"name": _series_name(series[k]), **summarise(target_rows(v)),
                            "latency_ms": percentiles(lat_by_series.get(k, [])), "fallbacks": fallbacks[k],
                            "model_ms_per_image": model_ms[k], "intensity_ratio": ratios.get(k), "per_frame": v,
                            "late_readouts_dropped": late_readouts_dropped(series[k].values())}
                   for k, v in series_rows.items()},
        "zero_filled": {**summarise(zf_rows), "per_frame": zf_rows},
        "view_sharing": ({**summarise(vs_rows), "causal": causal, "coil_maps": "true" if target.coil_maps is not None else "RSS",
                          "per_frame": vs_rows} if vs_rows else None),
        "frame_ms": frame_ms,
        "throughput": {
            "wall_s": wall,
            "frames_per_s": sum(len(r.images) for r in merged) / max(wall, 1e-9),
            "readouts_sent": sum(r.readouts_sent for r in merged),
            "mb_sent": sum(r.bytes_sent for r in merged) / 1e6,
            "frames_sent": sent_frames,
        },
        "pacing_measured_ms": first.paced_block_ms,
        "host_messages": [t for r in merged for t in r.texts] + [f"ERROR {e}" for r in merged for e in r.errors],
        "host_errors": host_errors,
        "closed_by_host": [r.closed for r in merged],
        "session_end": [session_end(r) for r in merged],
        "interrupted": any(r.interrupted for r in merged),
    }
    report["warnings"] = report_warnings(report)
    written = [out / "report.json", out / "images.h5"]
    save_images_h5(out / "images.h5", [im for r in merged for im in r.images])
    ref_c = target.contrast
    for s in range(target.slices):
        rows = {"reference": np.abs(target.reference[s]), "zero-filled": np.abs(zf[s])}
        titles = {"reference": "reference" if target.has_truth else "source (undersampled)", "zero-filled": "zero-filled"}
        marks = {}
        for idx, imgs in sorted(series.items()):
            present = [imgs[(s, ref_c, t)] for t in range(target.frames) if (s, ref_c, t) in imgs]
            frames = [np.abs(image_array(im)) for im in present]
            if frames and frames[0].shape == rows["reference"].shape[-2:]:
                rows[f"series{idx}"] = np.stack(frames)
                marks[f"series{idx}"] = [fallback_of(im) is not None for im in present]
                titles[f"series{idx}"] = f"series {idx} {_series_name(imgs)}".strip() + (
                    " [ALL FALLBACK]" if fallbacks[idx]["all"] else "")
        written += save_pictures(out, rows, f"slice{s:02d}", titles=titles, errors=target.has_truth, marks=marks)
    if args.dicom:
        try:
            report["dicom_files"] = save_dicom(out / "dicom", first.images, scans, _source_header(scans))
            written.append(out / "dicom")
        except ImportError:
            report["dicom_files"] = "pydicom not installed (pip install streamrecon[dicom])"
    report["files"] = [str(p) for p in written]
    write_report(out / "report.json", report)
    complete = (primary["frames"] if truth else received) == expected
    all_fallback = any(f["all"] for f in fallbacks.values())
    ok = complete and not host_errors and not all_fallback
    if report["interrupted"]:
        return report, 130  # as a shell reports Ctrl-C, after the files are written
    return report, 0 if ok else 1


def _source_header(scans: list[Scan]):
    """The header that describes the source: a file's own, or the simulated scanner's for a simulated scan."""
    target = scans[-1]
    if target.raw is not None:
        return ismrmrd.xsd.CreateFromDocument(target.raw.xml)
    return make_header(target) if target.coil_maps is not None else None


def _unscored(row: dict, why: str) -> dict:
    return {k: row[k] for k in ("slice", "contrast", "frame")} | {"error": why}


def _mask_label(args, target: Scan) -> str:
    if target.acquired is not None:
        return "the source's own sampling"
    if args.mask == "file" or (args.mask and Path(args.mask).suffix in (".mat", ".npy")):
        return args.mask
    return (args.mask or "uniform") if args.accel > 1 else "none"


_NUMBER = re.compile(r"\d+(\.\d+)?")


def fallback_kind(reason: str) -> str:
    """A fallback reason with its figures replaced by N, so reasons that differ only in numbers
    (``model busy: its image expected in 2114 ms``, ``... 2241 ms``) count as one kind."""
    return _NUMBER.sub("N", reason)


def fallback_summary(images) -> dict:
    """How many images of a series are fallbacks (a classical image in the model's place) and why.

    ``reasons``: every kind of reason (:func:`fallback_kind`), most frequent first, with its count and
    the first full text; the counts add up to ``count``.
    """
    kinds: Counter = Counter()
    examples: dict[str, str] = {}
    n = 0
    for im in images:
        n += 1
        why = _meta(im, "Fallback")
        if why:
            kind = fallback_kind(str(why))
            kinds[kind] += 1
            examples.setdefault(kind, str(why))
    count = sum(kinds.values())
    return {"images": n, "count": count, "all": n > 0 and count == n,
            "reasons": [{"reason": examples[k], "kind": k, "images": c} for k, c in kinds.most_common()]}


def late_readouts_dropped(images) -> int:
    """Readouts the host dropped because they came after their frame's image (the images' LateReadoutsDropped)."""
    return sum(int(_meta(im, "LateReadoutsDropped") or 0) for im in images)


def model_time_ms(images) -> dict:
    """The model's own time per image: ``InferenceMs`` (a batch's time) over ``Batch`` in the meta of model images."""
    values = []
    for im in images:
        v = _meta(im, "InferenceMs")
        if v and not _meta(im, "Fallback"):
            try:
                values.append(float(v) / max(1, int(_meta(im, "Batch") or 1)))
            except ValueError:
                pass
    return percentiles(values)


def _meta(image: ismrmrd.Image, key: str):
    try:
        return image.meta.get(key)
    except Exception:  # an image without readable meta says nothing
        return None


def report_warnings(report: dict) -> list[str]:
    """What a reader of the table must not miss: fallbacks, and why a model series lags."""
    out = []
    for k, s in report["series"].items():
        fb = s["fallbacks"]
        label = f"series {k} {s['name']}".strip()
        if fb["count"]:
            shown = fb["reasons"][:3]
            why = "; ".join(f"{r['reason']} ({r['images']})" for r in shown)
            rest = fb["reasons"][3:]
            if rest:
                why += f"; {sum(r['images'] for r in rest)} more for {len(rest)} other reasons (report.json)"
            head = ("ALL its images are fallbacks: it shows classical images, not the model's"
                    if fb["all"] else f"{fb['count']} of {fb['images']} images are fallbacks (classical images in "
                                      f"the model's place, marked FALLBACK in the pictures)")
            out.append(f"{label}: {head}; why: {why}")
        ms = s["model_ms_per_image"]
        frame_ms = report["frame_ms"]
        # Only a real-time cine has a frame rate to keep up with: a gated scan's frames complete
        # together at the end of the breath-hold, a single image has no next frame.
        real_time = (report.get("order") != "segmented" and report.get("time_dimension", "repetition") == "repetition"
                     and report.get("frames_per_slice", 2) > 1)
        if real_time and ms.get("n") and frame_ms and ms["p50"] > frame_ms:
            out.append(f"{label} lags: the model took {ms['p50']:.0f} ms an image here (median of {ms['n']}) against "
                       f"{frame_ms:.0f} ms a frame, so its images queue up behind the scan "
                       f"({ms['p50'] / frame_ms:.1f}x slower than real time on this machine; the conventional series "
                       f"does not wait for it)")
    for k, s in report["series"].items():
        ratio, score = s.get("intensity_ratio"), s.get("psnr")
        if ratio is not None and (not 0.5 <= ratio <= 2.0 or (score is not None and score < 10)):
            said = f"PSNR {score:.1f} dB" if score is not None else "its score"
            out.append(f"series {k} {s['name']}".strip() + f": {said} is not a quality figure here: its "
                       f"images are {ratio:.3g}x the reference's intensity (99th percentiles), and scores compare "
                       "magnitudes without rescaling; a pipeline that scales its own output (integers 0..4095, "
                       "inverted contrast) cannot be scored this way")
    for k, s in report["series"].items():
        if s.get("late_readouts_dropped"):
            out.append(f"series {k} {s['name']}".strip() + f": {s['late_readouts_dropped']} readouts arrived after their "
                       "frame's image and were dropped (images flagged LateReadoutsDropped)")
    if report.get("interrupted"):
        out.append(f"interrupted (Ctrl-C): {report['frames']} of {report['frames_expected']} frames came back; "
                   "this report and the files cover those")
    for i, why in enumerate(report.get("session_end", [])):
        if why:
            out.append(f"scanner {i}: {why}; {report['frames']} of {report['frames_expected']} frames came back")
    return out


def _series_name(images: dict) -> str:
    """What the host called a series (its ImageSeriesDescription), for the table."""
    for im in images.values():
        try:
            return str(im.meta.get("ImageSeriesDescription", ""))
        except Exception:
            return ""
    return ""


