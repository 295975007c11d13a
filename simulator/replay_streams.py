"""What each simulated scanner of ``streamrecon replay`` sends, and how it waits for what comes back.

Masks per contrast (a mask family at ``--accel``, a mask file, or the file's
own sampling), the sessions of an exam (one stream, or one per contrast),
faults on the items or the wire, pacing, one thread per scanner with a
progress bar, and the sessions of one scanner merged into one result for
scoring. :mod:`simulator.replay` parses the command line and runs these;
:mod:`simulator.replay_report` scores and writes what came back.
"""
from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import ismrmrd
import numpy as np
from tqdm import tqdm

from models.masks import achieved_acceleration, acs_lines, centre_run, line_mask, lines_in_every_frame

from .acquire import acquisitions, exam_acquisitions, normalise_mask, schedule
from .client import Interrupt, Pacing, StreamResult, run_session
from .faults import StreamFault, drop_readouts, duplicate_readouts, reorder_readouts
from .header import make_header
from .readers import read_mask_file
from .scan import RawStream, Scan

log = logging.getLogger("streamrecon.replay")


class ReplayError(Exception):
    """A request replay cannot carry out; the message is one line that says what to do."""


DEFAULT_ACS = 24
ACS_FAMILIES = ("uniform", "kt-uniform", "kt-gaussian", "vd-random")


def replay_masks(scans: list[Scan], args, notes: list[str]) -> list[np.ndarray | None]:
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


def raw_stream(scans: list[Scan], masks, which: list[int]) -> RawStream | None:
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


def session_stream(scans, masks, args, which: list[int]) -> tuple[object, list | object]:
    """``(header, readouts)`` of one session: a file's own XML and readouts, or the simulated scan's."""
    raw = raw_stream(scans, masks, which)
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


def wire_fault(args) -> StreamFault | None:
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


def sessions(scans: list[Scan], masks, args) -> list[list[int]]:
    everything = list(range(len(scans)))
    if len(scans) > 1 and args.contrasts == "sessions" and raw_stream(scans, masks, everything) is None:
        return [[i] for i in everything]
    return [everything]


def readouts_to_send(scans, masks, args) -> int:
    n = 0
    for which in sessions(scans, masks, args):
        raw = raw_stream(scans, masks, which)
        n += len(raw.acquisitions) if raw is not None else sum(
            len(schedule(scans[i], masks[i], order=args.order, segments=args.segments)) for i in which)
    return n


class Progress:
    """Readouts sent, then the wait for the images still to come (the model series trail the scan)."""

    def __init__(self, readouts: int, frames_expected: int, enabled: bool) -> None:
        self.readouts = readouts
        self.frames = frames_expected
        self.images: dict[int, int] = {}
        self.lock = threading.Lock()
        self.bar = None
        if enabled:
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


def run_scanner(scans, masks, args, config_text, progress: Progress, results: list, slot: int,
                 interrupt: Interrupt | None = None) -> None:
    pacing = Pacing("asap")
    mode = args.pacing or ("frame" if args.frame_ms else "asap")
    if mode == "frame":
        pacing = Pacing.per_frame(args.frame_ms or scans[0].frame_ms)
    elif mode == "timestamps":
        pacing = Pacing("timestamps")
    session_results = []
    try:
        for which in sessions(scans, masks, args):
            if interrupt is not None and interrupt.stopped.is_set():
                break
            header, items = session_stream(scans, masks, args, which)
            kw = {"config_text": config_text} if config_text else {"config_file": args.pipeline}
            res = run_session(args.host, args.port, header=header, items=items, pacing=pacing, timeout=args.timeout,
                              fault=wire_fault(args), on_sent=progress.sent, on_image=progress.image,
                              interrupt=interrupt, **kw)
            session_results.append(res)
    except OSError as exc:  # no connection at all: nothing was sent
        results[slot] = exc
        return
    results[slot] = session_results


def wait_for_scanners(finished: list[threading.Event], interrupt: Interrupt) -> bool:
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


def merge_sessions(results: list[StreamResult]) -> StreamResult:
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


