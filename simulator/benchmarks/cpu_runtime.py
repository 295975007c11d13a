"""``streamrecon bench runtime``: KGMgT on the CPU with ONNX Runtime and OpenVINO, as a ratio to torch eager.

For each matrix size (default 256 and the demo's 96) and thread count
(1, 2), the shipped KGMgT (view-shared inputs, DC in torch) reconstructs
centred windows of the phantom cine (8 coils, kt-Gaussian 8x) through the
gadgets' own call (``reconstruct_cine``: host arrays in and out, DC
included), once per runtime: torch eager, and the generator exported to
ONNX and run by ONNX Runtime and by OpenVINO (:mod:`models.runtimes`). The
calls alternate runtime by runtime, ``--calls`` rounds after a warm-up
(the first exported call pays the export, reported apart), so a change of
the machine's load touches every runtime alike. Reported per row: median
s/frame, the ratio runtime/torch from the same run, the generator pair
alone (the two generator calls of a frame) and its ratio, and the largest
image difference against torch relative to the torch image's maximum.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from models.inference import load_model
from models.machine import machine
from models.runtimes import runtime_missing
from simulator.benchmarks.device_timing import CineData, stack_windows

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "simulator" / "benchmarks" / "results"


def _median_s(call, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(n: int, threads: int, runtimes: list[str], calls: int, weights: str, say) -> list[dict]:
    """One size and thread count: every runtime's rows (the torch row first)."""

    torch.set_num_threads(threads)
    recs = {r: load_model("kgmgt", weights=weights or None, runtime=r) for r in ["torch", *runtimes]}
    batch = stack_windows(CineData(n, 8).windows(3, False, recs["torch"].inputs), 1)
    args = (batch["frames"][0], batch["kspace"][0], batch["mask"][0], batch["maps"][0])
    h, w = n + (-n) % 4, n + (-n) % 4
    g = torch.Generator().manual_seed(0)
    x, ref = torch.randn(1, 2, h, w, generator=g), torch.randn(1, 2, h, w, generator=g)

    def generator_pair(rec):
        def call():
            with torch.no_grad():
                _, feats = rec.model.generator(x, ref)
                rec.model.generator(x, ref, feats)
        return call

    rows, images, first = {}, {}, {}
    for r, rec in recs.items():
        t0 = time.perf_counter()
        images[r] = rec.reconstruct_cine(*args)  # warm-up; the exported runtimes export and compile here
        first[r] = time.perf_counter() - t0
        generator_pair(rec)()
    frame = {r: [] for r in recs}
    pair = {r: [] for r in recs}
    for _ in range(calls):  # round-robin: load changes reach every runtime alike
        for r, rec in recs.items():
            frame[r].append(_median_s(lambda: rec.reconstruct_cine(*args), 1))
            pair[r].append(_median_s(generator_pair(rec), 1))
    base_frame, base_pair = statistics.median(frame["torch"]), statistics.median(pair["torch"])
    scale = float(np.abs(images["torch"]).max()) or 1.0
    out = []
    for r in recs:
        row = {"matrix": n, "threads": threads, "runtime": r, "s_per_frame": round(statistics.median(frame[r]), 4),
               "ratio_frame": round(statistics.median(frame[r]) / base_frame, 3),
               "generator_pair_s": round(statistics.median(pair[r]), 4),
               "ratio_generator": round(statistics.median(pair[r]) / base_pair, 3),
               "first_call_s": round(first[r], 2),
               "max_rel_diff": float(f"{float(np.abs(images[r] - images['torch']).max()) / scale:.2e}")}
        out.append(row)
        say(f"  {n:>4d}x{n:<4d} {threads} thr  {r:12s} {row['s_per_frame']:.3f} s/frame (x{row['ratio_frame']:.2f})  "
            f"generator pair {row['generator_pair_s']:.3f} s (x{row['ratio_generator']:.2f})  "
            f"first call {row['first_call_s']:.1f} s  max diff {row['max_rel_diff']:.1e}")
    return out


def markdown(record: dict) -> str:
    lines = [f"# streamrecon bench runtime, {record['date']}", "",
             f"Command: `{record['command']}`", "", f"Machine: {record['machine']}; load average "
             f"{record['load_start']:.2f} at start, {record['load_end']:.2f} at the end", "",
             f"Weights: {record['weights']}; calls per row: {record['calls']} (median), round-robin across runtimes", ""]
    if record.get("note"):
        lines += [f"Note: {record['note']}", ""]
    lines += ["KGMgT centred, 8 coils, one frame per call through `reconstruct_cine` (DC in torch in every row); "
              "ratio = runtime / torch eager of the same size and threads in this run; generator pair = the two "
              "generator calls of a frame alone; max diff = max |image - torch image| / max |torch image|.", "",
              "| matrix | threads | runtime | s/frame | ratio | generator pair s | ratio | first call s | max diff |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['matrix']} | {r['threads']} | {r['runtime']} | {r['s_per_frame']:.3f} | {r['ratio_frame']:.2f} | "
                     f"{r['generator_pair_s']:.3f} | {r['ratio_generator']:.2f} | {r['first_call_s']:.1f} | "
                     f"{r['max_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon bench runtime", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256,96", help="matrix sizes (96: the demo's)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--runtimes", default="onnxruntime,openvino")
    p.add_argument("--calls", type=int, default=7)
    p.add_argument("--kgmgt-weights", default="", help=".safetensors (default: the shipped set)")
    p.add_argument("--note", default="", help="what else ran on the machine")
    p.add_argument("--out", default="", help="folder for <name>.json and .md (default: print only)")
    p.add_argument("--name", default="", help="record name (default cpu_runtime_<date>)")
    args = p.parse_args(argv)

    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    missing = {r: runtime_missing(r) for r in runtimes if runtime_missing(r)}
    runtimes = [r for r in runtimes if r not in missing]
    date = datetime.now(timezone.utc)
    command = f"streamrecon bench runtime {shlex.join(argv)}".strip()
    record = {"date": f"{date:%Y-%m-%d %H:%M} UTC", "command": command, "machine": machine(),
              "load_start": os.getloadavg()[0], "weights": args.kgmgt_weights or "shipped kgmgt_cine_vs",
              "calls": args.calls, "note": args.note, "missing": missing, "rows": []}
    print(f"streamrecon bench runtime  {record['date']}\ncommand: {command}\nmachine: {record['machine']}; "
          f"load average {record['load_start']:.2f}")
    for r, why in missing.items():
        print(f"  {r}: skipped ({why})")
    threads_before = torch.get_num_threads()
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            for t in [int(s) for s in args.threads.split(",")]:
                record["rows"] += measure(n, t, runtimes, args.calls, args.kgmgt_weights, print)
    finally:
        torch.set_num_threads(threads_before)
    record["load_end"] = os.getloadavg()[0]
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = args.name or f"cpu_runtime_{date:%Y-%m-%d}"
        (out / f"{name}.json").write_text(json.dumps(record, indent=1))
        (out / f"{name}.md").write_text(markdown(record))
        print(f"wrote {out / name}.json and .md")
    return 0
