"""``streamrecon bench backends``: concurrent scans through Triton, the ZeroMQ service and in-process inference.

The same KGMgT centred scans (the cine phantom, kt-uniform 4x) through
``kgmgt_cine`` (model in the host's process), ``kgmgt_cine_service`` (a
``streamrecon infer-server`` process) and ``kgmgt_cine_triton`` (a
``streamrecon triton-server`` process: Triton's gRPC and dynamic batcher),
1, 2 and 4 scans at once, each paced at ``--frame-ms``; every server on the
same device with one torch thread. Per backend and count: model images per
second over the wall time, the KGMgT series' frame latency (p50/p95/max),
fallbacks, and how the server batched (Triton: items per model execution
from its statistics; the service: its counters).

The Triton server runs from the Python named by ``--triton-python`` (default:
``$STREAMRECON_TRITON_PYTHON``, else ``.venv-triton``, built by ``make triton-env``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gadgets import host_settings
from models import registry
from models.machine import machine
from models.masks import line_mask
from pipelines.host import StreamHost
from pipelines.inference_client import health as service_health
from pipelines.pipeline_config import shipped_pipeline_with
from pipelines.processes import free_port, python_env, start_triton_server, stop, stop_group, triton_python
from pipelines.session import SessionOptions
from pipelines.triton_client import health as triton_health
from simulator.acquire import acquisitions
from simulator.benchmarks import record_path
from simulator.client import Pacing, run_session, run_sessions_at_once
from simulator.header import make_header
from simulator.results import frame_latencies_ms, percentiles
from simulator.scan import phantom_scan

RESULTS = Path(__file__).resolve().parent / "results"


def model_rate(row: dict[str, Any]) -> float:
    """KGMgT images per second over the wall time (fallback images, which carry a classical image, not counted)."""
    return round((row["images"] - row["fallbacks"]) / row["wall_s"], 2)


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# streamrecon bench backends, {record['date']}", "", f"Command: `{record['command']}`", "",
             f"Machine: {record['machine']}; load average {record['load_average_1min']:.2f} at start, "
             f"{record['load_average_end']:.2f} at end", "", f"Scan: {record['scan']}", ""]
    if record.get("note"):
        lines += [f"Note: {record['note']}", ""]
    lines += ["| backend | scans | KGMgT images/s (fallbacks not counted) | KGMgT latency p50 / p95 / max ms | "
              "fallbacks / images | batching |", "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        m = r["kgmgt_latency_ms"]
        lines.append(f"| {r['backend']} | {r['scans']} | {r['model_images_per_s']} | {m['p50']:.0f} / {m['p95']:.0f} / "
                     f"{m['max']:.0f} | {r['fallbacks']} / {r['images']} | {r['batching']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon bench backends", description=__doc__.splitlines()[0])
    p.add_argument("--matrix", type=int, default=64)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--frames", type=int, default=8, help="frames per scan")
    p.add_argument("--frame-ms", type=float, default=36.0)
    p.add_argument("--scans", default="1,2,4", help="concurrent scan counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", default="in-process,service,triton")
    p.add_argument("--triton-python", default="", help="Python with PyTriton (default: .venv-triton)")
    p.add_argument("--cine-weights", "--kgmgt-weights", default="",
                   help="the cine model's .safetensors (default: its registered set)")
    p.add_argument("--note", default="", help="a line for the record")
    p.add_argument("--out", default="", help="write JSON + Markdown here (a folder)")
    args = p.parse_args(argv)

    logging.getLogger("gadgets").setLevel(logging.ERROR)
    logging.getLogger("pipelines").setLevel(logging.ERROR)

    cine_model = registry.default_model("cine")  # what the cine pipelines stream when they name no model
    weights = args.cine_weights or str(registry.get(cine_model).weights_path())
    n, started = args.matrix, datetime.now(timezone.utc)
    counts = [int(x) for x in args.scans.split(",")]
    backends = args.backends.split(",")
    say = lambda text: print(text, flush=True)  # noqa: E731
    record: dict[str, Any] = {"date": f"{started:%Y-%m-%d %H:%M} UTC", "command": "streamrecon bench backends " + " ".join(argv),
                              "machine": machine(args.device), "load_average_1min": os.getloadavg()[0], "note": args.note,
                              "scan": {"matrix": n, "coils": args.coils, "frames": args.frames, "frame_ms": args.frame_ms,
                                       "mask": "kt-uniform 4x", "model": "KGMgT centred", "weights": record_path(weights)},
                              "rows": []}
    say(f"streamrecon bench backends  {record['date']}\ncommand: {record['command']}\nmachine: {record['machine']}; "
        f"load average {record['load_average_1min']:.2f}\nscan: {record['scan']}")

    half = max(8, 3 * n // 16)
    scan = phantom_scan("cine", ny=n, nx=n, frames=args.frames, slices=1, n_coils=args.coils, frame_ms=args.frame_ms)
    mask = line_mask("kt-uniform", n, args.frames, accel=4, acs=8)
    header, acqs = make_header(scan), list(acquisitions(scan, mask, calib_lines=(n // 2 - half, n // 2 + half)))

    procs: list = []
    settings = {"device": args.device, "model_weights": f"{cine_model}={weights}", "inference_timeout_ms": 120000}
    servers: dict[str, Any] = {}
    try:
        if "service" in backends:
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "infer-server", "--bind", endpoint, "--device",
                                     args.device, "--models", cine_model, "--weights", f"{cine_model}={weights}", "--log-level", "ERROR"],
                                    env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(("zmq", proc))
            for _ in range(600):
                try:
                    service_health(endpoint, timeout_ms=500)
                    break
                except Exception:
                    time.sleep(0.2)
            settings["inference_endpoint"] = endpoint
            servers["service"] = endpoint
        if "triton" in backends:
            python = args.triton_python or triton_python()[0]
            if python is None:
                say(f"triton: skipped: {triton_python()[1]}")
                backends.remove("triton")
            else:
                proc, endpoint = start_triton_server(python, ["--device", args.device, "--models", cine_model,
                                                              "--weights", f"{cine_model}={weights}", "--log-level", "ERROR"])
                procs.append(("triton", proc))
                settings["triton_endpoint"] = endpoint
                servers["triton"] = endpoint
        host = StreamHost("127.0.0.1", 0, SessionOptions(operator=host_settings.load().with_values(**settings)),
                          idle_timeout_s=300)
        host.preload_pipelines()
        host.start_background()
        xml = {"in-process": shipped_pipeline_with("kgmgt_cine", "gadgets.cine_kgmgt"),
               "service": shipped_pipeline_with("kgmgt_cine_service", "gadgets.cine_kgmgt"),
               "triton": shipped_pipeline_with("kgmgt_cine_triton", "gadgets.cine_kgmgt")}
        say(f"\n{'backend':11s} {'scans':>5s} {'model im/s':>9s} {'KGMgT p50':>10s} {'p95':>8s} {'max':>8s} "
            f"{'fallbacks':>9s}  batching")
        try:
            for backend in backends:
                run_session("127.0.0.1", host.port, header=header, items=acqs, config_text=xml[backend], timeout=600)
                for k in counts:
                    before = triton_health(servers["triton"])["counts"][cine_model] if backend == "triton" else (
                        service_health(servers["service"])["counts"] if backend == "service" else {})
                    results, wall = run_sessions_at_once("127.0.0.1", host.port, k, header=header, items=acqs,
                                                         config_text=xml[backend],
                                                         pacing=Pacing.per_frame(args.frame_ms), timeout=900)
                    images = [im for r in results for im in r.images if int(im.image_series_index) == 1]
                    lat = percentiles([v for r in results for v in frame_latencies_ms(r, series=1, lookahead=1)])
                    fallbacks = sum("Fallback" in im.meta for im in images)
                    batching = ""
                    if backend == "triton":
                        after = triton_health(servers["triton"])["counts"][cine_model]
                        items = after["inference_count"] - before["inference_count"]
                        runs = after["execution_count"] - before["execution_count"]
                        batching = f"{items} items in {runs} model runs ({items / max(runs, 1):.2f} per run)"
                    elif backend == "service":
                        after = service_health(servers["service"])["counts"]
                        items = after.get("cine", 0) - before.get("cine", 0)
                        runs = after.get("batches", 0) - before.get("batches", 0)
                        batching = f"{items} items in {runs} model runs ({items / max(runs, 1):.2f} per run)"
                    row = {"backend": backend, "scans": k, "images": len(images), "wall_s": round(wall, 2),
                           "kgmgt_latency_ms": lat, "fallbacks": fallbacks, "batching": batching}
                    row["model_images_per_s"] = model_rate(row)
                    record["rows"].append(row)
                    say(f"{backend:11s} {k:>5d} {row['model_images_per_s']:9.2f} {lat['p50']:10.0f} {lat['p95']:8.0f} "
                        f"{lat['max']:8.0f} {fallbacks:>9d}  {batching}")
        finally:
            host.shutdown()
            host.server_close()
    finally:
        for kind, proc in procs:
            stop_group(proc) if kind == "triton" else stop(proc)
    record["load_average_end"] = os.getloadavg()[0]
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"backends_{args.device}_{started:%Y-%m-%d}"
        (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
        (out / f"{stem}.md").write_text(markdown(record))
        say(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
