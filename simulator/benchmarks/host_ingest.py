"""``streamrecon bench host``: ingest throughput and conventional frame latency.

Three figures, one run, one machine:

1. Ingest throughput of the embedded host: a multi-coil cine streamed over
   loopback into a chain whose only gadget consumes every item
   (``pipelines/ingest_sink.xml``): MB of acquisition messages per second,
   from the first byte sent to the host's CLOSE.
2. The same stream through ``gadgetron.external.Connection`` (the
   ``gadgetron`` package's external-module runtime, launched as
   ``python -m gadgetron PORT gadgets.passthrough consume``), i.e. what one
   Python gadget costs inside a real Gadgetron.
3. Frame latency of ``cine_conventional``: the cine replayed in real time
   at ``--frame-ms`` per frame; per frame, from sending its last readout to
   its image arriving (docs/design.md's definition; no look-ahead), p50/p95/max.
"""
from __future__ import annotations

import argparse
from datetime import datetime, timezone

import numpy as np

from models.machine import machine
from models.masks import line_mask
from pipelines.gadgetron.parent import run_external
from pipelines.host import StreamHost
from simulator.acquire import acquisitions
from simulator.benchmarks import scan_arguments
from simulator.client import Pacing, run_session
from simulator.header import make_header
from simulator.scan import phantom_scan


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon bench host", description=__doc__.splitlines()[0])
    scan_arguments(p, matrix=128, frames=20, coils=8)
    p.add_argument("--slices", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--accel", type=float, nargs="+", default=[1.0, 8.0],
                   help="accelerations for the latency runs (kt-gaussian masks with 16 ACS lines)")
    args = p.parse_args(argv)

    scan = phantom_scan("cine", ny=args.matrix, nx=args.matrix, frames=args.frames, slices=args.slices,
                        n_coils=args.coils)
    header = make_header(scan)
    acqs = list(acquisitions(scan))
    host = StreamHost("127.0.0.1", 0)
    host.preload_pipelines(models=False)
    host.start_background()
    print(f"streamrecon bench host  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    print(f"stream: {len(acqs)} readouts, {args.coils} coils x {scan.kx_encoded} samples, "
          f"{args.slices} slices x {args.frames} frames, {args.matrix}x{args.matrix} recon matrix")

    host_mbs, ext_mbs = [], []
    for _ in range(args.repeats):
        res = run_session("127.0.0.1", host.port, header=header, items=acqs, config_file="ingest_sink")
        assert res.closed and not res.texts, res.texts
        host_mbs.append(res.bytes_sent / 1e6 / (res.t_end - res.t_start))
        ext = run_external("gadgets.passthrough", "consume", None, header.toXML().encode(), acqs)
        assert not ext.errors and ext.returncode == 0, ext.errors or ext.stderr
        ext_mbs.append(ext.bytes_sent / 1e6 / ext.seconds)
    print(f"\ningest throughput (best of {args.repeats}, MB/s of ISMRMRD messages):")
    print(f"  embedded host (socket -> reader -> chain -> consume gadget): {max(host_mbs):8.1f}")
    print(f"  gadgetron.external.Connection (python -m gadgetron ... consume): {max(ext_mbs):8.1f}")

    print(f"\nconventional chain frame latency at {args.frame_ms:g} ms per frame "
          f"(last readout sent -> image received):")
    for accel in args.accel:
        mask = None if accel <= 1 else line_mask("kt-gaussian", scan.ny, args.frames, accel=accel, acs=16, seed=0)
        items = list(acquisitions(scan, mask))
        res = run_session("127.0.0.1", host.port, header=make_header(scan, accel=accel), items=items,
                          config_file="cine_conventional", pacing=Pacing(mode="frame", frame_ms=args.frame_ms))
        assert res.closed and len(res.images) == args.frames * args.slices, (len(res.images), res.texts)
        lat = np.array([(arrived - res.send_times[(im.slice, im.contrast, im.repetition)]) * 1e3
                        for im, arrived in zip(res.images, res.image_times)])
        rate = len(items) / (args.frames * args.slices * args.frame_ms / 1e3)  # one block per slice and frame
        print(f"  R={accel:<4g} ({rate:7.0f} readouts/s): p50 {np.percentile(lat, 50):6.1f} ms   "
              f"p95 {np.percentile(lat, 95):6.1f} ms   max {lat.max():6.1f} ms   ({len(lat)} frames)")
    host.shutdown()
    host.server_close()
    return 0
