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
import math
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import ismrmrd
import numpy as np

from models.masks import FAMILIES, achieved_acceleration, acs_lines, centre_run, line_mask, lines_in_every_frame

from .acquire import ORDERS, acquisitions, exam_acquisitions, normalise_mask, schedule
from .client import Interrupt, Pacing, StreamResult, run_session
from .faults import StreamFault, drop_readouts, duplicate_readouts, reorder_readouts
from .header import make_header
from .readers import read_mask_file
from .results import (by_series, fallback_of, format_table, frame_latencies_ms, image_array, intensity_ratio,
                      percentiles, save_dicom, save_images_h5, score_frames, summarise,
                      view_shared_images, write_report, zero_filled_images)
from .scan import RawStream, Scan
from .sources import load_source
from models.evaluation.strips import save_pictures
from pipelines.cli import HelpFormatter

log = logging.getLogger("streamrecon.replay")


PIPELINE_HELP = "pipeline name sent as CONFIG_FILE; `streamrecon pipelines` lists them"


def _pipeline_names() -> str:
    try:
        from pipelines.pipeline_config import pipeline_names
    except ImportError:  # a simulator-only install: the host's names are the host's business
        return ""
    return ", ".join(pipeline_names())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrecon replay", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("source", help="phantom name (cine, brain); a file (ISMRMRD, fastMRI, image .h5 such as Sunnybrook, "
                                  ".mat, NIfTI, PNG, .npy); a DICOM series or M4Raw folder; REFERENCE+TARGET; a "
                                  "selector picks inside: FILE.h5:DATASET[:SLICE], FOLDER:SERIES[:SLICE], FILE.mat:VARIABLE")
    p.add_argument("--host", default="127.0.0.1", help="address of the stream host (`streamrecon serve` or a Gadgetron)")
    p.add_argument("--port", type=int, default=9002, help="port of the stream host")
    names = _pipeline_names()
    p.add_argument("--pipeline", help="(required unless --to-file) " + PIPELINE_HELP + (f" (shipped: {names})" if names else ""))
    p.add_argument("--config-text", type=Path, metavar="XML_FILE",
                   help="a pipeline XML file whose text is sent as CONFIG_TEXT instead of the --pipeline name")
    p.add_argument("--accel", type=float, default=1.0,
                   help="net acceleration, ACS included, at least 1 (1 = fully sampled); an undersampled source keeps its own")
    p.add_argument("--mask", default=None,
                   help=f"mask family ({', '.join(FAMILIES)}; uniform when --accel > 1), 'file' (the data's own), or a mask file (.mat, .npy)")
    p.add_argument("--acs", type=int, default=None,
                   help=f"ACS lines (uniform, kt-uniform, kt-gaussian, vd-random); default {DEFAULT_ACS}, or half a frame's lines when fewer fit")
    p.add_argument("--center-fraction", type=float, help="centre fraction (equispaced, random); default 0.32/accel")
    p.add_argument("--order", choices=ORDERS, default="realtime", help="acquisition order")
    p.add_argument("--segments", type=_positive_int, default=8, help="heartbeats per breath-hold (segmented order)")
    p.add_argument("--frame-ms", type=_positive_float, help="frame duration in ms; also paces the stream (one block per frame); default: the source's")
    p.add_argument("--pacing", choices=("asap", "timestamps", "frame"), help="default: frame with --frame-ms, else asap")
    p.add_argument("--scanners", type=_positive_int, default=1, help="scanners streaming at once, one session each")
    p.add_argument("--contrasts", choices=("stream", "sessions"), default="stream",
                   help="two-contrast exams: both contrasts in one session, or one session each")
    p.add_argument("--lookahead", type=int, default=0, help="frames after t a frame's output needs, for images that do not name their Window in meta")
    p.add_argument("--coils", type=_positive_int, default=8, help="synthetic coils (phantoms and images)")
    p.add_argument("--matrix", type=_positive_int, help="phantom/image matrix size; default: phantom 128, images as they are")
    p.add_argument("--frames", type=_positive_int, default=20, help="phantom frames")
    p.add_argument("--slices", type=_positive_int, default=1, help="phantom slices")
    p.add_argument("--noise", type=float, default=0.0, help="complex k-space noise std (simulated sources)")
    p.add_argument("--seed", type=int, default=0, help="seed of phantoms, masks and faults")
    p.add_argument("--fault", help="drop:F | duplicate:F | reorder:W | truncate:N | cut:N | corrupt-header")
    p.add_argument("--timeout", type=_positive_float, default=120.0, help="seconds of host silence before a session is given up")
    p.add_argument("--dicom", action="store_true", help="also write DICOM into OUT/dicom (needs pydicom)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", type=Path, help="output folder (report.json, images.h5, pictures); required unless --to-file")
    p.add_argument("--to-file", type=Path, metavar="FILE.h5",
                   help="write the scan as an ISMRMRD raw file (header and the readouts that would be sent) instead "
                        "of sending it: for Gadgetron's or python-ismrmrd-server's own clients")
    return p


class ReplayError(Exception):
    """A request replay cannot carry out; the message is one line that says what to do."""


DEFAULT_ACS = 24
ACS_FAMILIES = ("uniform", "kt-uniform", "kt-gaussian", "vd-random")
INFORMATIONAL = re.compile(r"^\s*(DEBUG|INFO|NOTICE)\b", re.IGNORECASE)


def is_informational(text: str) -> bool:
    """A host TEXT that reports progress, not a failure (python-ismrmrd-server prefixes its levels)."""
    return bool(INFORMATIONAL.match(text))


def _check_args(args) -> None:
    """Refuse requests no scan can satisfy, before anything is loaded or sent."""
    if not (math.isfinite(args.accel) and args.accel >= 1):
        raise ReplayError(f"--accel {args.accel:g}: the net acceleration must be at least 1 (1 = fully sampled)")
    if args.acs is not None and args.acs < 0:
        raise ReplayError(f"--acs {args.acs}: the number of ACS lines cannot be negative")
    if args.center_fraction is not None and not 0 < args.center_fraction <= 1:
        raise ReplayError(f"--center-fraction {args.center_fraction:g}: must be in (0, 1]")
    if args.lookahead < 0:
        raise ReplayError(f"--lookahead {args.lookahead}: cannot be negative")
    if args.mask is not None and args.mask != "file" and args.mask not in FAMILIES and Path(args.mask).suffix not in (".mat", ".npy"):
        raise ReplayError(f"--mask {args.mask!r}: not a family ({', '.join(FAMILIES)}), 'file', or a .mat/.npy mask file")
    if args.pipeline is None and args.to_file is None:
        raise ReplayError("--pipeline NAME is required (`streamrecon pipelines` lists them)")
    if args.out is None and args.to_file is None:
        raise ReplayError("--out OUT is required (or --to-file FILE.h5 to write the scan instead of sending it)")
    if args.config_text is not None and not args.config_text.is_file():
        raise ReplayError(f"--config-text {args.config_text}: no such file (it takes a pipeline XML file)")


def _masks(scans: list[Scan], args, notes: list[str]) -> list[np.ndarray | None]:
    """One mask per scan; for an exam the reference contrast stays fully sampled.

    An undersampled source keeps exactly the lines it has. Requests the
    scan cannot satisfy are refused; where the mask must differ from the
    request (the ACS block or the acceleration rounded to whole lines), a
    line is added to ``notes``.
    """
    out: list[np.ndarray | None] = []
    for i, scan in enumerate(scans):
        if scan.acquired is not None:
            if args.accel != 1 or args.mask not in (None, "file"):
                raise ReplayError(f"{scan.name} is undersampled already (R={achieved_acceleration(normalise_mask(scan, scan.acquired)):.2f}); "
                                  "replay sends its own lines as they are: drop --accel and --mask")
            out.append(scan.acquired)
            continue
        if len(scans) > 1 and i == 0:
            out.append(None)
            continue
        if args.mask == "file":
            if scan.file_mask is None:
                raise ReplayError(f"--mask file: {scan.name} carries no mask")
            out.append(scan.file_mask)
        elif args.mask is not None and Path(args.mask).suffix in (".mat", ".npy"):
            out.append(read_mask_file(args.mask, scan.ny, scan.frames))
        elif args.accel == 1:
            if args.mask is not None:
                notes.append(f"--mask {args.mask} without --accel: sent fully sampled (--accel 1)")
            out.append(None)
        else:
            out.append(_family_mask(scan, args, i, notes))
    return out


def _family_mask(scan: Scan, args, index: int, notes: list[str]) -> np.ndarray:
    family = args.mask or "uniform"
    lo, hi = scan.encoded_lines or (0, scan.ny)
    lines = hi - lo
    if args.accel > lines:
        raise ReplayError(f"--accel {args.accel:g} is impossible with {lines} phase-encode lines: at most {lines} (one line a frame)")
    if args.acs is not None and args.acs > lines:
        raise ReplayError(f"--acs {args.acs} is impossible with {lines} phase-encode lines")
    acs = DEFAULT_ACS if args.acs is None else args.acs
    m = line_mask(family, scan.ny, scan.frames, accel=args.accel, acs=acs, seed=args.seed + index,
                  center_fraction=args.center_fraction)
    got = achieved_acceleration(m)
    per_frame = int(round(scan.ny / args.accel))
    if abs(got - args.accel) > 0.05 * args.accel:
        notes.append(f"--accel {args.accel:g}: {scan.ny} lines allow whole lines only; the mask achieves {got:.2f}x "
                     f"({per_frame} lines a frame)")
    have = acs_lines(m)
    if args.acs is not None and family in ACS_FAMILIES and have < args.acs:
        notes.append(f"--acs {args.acs}: at {args.accel:g}x a frame has {per_frame} of {scan.ny} lines; "
                     f"{have} of them are the ACS block, the rest spread outside it (lower --accel for more ACS)")
    return m


def _calib(mask: np.ndarray | None, ny: int) -> tuple[int, int] | None:
    if mask is None:
        return None
    start, stop = centre_run(lines_in_every_frame(np.asarray(mask).reshape(-1, ny)))
    return (start, stop) if stop - start >= 2 else None


def _raw_stream(scans: list[Scan], masks, which: list[int]) -> RawStream | None:
    """The file's own stream when the session replays a file as it was acquired (no mask of ours applied)."""
    raw = scans[which[0]].raw
    if raw is None or any(scans[i].raw is not raw or masks[i] is not scans[i].acquired for i in which):
        return None
    return raw


def _item_faults(items, args):
    if args.fault:
        kind, _, val = args.fault.partition(":")
        if kind == "drop":
            items = drop_readouts(items, fraction=float(val or 0.05), seed=args.seed)
        elif kind == "duplicate":
            items = duplicate_readouts(items, fraction=float(val or 0.05), seed=args.seed)
        elif kind == "reorder":
            items = reorder_readouts(items, window=int(val or 4), seed=args.seed)
    return items


def _session_stream(scans, masks, args, which: list[int]) -> tuple[object, list | object]:
    """``(header, readouts)`` of one session: a file's own XML and readouts, or the simulated scan's."""
    raw = _raw_stream(scans, masks, which)
    if raw is not None:
        return raw.xml, _item_faults(iter(raw.acquisitions), args)
    sel = [scans[i] for i in which]
    msk = [masks[i] for i in which]
    calib = _calib(msk[-1], sel[-1].ny)
    if len(sel) == 1:
        items = acquisitions(sel[0], msk[0], order=args.order, calib_lines=calib, segments=args.segments)
    else:
        items = exam_acquisitions(sel, msk, order=args.order, calib_lines=calib, segments=args.segments)
    accel = achieved_acceleration(normalise_mask(scans[which[-1]], masks[which[-1]]))
    header = make_header(scans[which[0]], accel=accel, calib_lines=(calib[1] - calib[0]) if calib else 0,
                         n_contrasts=max(s.contrast for s in scans) + 1)
    return header, _item_faults(items, args)


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
    raise ReplayError(f"unknown fault {args.fault!r} (drop:F, duplicate:F, reorder:W, truncate:N, cut:N, corrupt-header)")


def _sessions(scans: list[Scan], masks, args) -> list[list[int]]:
    everything = list(range(len(scans)))
    if len(scans) > 1 and args.contrasts == "sessions" and _raw_stream(scans, masks, everything) is None:
        return [[i] for i in everything]
    return [everything]


def _readouts_to_send(scans, masks, args) -> int:
    n = 0
    for which in _sessions(scans, masks, args):
        raw = _raw_stream(scans, masks, which)
        n += len(raw.acquisitions) if raw is not None else sum(
            len(schedule(scans[i], masks[i], order=args.order, segments=args.segments)) for i in which)
    return n


class _Progress:
    """Readouts sent, then the wait for the images still to come (the model series trail the scan)."""

    def __init__(self, readouts: int, frames_expected: int, enabled: bool) -> None:
        self.readouts = readouts
        self.frames = frames_expected
        self.images: dict[int, int] = {}
        self.lock = threading.Lock()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=readouts, unit="readout", desc="sending", file=sys.stderr, leave=False)

    def sent(self, _item: object) -> None:
        if self.bar is None:
            return
        with self.lock:
            self.bar.update(1)
            if self.bar.n >= self.readouts:
                self.bar.set_description("scan sent; waiting for images")

    def image(self, image: ismrmrd.Image) -> None:
        with self.lock:
            series = int(image.image_series_index)
            self.images[series] = self.images.get(series, 0) + 1
            if self.bar is not None:
                self.bar.set_postfix_str("images " + ", ".join(
                    f"series {k} {v}/{self.frames}" for k, v in sorted(self.images.items())))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_scanner(scans, masks, args, config_text, progress: _Progress, results: list, slot: int,
                 interrupt: Interrupt | None = None) -> None:
    pacing = Pacing("asap")
    mode = args.pacing or ("frame" if args.frame_ms else "asap")
    if mode == "frame":
        pacing = Pacing.per_frame(args.frame_ms or scans[0].frame_ms)
    elif mode == "timestamps":
        pacing = Pacing("timestamps")
    session_results = []
    try:
        for which in _sessions(scans, masks, args):
            if interrupt is not None and interrupt.stopped.is_set():
                break
            header, items = _session_stream(scans, masks, args, which)
            kw = {"config_text": config_text} if config_text else {"config_file": args.pipeline}
            res = run_session(args.host, args.port, header=header, items=items, pacing=pacing, timeout=args.timeout,
                              fault=_wire_fault(args), on_sent=progress.sent, on_image=progress.image,
                              interrupt=interrupt, **kw)
            session_results.append(res)
    except OSError as exc:  # no connection at all: nothing was sent
        results[slot] = exc
        return
    results[slot] = session_results


def _wait(finished: list[threading.Event], interrupt: Interrupt) -> bool:
    """Wait for every scanner; Ctrl-C stops the sending (the images of what was sent still come), a
    second Ctrl-C stops the waiting. Returns whether it was interrupted. Nothing received is lost: the
    report and images are written either way.

    Waits on events, not ``Thread.join``: a join interrupted by Ctrl-C marks a running thread as
    stopped (CPython's bpo-45274 handling), and the next join would return at once."""
    def wait_all() -> None:
        for event in finished:
            while not event.wait(0.5):
                pass

    try:
        wait_all()
        return False
    except KeyboardInterrupt:
        interrupt.stop()
        print("\nstreamrecon replay: interrupted; no more readouts are sent. Waiting for the images of those "
              "already sent (Ctrl-C again to stop waiting); the report keeps what came back", file=sys.stderr)
    try:
        wait_all()
    except KeyboardInterrupt:
        interrupt.abort()
        for event in finished:
            event.wait(10.0)
    return True


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
    m.stopped_early = any(r.stopped_early for r in results)
    m.send_error = next((r.send_error for r in results if r.send_error), None)
    m.receive_error = next((r.receive_error for r in results if r.receive_error), None)
    m.timed_out = any(r.timed_out for r in results)
    m.interrupted = any(r.interrupted for r in results)
    m.t_start, m.t_end = results[0].t_start, results[-1].t_end
    m.paced_block_ms = results[-1].paced_block_ms
    return m


def replay(args) -> tuple[dict, int]:
    _check_args(args)
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
    for s in scans:
        for note in s.notes:
            print(f"source: {note}", file=sys.stderr)
    notes: list[str] = []
    masks = _masks(scans, args, notes)
    _wire_fault(args)  # an unknown fault is refused before anything is sent
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.to_file is not None:
        return _write_scan_file(scans, masks, args), 0
    config_text = args.config_text.read_text() if args.config_text else None
    target = scans[-1]
    progress = _Progress(_readouts_to_send(scans, masks, args) * args.scanners, target.slices * target.frames,
                         enabled=not args.no_progress)
    results: list = [None] * args.scanners
    interrupt = Interrupt()
    t0 = time.perf_counter()
    finished = [threading.Event() for _ in range(args.scanners)]

    def scanner(i: int) -> None:
        try:
            _run_scanner(scans, masks, args, config_text, progress, results, i, interrupt)
        finally:
            finished[i].set()

    for i in range(args.scanners):
        threading.Thread(target=scanner, args=(i,), name=f"scanner-{i}", daemon=True).start()
    interrupted = _wait(finished, interrupt)
    wall = time.perf_counter() - t0
    progress.close()
    results = [r if r is not None else [StreamResult(interrupted=True)] for r in results]
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise ReplayError(f"no host at {args.host}:{args.port}; is `streamrecon serve` running? ({_os_reason(failed)})")
    merged = [_merge(r) for r in results]
    for r in merged:
        r.interrupted = r.interrupted or interrupted
    refusal = None if interrupted else _refusal(merged)
    if refusal is not None:
        raise ReplayError(f"the host at {args.host}:{args.port} refused the scan: {refusal}")
    return _report(args, scans, masks, merged, wall, notes)


def _write_scan_file(scans: list[Scan], masks, args) -> dict:
    """``--to-file``: the scan's first session (an exam in one stream) as an ISMRMRD dataset file."""
    header, items = _session_stream(scans, masks, args, _sessions(scans, masks, args)[0])
    path: Path = args.to_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    n = 0
    try:
        dset.write_xml_header(header if isinstance(header, str) else header.toXML())
        for item in items:
            if isinstance(item, ismrmrd.Acquisition):
                dset.append_acquisition(item)
                n += 1
    finally:
        dset.close()
    return {"to_file": str(path), "readouts": n}


def _os_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _refusal(merged: list[StreamResult]) -> str | None:
    """The host's reason when it ended every session before any image (a refused pipeline, a bad header)."""
    if any(r.images for r in merged):
        return None
    reasons = [t for r in merged for t in r.texts if not is_informational(t)] + [e for r in merged for e in r.errors]
    if reasons and all(r.closed or r.stopped_early for r in merged):
        return reasons[0]
    return None


def session_end(r: StreamResult) -> str | None:
    """Why a session ended without the host's CLOSE (a cut connection, a killed host, a timeout); None if it closed."""
    if r.closed:
        return None
    why = [w for w in (r.send_error and f"sending failed: {r.send_error}",
                       r.receive_error and f"receiving failed: {r.receive_error}",
                       r.timed_out and "timed out waiting for the host") if w]
    return "the connection ended before the host's CLOSE" + (f" ({'; '.join(why)})" if why else "")


def _report(args, scans, masks, merged: list[StreamResult], wall: float, notes: list[str]) -> tuple[dict, int]:
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
        "acs_lines": (target.calibration_lines if target.calibration_lines and _raw_stream(scans, masks, [len(scans) - 1])
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
    report["warnings"] = _warnings(report)
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
        import ismrmrd.xsd

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


def _warnings(report: dict) -> list[str]:
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


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report, code = replay(args)
    except ReplayError as exc:
        print(f"streamrecon replay: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as exc:
        print(f"streamrecon replay: {one_line(exc)}", file=sys.stderr)
        return 2
    if "to_file" in report:
        print(f"wrote {report['readouts']} readouts and the header to {report['to_file']} (nothing sent)")
        return code
    print(format_table(report))
    for w in report["warnings"]:
        print(f"WARNING: {w}")
    print(f"wrote {len(report['files'])} outputs to {args.out}/: " + " ".join(Path(f).name for f in report["files"]))
    return code


def one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename:
        text = f"{exc.filename}: {exc.strerror or 'not found'}"
    return " ".join(str(text).split()) or type(exc).__name__


__all__ = ["main", "build_parser", "replay"]
