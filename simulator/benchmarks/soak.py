"""``streamrecon bench soak``: several scanners against one host for minutes; RSS, threads and fds sampled.

A ``streamrecon serve`` process (the production entry point, its default
limits) serves ``--scanners`` simulated scanners, each running real-time cine
sessions back to back at ``--frame-ms`` per frame for ``--minutes``. One
session in ``--hostile-every`` is a hostile one instead (seeded mutations of
a valid session: flipped bits, truncation, wrong ids and lengths, NaN/Inf
samples, dropped messages), and one in ``--idle-every`` opens a connection and
says nothing. Every ``--sample-s`` the host's resident memory, thread count
and open file descriptors are read from ``/proc``. The figures that matter:
whether RSS, threads and fds stay flat (no leak per session), and that every
good session still gets every image.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import numpy as np

from models.machine import machine
from models.masks import line_mask
from pipelines.processes import free_port, python_env, stop, wait_port
from simulator.acquire import acquisitions
from simulator.benchmarks import soak_dl
from simulator.benchmarks.soak_dl import proc_sample
from simulator.client import Pacing, run_session
from simulator.fuzz import exchange as _exchange, mutate as _mutate, valid_session as _valid_session
from simulator.header import make_header
from simulator.scan import phantom_scan


def main(argv: list[str]) -> int:
    if "--dl" in argv:  # the deep-learning pipelines, session by session: simulator/benchmarks/soak_dl.py

        return soak_dl.main(argv)
    p = argparse.ArgumentParser(prog="streamrecon bench soak", description=__doc__.splitlines()[0],
                                epilog="--dl: the deep-learning pipelines session by session (streamrecon bench soak --dl --help)")
    p.add_argument("--scanners", type=int, default=4)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--pipeline", default="cine_conventional", help="shipped pipeline the good sessions run")
    p.add_argument("--matrix", type=int, default=64)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--accel", type=float, default=4.0)
    p.add_argument("--frame-ms", type=float, default=40.0)
    p.add_argument("--hostile-every", type=int, default=3, help="every Nth session of a scanner is hostile (0: none)")
    p.add_argument("--idle-every", type=int, default=10, help="every Nth session opens a silent connection (0: none)")
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: extra `streamrecon serve` options")
    args = p.parse_args(argv)

    print(f"streamrecon bench soak  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"command: streamrecon bench soak {' '.join(argv)}")
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.2f} (1 min)")
    n = args.matrix
    scan = phantom_scan("cine", ny=n, nx=n, frames=args.frames, slices=1, n_coils=args.coils)
    mask = line_mask("kt-uniform", n, args.frames, accel=args.accel, acs=8)
    calib = (n // 2 - 8, n // 2 + 8)
    header, items = make_header(scan), list(acquisitions(scan, mask, calib_lines=calib))
    small = phantom_scan("cine", ny=16, nx=16, frames=2, slices=1, n_coils=2)
    fuzz_data, fuzz_starts = _valid_session(small)
    serve_args = [a for a in args.serve_args if a != "--"]
    print(f"scanners {args.scanners}, {args.minutes:g} min, pipeline {args.pipeline}, {n}x{n}, {args.coils} coils, "
          f"{args.frames} frames at {args.frame_ms:g} ms, R={args.accel:g}; hostile 1/{args.hostile_every}, "
          f"idle 1/{args.idle_every}; serve {' '.join(serve_args) or '(defaults)'}")

    port = free_port()
    host = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--log-level",
                             "ERROR", *serve_args], env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, host)
    stats = {"good": 0, "good_complete": 0, "hostile": 0, "hostile_closed": 0, "idle": 0, "errors": []}
    lock = threading.Lock()
    stop_at = time.monotonic() + args.minutes * 60
    samples = []

    def scanner(k: int) -> None:
        rng = np.random.default_rng(args.seed + k)
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            try:
                if args.idle_every and i % args.idle_every == 0:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    time.sleep(2.0)
                    s.close()
                    with lock:
                        stats["idle"] += 1
                elif args.hostile_every and i % args.hostile_every == 0:
                    _, closed, _ = _exchange(port, _mutate(fuzz_data, fuzz_starts, rng), timeout=60)
                    with lock:
                        stats["hostile"] += 1
                        stats["hostile_closed"] += closed
                else:
                    r = run_session("127.0.0.1", port, header=header, items=items, config_file=args.pipeline,
                                    pacing=Pacing.per_frame(args.frame_ms), timeout=300)
                    complete = r.closed and not r.texts and len(r.images) >= args.frames
                    with lock:
                        stats["good"] += 1
                        stats["good_complete"] += complete
                        if not complete:
                            stats["errors"].append(f"scanner {k}: {len(r.images)} images, texts {r.texts}")
            except Exception as exc:  # measured, not asserted: record and go on
                with lock:
                    stats["errors"].append(f"scanner {k}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=scanner, args=(k,), daemon=True) for k in range(args.scanners)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    print(f"\n{'t (s)':>6s} {'RSS MiB':>8s} {'threads':>7s} {'fds':>5s} {'good':>5s} {'hostile':>7s}")
    try:
        while any(t.is_alive() for t in threads):
            rss, nthreads, fds = proc_sample(host.pid)
            samples.append((time.monotonic() - t0, rss, nthreads, fds))
            with lock:
                print(f"{samples[-1][0]:6.0f} {rss:8.1f} {nthreads:7d} {fds:5d} {stats['good']:5d} {stats['hostile']:7d}",
                      flush=True)
            time.sleep(args.sample_s)
        for t in threads:
            t.join()
        time.sleep(2.0)  # let the last sessions' threads end
        rss, nthreads, fds = proc_sample(host.pid)
        samples.append((time.monotonic() - t0, rss, nthreads, fds))
        alive = host.poll() is None
    finally:
        stop(host)
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    print(f"\nsessions: {stats['good']} good ({stats['good_complete']} with every image, no error), "
          f"{stats['hostile']} hostile ({stats['hostile_closed']} answered with CLOSE), {stats['idle']} idle")
    print(f"host RSS {first[1]:.0f} -> {last[1]:.0f} MiB (max {max(s[1] for s in samples):.0f}); "
          f"threads {first[2]} -> {last[2]} (max {max(s[2] for s in samples)}); "
          f"fds {first[3]} -> {last[3]} (max {max(s[3] for s in samples)})")
    print(f"host still running at the end: {alive}")
    for e in stats["errors"][:10]:
        print("  error:", e)
    return 0
