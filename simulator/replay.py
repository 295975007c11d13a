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
import sys
import threading
import time
from pathlib import Path


from models.masks import FAMILIES
from pipelines.cli_help import HelpFormatter

from .acquire import ORDERS
from .client import Interrupt, StreamResult
from .replay_report import is_informational, write_report_files
from .replay_streams import (DEFAULT_ACS, Progress, ReplayError, merge_sessions, readouts_to_send, replay_masks,
                             run_scanner, session_stream, sessions, wait_for_scanners, wire_fault)
from .results import format_table
from .scan import Scan
from .sources import load_source
from .writers import write_dataset

log = logging.getLogger("streamrecon.replay")


PIPELINE_HELP = "pipeline name sent as CONFIG_FILE; `streamrecon pipelines` lists them"


def pipeline_names() -> str:
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
    names = pipeline_names()
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
    masks = replay_masks(scans, args, notes)
    wire_fault(args)  # an unknown fault is refused before anything is sent
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.to_file is not None:
        return _write_scan_file(scans, masks, args), 0
    config_text = args.config_text.read_text() if args.config_text else None
    target = scans[-1]
    progress = Progress(readouts_to_send(scans, masks, args) * args.scanners, target.slices * target.frames,
                         enabled=not args.no_progress)
    results: list = [None] * args.scanners
    interrupt = Interrupt()
    t0 = time.perf_counter()
    finished = [threading.Event() for _ in range(args.scanners)]

    def scanner(i: int) -> None:
        try:
            run_scanner(scans, masks, args, config_text, progress, results, i, interrupt)
        finally:
            finished[i].set()

    for i in range(args.scanners):
        threading.Thread(target=scanner, args=(i,), name=f"scanner-{i}", daemon=True).start()
    interrupted = wait_for_scanners(finished, interrupt)
    wall = time.perf_counter() - t0
    progress.close()
    results = [r if r is not None else [StreamResult(interrupted=True)] for r in results]
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise ReplayError(f"no host at {args.host}:{args.port}; is `streamrecon serve` running? ({_os_reason(failed)})")
    merged = [merge_sessions(r) for r in results]
    for r in merged:
        r.interrupted = r.interrupted or interrupted
    refusal = None if interrupted else _refusal(merged)
    if refusal is not None:
        raise ReplayError(f"the host at {args.host}:{args.port} refused the scan: {refusal}")
    return write_report_files(args, scans, masks, merged, wall, notes)


def _write_scan_file(scans: list[Scan], masks, args) -> dict:
    """``--to-file``: the scan's first session (an exam in one stream) as an ISMRMRD dataset file."""
    header, items = session_stream(scans, masks, args, sessions(scans, masks, args)[0])
    path: Path = args.to_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return {"to_file": str(path), "readouts": write_dataset(path, header, items)}


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
