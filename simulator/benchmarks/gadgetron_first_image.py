"""``streamrecon bench gadgetron``: first-image time under a real Gadgetron, execute vs connect, and the embedded host.

For each pipeline (default ``cine_conventional`` and ``kgmgt_cine``) the
same small cine scan is sent, unpaced, ``--repeats`` times to each of:

- Gadgetron 4.7.2 with the execute-mode pipeline (a fresh ``python -m
  gadgetron`` per node per scan: imports and model loading on every scan);
- the same execute-mode pipeline on a Gadgetron whose environment carries
  the operator setting ``inference_override=service``: still a fresh process
  per scan, but its model calls go to a warm ``streamrecon infer-server``
  (no torch import, no weight loading per scan);
- Gadgetron with the connect-mode pipeline (``*_connect.xml``) attached to a
  ``streamrecon gadget-server`` process started once, models preloaded;
- ``streamrecon serve`` (the embedded host, models preloaded).

Figure: from the session's first byte to the arrival of the first image of
the pipeline's last series (the KGMgT series for ``kgmgt_cine``), median and
range over the repeats, after one unmeasured warm-up scan per server. The
gadget-server uses the shipped connect pipelines' fixed ports (18001-18007).
Needs an installed Gadgetron (``../shared/tools/gadgetron/install.sh``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np

from models.masks import line_mask
from simulator.acquire import acquisitions
from models.machine import machine
from simulator.client import run_session
from pipelines.gadgetron.server import missing_reason, start_gadgetron
from simulator.header import make_header
from pipelines.processes import free_port, python_env, start_inference_service, stop, wait_port
from simulator.scan import phantom_scan


def _scan(matrix: int, frames: int, coils: int):
    scan = phantom_scan("cine", ny=matrix, nx=matrix, frames=frames, slices=1, n_coils=coils,
                        time_dimension="repetition")
    mask = line_mask("kt-gaussian", matrix, frames, accel=4, acs=16, seed=0)
    return make_header(scan, accel=4, calib_lines=16), list(acquisitions(scan, mask, calib_lines=(matrix // 2 - 8, matrix // 2 + 8)))


def first_image_s(port: int, pipeline: str, header, items, series: int) -> tuple[float, int]:
    """Seconds from the session's start to the first image of ``series``; and the images received."""
    first: list[float] = []
    start = time.perf_counter()

    def on_image(image) -> None:
        if int(image.image_series_index) == series and not first:
            first.append(time.perf_counter())

    result = run_session("127.0.0.1", port, header=header, items=items, config_file=pipeline, timeout=180,
                         on_image=on_image)
    if result.errors or result.texts or not first:
        raise RuntimeError(f"{pipeline} on port {port}: {result.errors or result.texts or 'no image of series %d' % series}")
    return first[0] - start, len(result.images)


def _spawn(args: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=python_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, timeout=300)
    return proc


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon bench gadgetron", description=__doc__.splitlines()[0])
    p.add_argument("--pipelines", default="cine_conventional,kgmgt_cine")
    p.add_argument("--matrix", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    reason = missing_reason()
    if reason:
        print(f"streamrecon bench gadgetron: {reason}", file=sys.stderr)
        return 2
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.2f} (1 min)")
    print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; scan: cine phantom {args.matrix}x{args.matrix}, "
          f"{args.coils} coils, {args.frames} frames, kt-Gaussian R=4, unpaced; {args.repeats} repeats after a warm-up")
    header, items = _scan(args.matrix, args.frames, args.coils)
    host_port = free_port()
    host = _spawn(["serve", "--port", str(host_port), "--log-level", "WARNING"], host_port)
    gadgets = _spawn(["gadget-server", "--log-level", "WARNING"], 18001)
    service = start_inference_service([])
    gadgetron = start_gadgetron()
    warm_gadgetron = start_gadgetron(env={"STREAMRECON_INFERENCE_OVERRIDE": "service",
                                          "STREAMRECON_INFERENCE_ENDPOINT": service[1]})
    try:
        rows = []
        for name in args.pipelines.split(","):
            series = 1 if name.startswith(("kgmgt", "sgfmri")) else 0
            modes = {"Gadgetron, execute": (gadgetron.port, f"{name}.xml"),
                     "execute + service": (warm_gadgetron.port, f"{name}.xml"),
                     "Gadgetron, connect": (gadgetron.port, f"{name}_connect.xml"),
                     "embedded host": (host_port, f"{name}.xml")}
            for mode, (port, pipeline) in modes.items():
                if mode not in ("Gadgetron, execute", "execute + service"):  # warm servers: one unmeasured scan first
                    first_image_s(port, pipeline, header, items, series)
                times = [first_image_s(port, pipeline, header, items, series)[0] for _ in range(args.repeats)]
                rows.append((name, mode, times))
                print(f"{name:20s} {mode:20s} first image of series {series}: median {np.median(times) * 1000:7.0f} ms "
                      f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, n={len(times)})", flush=True)
        for name in args.pipelines.split(","):
            med = {mode: np.median(t) for n, mode, t in rows if n == name}
            print(f"{name}: connect / embedded = {med['Gadgetron, connect'] / med['embedded host']:.2f}x, "
                  f"execute / embedded = {med['Gadgetron, execute'] / med['embedded host']:.2f}x")
    finally:
        gadgetron.stop()
        warm_gadgetron.stop()
        stop(service[0])
        stop(gadgets)
        stop(host)
    print(f"load average at end {os.getloadavg()[0]:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
