"""``streamrecon bench stream``: frame latency and throughput of the deep-learning cine pipelines.

Figures, one run, one machine:

1. Frame latency of ``kgmgt_cine`` (centered) and ``kgmgt_cine_causal``:
   the built-in cine phantom and the real cine (``giraf_sax_cine25.mat`` in
   the shared data folder) replayed in real time at ``--frame-ms`` per frame
   through the embedded host (model in process, already loaded). Latency per
   docs/design.md: from sending the last readout the frame's output needs (frame
   t+1 for centered, t for causal) to the image's arrival; p50/p95/max, for
   the KGMgT series and, for comparison, the conventional series (no
   look-ahead). Also the model's own time per call (``InferenceMs`` meta).
2. First-image latency, cold start: a fresh ``streamrecon serve`` process
   per scan (as Gadgetron starts a fresh Python process per scan), with the
   model loaded by the gadget (``kgmgt_cine``) or reached in an already
   running ``streamrecon infer-server`` (``kgmgt_cine_service``). Reported:
   from the session's first byte, and from the readout the first model image
   needs, to its arrival.
3. Throughput: 1, 2 and 4 scanners at once, unpaced, in-process and through
   the service: model images per second over the wall time.

Without shipped weights (``models/weights/kgmgt_cine_small``) the run uses
an untrained network of the same architecture and says so: timings are
then valid, image quality is not.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gadgets import host_settings
from models import registry
from models.machine import machine
from models.masks import line_mask
from models.shared_data import shared_data_dir
from pipelines.host import StreamHost
from pipelines.inference_client import health
from pipelines.pipeline_config import shipped_pipeline_with
from pipelines.processes import free_port, python_env, stop, wait_port
from pipelines.session import SessionOptions
from simulator.acquire import acquisitions
from simulator.benchmarks import record_path, scan_arguments
from simulator.client import Pacing, run_session, run_sessions_at_once
from simulator.header import make_header
from simulator.results import frame_latencies_ms, percentiles
from simulator.scan import phantom_scan
from simulator.sources import load_source

ROOT = Path(__file__).resolve().parents[2]




def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon bench stream", description=__doc__.splitlines()[0])
    scan_arguments(p, matrix=64, frames=24, coils=8)
    p.add_argument("--accel", type=float, default=4.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--sources", default="phantom,real", help="phantom and/or real (the shared real cine)")
    p.add_argument("--scanners", default="1,2,4")
    p.add_argument("--throughput-frames", type=int, default=8)
    p.add_argument("--skip-cold", action="store_true")
    p.add_argument("--cine-weights", "--kgmgt-weights", default="",
                   help="the cine model's .safetensors (default: its registered set; untrained stand-in if absent)")
    args = p.parse_args(argv)

    logging.getLogger("pipelines.inference_client").setLevel(logging.ERROR)  # health polling while it starts

    cine_model = registry.default_model("cine")  # what the cine pipelines stream when they name no model
    weights = args.cine_weights or str(registry.get(cine_model).weights_path())
    trained = Path(weights).with_suffix(".safetensors").exists()
    # host operator settings (never pipeline properties): the in-process host's options, the child hosts' flags
    chosen = f"{cine_model}={weights}"
    operator = {"device": args.device, **({"model_weights": chosen} if trained else {"allow_random": True})}
    serve_flags = ["--device", args.device] + (["--model-weights", chosen] if trained else ["--allow-random"])
    gadget_props: dict = {}
    module = "gadgets.cine_kgmgt"
    n = args.matrix
    calib = (n // 2 - 3 * n // 16, n // 2 + 3 * n // 16)

    print(f"streamrecon bench stream  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"command: streamrecon bench stream {' '.join(argv)}")
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.2f} (1 min)")
    print(f"weights: {record_path(weights) if trained else 'NONE SHIPPED: untrained KGMgT cpu_small stand-in (timing only)'}")
    print(f"scan: {n}x{n}, {args.coils} coils, 1 slice, {args.frames} frames, kt-uniform R={args.accel:g}, "
          f"calibration lines {calib[0]}..{calib[1] - 1} before frame 0, real time at {args.frame_ms:g} ms/frame")

    scans = {}
    for src in args.sources.split(","):
        if src == "phantom":
            scans["phantom cine"] = phantom_scan("cine", ny=n, nx=n, frames=args.frames, slices=1, n_coils=args.coils,
                                                 frame_ms=args.frame_ms)
        elif src == "real":
            path = shared_data_dir() / "cine" / "giraf_sax_cine25.mat"
            if not path.exists():
                print(f"real cine: {path} absent, skipped")
                continue
            [scans["real cine (giraf sax)"]] = load_source(str(path), n_coils=args.coils, matrix=n,
                                                           max_frames=args.frames, frame_ms=args.frame_ms)

    def items(scan):
        mask = line_mask("kt-uniform", scan.ny, scan.frames, accel=args.accel, acs=8)
        return make_header(scan), list(acquisitions(scan, mask, calib_lines=calib)), scan.frames

    host = StreamHost("127.0.0.1", 0, SessionOptions(operator=host_settings.load().with_values(**operator)),
                      idle_timeout_s=120)
    host.preload_pipelines()
    host.start_background()
    record: dict = {}
    try:
        # warm the in-process model once (its load is measured separately, cold start below)
        warm = phantom_scan("cine", ny=n, nx=n, frames=3, slices=1, n_coils=args.coils)
        header, acqs, _ = items(warm)
        t0 = time.perf_counter()
        run_session("127.0.0.1", host.port, header=header, items=acqs,
                    config_text=shipped_pipeline_with("kgmgt_cine", module, **gadget_props))
        print(f"warm-up scan (loads the model into the host): {time.perf_counter() - t0:.1f} s")

        print("\n1. frame latency, real time, model in the host process (ms)")
        print(f"{'source':24s} {'mode':9s} {'KGMgT p50':>9s} {'p95':>8s} {'max':>8s} {'conv p50':>9s} {'model ms/call p50':>17s} {'fallbacks':>9s}")
        for name, scan in scans.items():
            header, acqs, _ = items(scan)
            for pipeline, mode, look in (("kgmgt_cine", "centered", 1), ("kgmgt_cine_causal", "causal", 0)):
                r = run_session("127.0.0.1", host.port, header=header, items=acqs,
                                config_text=shipped_pipeline_with(pipeline, module, **gadget_props),
                                pacing=Pacing.per_frame(args.frame_ms), timeout=600)
                lat = percentiles(frame_latencies_ms(r, series=1, lookahead=look))
                conv = percentiles(frame_latencies_ms(r, series=0, lookahead=0))
                model = [im for im in r.images if int(im.image_series_index) == 1]
                calls = [float(im.meta["InferenceMs"]) for im in model if "InferenceMs" in im.meta]
                fb = sum("Fallback" in im.meta for im in model)
                record[(name, mode)] = lat
                print(f"{name:24s} {mode:9s} {lat['p50']:9.0f} {lat['p95']:8.0f} {lat['max']:8.0f} {conv['p50']:9.0f} "
                      f"{np.median(calls) if calls else float('nan'):17.0f} {fb:9d}   ({len(model)} images, paced {r.paced_block_ms or 0:.1f} ms/frame)")

        scan = next(iter(scans.values()))
        header, acqs, _ = items(scan)
        service_proc = None
        if not args.skip_cold:
            print("\n2. first-image latency, cold start (fresh `streamrecon serve` process per scan)")
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            cmd = [sys.executable, "-m", "pipelines.cli", "infer-server", "--bind", endpoint, "--device", args.device,
                   "--models", cine_model, "--log-level", "WARNING"]
            cmd += ["--weights", f"{cine_model}={weights}"] if trained else ["--allow-random"]
            t0 = time.perf_counter()
            service_proc = subprocess.Popen(cmd, env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while True:
                try:
                    h = health(endpoint, timeout_ms=500)
                    break
                except Exception:
                    if service_proc.poll() is not None or time.perf_counter() - t0 > 300:
                        raise RuntimeError("inference service did not start")
                    time.sleep(0.2)
            print(f"inference service ready in {time.perf_counter() - t0:.1f} s (models loaded in {h['load_s']:.1f} s)")
            host.options.operator = host.options.operator.with_values(inference_endpoint=endpoint,
                                                                      inference_timeout_ms=120000)
            for label, xml in (("model loaded by the gadget", shipped_pipeline_with("kgmgt_cine", module, **gadget_props)),
                               ("warm inference service", shipped_pipeline_with("kgmgt_cine_service", module))):
                port = free_port()
                host_proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port),
                                              "--log-level", "WARNING", *serve_flags, "--inference-endpoint", endpoint,
                                              "--inference-timeout-ms", "60000"], env=python_env(),
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    wait_port(port, host_proc)
                    r = run_session("127.0.0.1", port, header=header, items=acqs, config_text=xml,
                                    pacing=Pacing.per_frame(args.frame_ms), timeout=600)
                finally:
                    stop(host_proc)
                first = next(i for i, im in enumerate(r.images) if int(im.image_series_index) == 1)
                im = r.images[first]
                need = r.send_times[(im.slice, im.contrast, min(im.repetition + 1, scan.frames - 1))]
                fb = sum("Fallback" in x.meta for x in r.images if int(x.image_series_index) == 1)
                lat = percentiles(frame_latencies_ms(r, series=1, lookahead=1))
                print(f"  {label:28s} first KGMgT image {(r.image_times[first] - r.t_start) * 1000:7.0f} ms after the "
                      f"session began, {(r.image_times[first] - need) * 1000:7.0f} ms after its last needed readout; "
                      f"all frames p50 {lat['p50']:.0f} / max {lat['max']:.0f} ms; fallbacks {fb}")
        print("\n3. throughput, unpaced, concurrent scanners (KGMgT images per second over the wall time)")
        small = phantom_scan("cine", ny=n, nx=n, frames=args.throughput_frames, slices=1, n_coils=args.coils)
        header, acqs, _ = items(small)
        backends = [("in-process", shipped_pipeline_with("kgmgt_cine", module, **gadget_props))]
        if service_proc is not None:
            backends.append(("service", shipped_pipeline_with("kgmgt_cine_service", module)))
        for label, xml in backends:
            for k in [int(x) for x in args.scanners.split(",")]:
                results, wall = run_sessions_at_once("127.0.0.1", host.port, k, header=header, items=acqs,
                                                     config_text=xml, timeout=600)
                model = [im for r in results for im in r.images if int(im.image_series_index) == 1]
                fb = sum("Fallback" in im.meta for im in model)
                batches = [int(im.meta.get("Batch", 1)) for im in model if "Batch" in im.meta]
                print(f"  {label:10s} {k} scanner(s): {len(model)} images in {wall:6.1f} s = {len(model) / wall:5.2f} images/s"
                      f"  (fallbacks {fb}, gadget batch p50 {np.median(batches) if batches else 0:.0f})")
        if service_proc is not None:
            counts = health(endpoint)["counts"]
            print(f"  service counters: {counts}")
            stop(service_proc)
    finally:
        host.shutdown()
        host.server_close()
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (1 min)")
    return 0
