"""``streamrecon replay SOURCE``: play a dataset or phantom to a stream host as live scanner traffic.

Loads SOURCE (:func:`simulator.sources.load_source`), undersamples it,
streams it to the host (one session per scanner, ``--scanners N`` at
once), and writes to ``--out``: ``images.h5`` (everything received),
PNG strips and GIFs per slice, optional DICOM, and ``report.json`` with
scores per series against the fully sampled reference, the zero-filled
input's scores, frame latency and throughput. A short table is printed.

For a two-contrast exam (``brain``, an M4Raw folder, ``ref.png+tgt.png``)
the reference contrast is sent fully sampled and the mask applies to the
target; ``--contrasts stream`` sends both in one session (reference
first), ``--contrasts sessions`` as two scans of one exam.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np

from models.masks import FAMILIES, achieved_acceleration, acs_lines, line_mask

from .acquire import ORDERS, acquisitions, exam_acquisitions, normalise_mask, schedule
from .client import Pacing, StreamResult, run_session
from .faults import StreamFault, drop_readouts, duplicate_readouts, reorder_readouts
from .header import make_header
from .readers import read_mask_file
from .results import (by_series, format_table, frame_latencies_ms, image_array, percentiles, save_dicom, save_images_h5,
                      save_pictures, score_frames, summarise, write_report, zero_filled_images)
from .scan import Scan
from .sources import load_source

log = logging.getLogger("streamrecon.replay")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrecon replay", description=__doc__.splitlines()[0])
    p.add_argument("source", help="phantom name (cine, brain), file, M4Raw folder, or ref+target image files")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9002)
    p.add_argument("--pipeline", required=True, help="pipeline name sent as CONFIG_FILE (e.g. cine_conventional.xml)")
    p.add_argument("--config-text", type=Path, help="send this pipeline XML as CONFIG_TEXT instead of a name")
    p.add_argument("--accel", type=float, default=1.0, help="net acceleration (ACS included); 1 = fully sampled")
    p.add_argument("--mask", default="uniform", help=f"mask family ({', '.join(FAMILIES)}), 'file' (the data's own), or a mask file")
    p.add_argument("--acs", type=int, default=24, help="ACS lines (CMRxRecon families, vd-random)")
    p.add_argument("--center-fraction", type=float, help="centre fraction (fastMRI families)")
    p.add_argument("--order", choices=ORDERS, default="realtime")
    p.add_argument("--segments", type=int, default=8, help="heartbeats per breath-hold (segmented order)")
    p.add_argument("--frame-ms", type=float, help="frame duration; also paces the stream (block per frame)")
    p.add_argument("--pacing", choices=("asap", "timestamps", "frame"), help="default: frame with --frame-ms, else asap")
    p.add_argument("--scanners", type=int, default=1)
    p.add_argument("--contrasts", choices=("stream", "sessions"), default="stream")
    p.add_argument("--lookahead", type=int, default=0, help="frames after t a frame's output needs, for images that do not name their Window in meta")
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--matrix", type=int, help="phantom/image matrix size")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--slices", type=int, default=1)
    p.add_argument("--noise", type=float, default=0.0, help="complex k-space noise std (simulated sources)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault", help="drop:F | duplicate:F | reorder:W | truncate:N | cut:N | corrupt-header")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--dicom", action="store_true", help="also write DICOM (needs pydicom)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    return p


def _masks(scans: list[Scan], args) -> list[np.ndarray | None]:
    """One mask per scan; for an exam the reference contrast stays fully sampled."""
    out: list[np.ndarray | None] = []
    for i, scan in enumerate(scans):
        if len(scans) > 1 and i == 0:
            out.append(None)
            continue
        if args.mask == "file":
            if scan.file_mask is None:
                raise SystemExit(f"--mask file: {scan.name} carries no mask")
            out.append(scan.file_mask)
        elif Path(args.mask).suffix in (".mat", ".npy"):
            out.append(read_mask_file(args.mask, scan.ny, scan.frames))
        elif args.accel <= 1:
            out.append(None)
        else:
            out.append(line_mask(args.mask, scan.ny, scan.frames, accel=args.accel, acs=args.acs, seed=args.seed + i,
                                 center_fraction=args.center_fraction))
    return out


def _calib(mask: np.ndarray | None, ny: int) -> tuple[int, int] | None:
    if mask is None:
        return None
    n = acs_lines(mask)
    if n < 2:
        return None
    start = ny // 2
    m = np.asarray(mask).reshape(-1, ny).all(axis=0)
    while start > 0 and m[start - 1]:
        start -= 1
    return start, start + n


def _items(scans, masks, args, which: list[int]):
    """The readouts of the scans ``which`` (one session), with item faults applied."""
    sel = [scans[i] for i in which]
    msk = [masks[i] for i in which]
    calib = _calib(msk[-1], sel[-1].ny)
    if len(sel) == 1:
        items = acquisitions(sel[0], msk[0], order=args.order, calib_lines=calib, segments=args.segments)
    else:
        items = exam_acquisitions(sel, msk, order=args.order, calib_lines=calib, segments=args.segments)
    if args.fault:
        kind, _, val = args.fault.partition(":")
        if kind == "drop":
            items = drop_readouts(items, fraction=float(val or 0.05), seed=args.seed)
        elif kind == "duplicate":
            items = duplicate_readouts(items, fraction=float(val or 0.05), seed=args.seed)
        elif kind == "reorder":
            items = reorder_readouts(items, window=int(val or 4), seed=args.seed)
    return items, calib


def _wire_fault(args) -> StreamFault | None:
    if not args.fault:
        return None
    kind, _, val = args.fault.partition(":")
    if kind in ("truncate", "cut"):
        return StreamFault(kind, at=int(val or 10))
    if kind == "corrupt-header":
        return StreamFault(kind)
    if kind in ("drop", "duplicate", "reorder"):
        return None
    raise SystemExit(f"unknown fault {args.fault!r}")


def _sessions(scans: list[Scan], args) -> list[list[int]]:
    if len(scans) > 1 and args.contrasts == "sessions":
        return [[i] for i in range(len(scans))]
    return [list(range(len(scans)))]


def _run_scanner(scans, masks, args, config_text, progress, results: list, slot: int) -> None:
    pacing = Pacing("asap")
    mode = args.pacing or ("frame" if args.frame_ms else "asap")
    if mode == "frame":
        pacing = Pacing.per_frame(args.frame_ms or scans[0].frame_ms)
    elif mode == "timestamps":
        pacing = Pacing("timestamps")
    session_results = []
    for which in _sessions(scans, args):
        items, calib = _items(scans, masks, args, which)
        accel = achieved_acceleration(normalise_mask(scans[which[-1]], masks[which[-1]]))
        header = make_header(scans[which[0]], accel=accel, calib_lines=(calib[1] - calib[0]) if calib else 0,
                             n_contrasts=max(s.contrast for s in scans) + 1)
        kw = {"config_text": config_text} if config_text else {"config_file": args.pipeline}
        res = run_session(args.host, args.port, header=header, items=items, pacing=pacing, timeout=args.timeout,
                          fault=_wire_fault(args), on_sent=(lambda _i: progress.update(1)) if progress is not None else None, **kw)
        session_results.append(res)
    results[slot] = session_results


def _merge(results: list[StreamResult]) -> StreamResult:
    """One scanner's sessions (separate contrasts) seen as one stream for scoring and latency."""
    if len(results) == 1:
        return results[0]
    m = StreamResult()
    for r in results:
        m.images += r.images
        m.image_times += r.image_times
        m.texts += r.texts
        m.errors += r.errors
        m.send_times.update(r.send_times)
        m.readouts_sent += r.readouts_sent
        m.bytes_sent += r.bytes_sent
    m.closed = all(r.closed for r in results)
    m.t_start, m.t_end = results[0].t_start, results[-1].t_end
    m.paced_block_ms = results[-1].paced_block_ms
    return m


def replay(args) -> tuple[dict, int]:
    kw = dict(n_coils=args.coils, seed=args.seed, noise_std=args.noise, frames=args.frames, slices=args.slices,
              matrix=args.matrix, ny=args.matrix, nx=args.matrix)
    if args.order == "segmented":
        kw["time_dimension"] = "phase"
    if args.frame_ms:
        kw["frame_ms"] = args.frame_ms
    scans = load_source(args.source, **{k: v for k, v in kw.items() if v is not None})
    if args.frame_ms:
        for s in scans:
            s.frame_ms = args.frame_ms
    masks = _masks(scans, args)
    config_text = args.config_text.read_text() if args.config_text else None
    n_readouts = sum(len(schedule(s, m, order=args.order, segments=args.segments)) for s, m in zip(scans, masks)) * args.scanners
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=n_readouts, unit="readout", desc="replay", file=sys.stderr, leave=False)
    results: list = [None] * args.scanners
    t0 = time.perf_counter()
    threads = [threading.Thread(target=_run_scanner, args=(scans, masks, args, config_text, progress, results, i), daemon=True)
               for i in range(args.scanners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if progress is not None:
        progress.close()
    merged = [_merge(r) for r in results]
    return _report(args, scans, masks, merged, wall)


def _report(args, scans, masks, merged: list[StreamResult], wall: float) -> tuple[dict, int]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    target = scans[-1]
    accel = achieved_acceleration(normalise_mask(target, masks[-1]))
    zf = zero_filled_images(target, masks[-1])
    zf_rows = score_frames({(s, target.contrast, t): zf[s, t] for s in range(target.slices) for t in range(target.frames)}, [target])
    series_rows: dict[int, list[dict]] = {}
    first = merged[0]
    series = by_series(first.images)
    for idx, imgs in sorted(series.items()):
        series_rows[idx] = score_frames({k: np.abs(image_array(im)) for k, im in imgs.items()}, scans)
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
    sent_frames = sum(len(r.send_times) for r in merged)
    report = {
        "pipeline": args.pipeline,
        "source": args.source,
        "order": args.order,
        "mask": args.mask if args.accel > 1 or args.mask == "file" else "none",
        "acceleration": accel,
        "acs_lines": acs_lines(normalise_mask(target, masks[-1])),
        "scanners": args.scanners,
        "lookahead": args.lookahead,
        "frames": primary["frames"],
        "frames_expected": expected,
        "psnr": primary["psnr"],
        "ssim": primary["ssim"],
        "nmse": primary["nmse"],
        "scoring": "magnitude vs fully sampled reference, no rescaling, data range = reference max (fastMRI)",
        "series": {str(k): {"name": _series_name(series[k]), **summarise(target_rows(v)),
                            "latency_ms": percentiles(lat_by_series.get(k, [])), "per_frame": v}
                   for k, v in series_rows.items()},
        "zero_filled": {**summarise(zf_rows), "per_frame": zf_rows},
        "latency_ms": percentiles(lat_all),
        "throughput": {
            "wall_s": wall,
            "frames_per_s": sum(len(r.images) for r in merged) / max(wall, 1e-9),
            "readouts_sent": sum(r.readouts_sent for r in merged),
            "mb_sent": sum(r.bytes_sent for r in merged) / 1e6,
            "frames_sent": sent_frames,
        },
        "pacing_measured_ms": first.paced_block_ms,
        "host_messages": [t for r in merged for t in r.texts] + [f"ERROR {e}" for r in merged for e in r.errors],
        "closed_by_host": [r.closed for r in merged],
    }
    save_images_h5(out / "images.h5", [im for r in merged for im in r.images])
    ref_c = target.contrast
    for s in range(target.slices):
        rows = {"reference": np.abs(target.reference[s]), "zero-filled": np.abs(zf[s])}
        for idx, imgs in sorted(series.items()):
            frames = [np.abs(image_array(imgs[(s, ref_c, t)])) for t in range(target.frames) if (s, ref_c, t) in imgs]
            if frames and frames[0].shape == rows["reference"].shape[-2:]:
                rows[f"series{idx}"] = np.stack(frames)
        save_pictures(out, rows, f"slice{s:02d}")
    if args.dicom:
        try:
            report["dicom_files"] = save_dicom(out, first.images, scans)
        except ImportError:
            report["dicom_files"] = "pydicom not installed (pip install streamrecon[dicom])"
    write_report(out / "report.json", report)
    ok = primary["frames"] == expected * 1 and not report["host_messages"]
    return report, 0 if ok else 1


def _series_name(images: dict) -> str:
    """What the host called a series (its ImageSeriesDescription), for the table."""
    for im in images.values():
        try:
            return str(im.meta.get("ImageSeriesDescription", ""))
        except Exception:
            return ""
    return ""


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report, code = replay(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"streamrecon replay: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"wrote {args.out / 'report.json'}")
    return code


__all__ = ["main", "build_parser", "replay"]
