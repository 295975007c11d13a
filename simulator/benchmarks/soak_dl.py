"""``streamrecon bench soak --dl``: the deep-learning pipelines, session after session, per-session host figures.

A ``streamrecon serve`` process (its models in process, preloaded) serves
``--sessions`` scans of one fixed small configuration, one after another,
for each pipeline of ``--pipelines`` (a fresh host per pipeline): KGMgT cine
(real-time phantom, kt-Gaussian) and SGF-MRI multi-contrast (a fully sampled
reference contrast then an equispaced target, the same patient every time,
so the host's reference store is used too; the store is a temporary folder).
After each session, once the session's threads have ended (or
``--settle-s`` passed), the host's resident memory, thread count and open
file descriptors are read from ``/proc``. What matters: after the warm-up
sessions, RSS, threads and fds stay flat (the slope of RSS over sessions,
in KiB a session, is printed), and every session gets every image.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from models.machine import machine
from models.masks import line_mask
from models.phantoms import brain_pair
from pipelines.processes import free_port, python_env, stop, wait_port
from simulator.acquire import acquisitions, exam_acquisitions
from simulator.client import Pacing, run_session
from simulator.header import make_header
from simulator.scan import phantom_scan, scan_from_images

PIPELINES = ("kgmgt_cine", "sgfmri_multicontrast")


def proc_sample(pid: int) -> tuple[float, int, int]:
    """(RSS MiB, threads, open fds) of process ``pid``, from ``/proc``."""
    rss, threads = 0.0, 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads, len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Session:
    """One scan to send: header, readouts, how many images must come back."""

    header: object
    items: list
    images: int


def session_for(pipeline: str, matrix: int, coils: int, frames: int) -> Session:
    """The fixed scan the soak sends to ``pipeline`` (``kgmgt_cine*`` or ``sgfmri_multicontrast*``)."""

    n = matrix
    if pipeline.startswith("kgmgt"):
        scan = phantom_scan("cine", ny=n, nx=n, frames=frames, slices=1, n_coils=coils)
        mask = line_mask("kt-gaussian", n, frames, accel=4, acs=8, seed=0)
        calib = (n // 2 - 4, n // 2 + 4)
        return Session(make_header(scan, accel=4, calib_lines=8), list(acquisitions(scan, mask, calib_lines=calib)),
                       2 * frames)
    if pipeline.startswith("sgfmri"):
        ref, tgt = brain_pair(n, seed=0)
        kw = dict(n_coils=coils, seed=0, fov_mm=(220.0, 220.0, 5.0), frame_ms=1000.0, frame_of_reference_uid="2.25.9090")
        scans = [scan_from_images(ref[None, None], name="brain_T1w", contrast=0, **kw),
                 scan_from_images(tgt[None, None], name="brain_T2w", contrast=1, **kw)]
        header = make_header(scans[1], n_contrasts=2)
        header.subjectInformation.patientID = "SOAK"
        mask = line_mask("equispaced", n, 1, accel=4, seed=0)
        # reference: series 0 (conventional) only; target: conventional + network
        return Session(header, list(exam_acquisitions(scans, [None, mask])), 3)
    raise ValueError(f"no soak session for pipeline {pipeline!r}; one of {', '.join(PIPELINES)}")


@dataclass
class SoakResult:
    pipeline: str
    samples: list = field(default_factory=list)   # (session, rss MiB, threads, fds, seconds, images)
    baseline: tuple = ()                           # (rss, threads, fds) before the first session
    failures: list = field(default_factory=list)

    def after(self, session: int) -> tuple[float, int, int]:
        s = self.samples[min(session, len(self.samples)) - 1]
        return s[1], s[2], s[3]

    def rss_slope_kib(self, warmup: int) -> float:
        """Least-squares slope of RSS over the sessions after ``warmup`` (KiB a session)."""
        pts = [(s[0], s[1]) for s in self.samples if s[0] > warmup]
        if len(pts) < 3:
            return float("nan")
        x, y = np.array(pts, dtype=float).T
        return float(np.polyfit(x, y, 1)[0] * 1024)


def _settle(pid: int, threads_before: int, seconds: float) -> tuple[float, int, int]:
    """Sample once the threads a session started have ended (or ``seconds`` passed)."""
    deadline = time.monotonic() + seconds
    sample = proc_sample(pid)
    while sample[1] > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
        sample = proc_sample(pid)
    return sample


def soak(pipeline: str, sessions: int, *, matrix: int = 32, coils: int = 4, frames: int = 6, frame_ms: float = 0.0,
         serve_args: list[str] | None = None, settle_s: float = 5.0, env: dict | None = None,
         progress: Callable[[tuple], None] | None = None) -> SoakResult:
    """Run ``sessions`` scans of ``pipeline`` one after another against a fresh ``streamrecon serve``."""

    scan = session_for(pipeline, matrix, coils, frames)
    result = SoakResult(pipeline)
    with tempfile.TemporaryDirectory(prefix="soak-store-") as store:
        child_env = {**python_env(), "STREAMRECON_REFERENCE_STORE": store, **(env or {})}
        port = free_port()
        host = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--log-level",
                                 "ERROR", *(serve_args or [])], env=child_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, host, timeout=300)
            result.baseline = _settle(host.pid, 10**6, 0.0)
            for i in range(1, sessions + 1):
                threads_before = proc_sample(host.pid)[1]
                t0 = time.perf_counter()
                r = run_session("127.0.0.1", port, header=scan.header, items=scan.items, config_file=pipeline,
                                pacing=Pacing.per_frame(frame_ms) if frame_ms > 0 else None, timeout=300)
                seconds = time.perf_counter() - t0
                if not (r.closed and not r.texts and len(r.images) == scan.images):
                    result.failures.append(f"session {i}: {len(r.images)}/{scan.images} images, texts {r.texts}, "
                                           f"errors {r.errors}")
                rss, threads, fds = _settle(host.pid, threads_before, settle_s)
                result.samples.append((i, rss, threads, fds, seconds, len(r.images)))
                if progress:
                    progress(result.samples[-1])
                if host.poll() is not None:
                    result.failures.append(f"host exited with {host.returncode} after session {i}")
                    break
        finally:
            stop(host)
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon bench soak --dl", description=__doc__.splitlines()[0])
    p.add_argument("--dl", action="store_true", help="(selects this benchmark in `streamrecon bench soak`)")
    p.add_argument("--pipelines", default=",".join(PIPELINES))
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10, help="sessions before the flatness is judged")
    p.add_argument("--matrix", type=int, default=64)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--frame-ms", type=float, default=36.0, help="pace the cine at this frame time (0: unpaced)")
    p.add_argument("--every", type=int, default=10, help="print every Nth session")
    p.add_argument("--json", default="", help="also write every sample to this JSON file")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: extra `streamrecon serve` options")
    args = p.parse_args(argv)

    serve_args = [a for a in args.serve_args if a != "--"]
    print(f"streamrecon bench soak --dl  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"command: streamrecon bench soak {' '.join(argv)}")
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.2f} (1 min)")
    print(f"{args.sessions} sessions a pipeline, one at a time, {args.matrix}x{args.matrix}, {args.coils} coils, "
          f"cine {args.frames} frames, {f'paced at {args.frame_ms:g} ms a frame' if args.frame_ms > 0 else 'unpaced'}; serve {' '.join(serve_args) or '(defaults)'}; fresh host per pipeline")
    out = {}
    for pipeline in [s.strip() for s in args.pipelines.split(",") if s.strip()]:
        print(f"\n{pipeline}\n{'session':>7s} {'RSS MiB':>8s} {'threads':>7s} {'fds':>5s} {'s':>6s} {'images':>6s}")

        def show(s: tuple) -> None:
            if s[0] == 1 or s[0] % args.every == 0:
                print(f"{s[0]:7d} {s[1]:8.1f} {s[2]:7d} {s[3]:5d} {s[4]:6.2f} {s[5]:6d}", flush=True)

        r = soak(pipeline, args.sessions, matrix=args.matrix, coils=args.coils, frames=args.frames,
                 frame_ms=args.frame_ms, serve_args=serve_args, progress=show)
        w = min(args.warmup, len(r.samples))
        rss_w, thr_w, fds_w = r.after(w) if r.samples else (0, 0, 0)
        rss_e, thr_e, fds_e = r.after(len(r.samples)) if r.samples else (0, 0, 0)
        print(f"before the first session: RSS {r.baseline[0]:.1f} MiB, threads {r.baseline[1]}, fds {r.baseline[2]}")
        print(f"after session {w} -> {len(r.samples)}: RSS {rss_w:.1f} -> {rss_e:.1f} MiB "
              f"(slope {r.rss_slope_kib(w):+.1f} KiB/session after warm-up); threads {thr_w} -> {thr_e}; "
              f"fds {fds_w} -> {fds_e}; sessions with every image {len(r.samples) - len(r.failures)}/{len(r.samples)}")
        for f in r.failures[:10]:
            print("  failure:", f)
        out[pipeline] = asdict(r) | {"rss_slope_kib_per_session": r.rss_slope_kib(w), "warmup": w}
    if args.json:
        Path(args.json).write_text(json.dumps({"command": f"streamrecon bench soak {' '.join(argv)}",
                                               "machine": machine(), "results": out}, indent=1))
    return 0
