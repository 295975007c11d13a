"""``streamrecon bench gpu``: real-time figures of the networks on one device, in one short run.

One command for the day a GPU is lent (under 4 minutes on an H100/H200-class
GPU in full mode; ``--budget-s`` bounds it), and the same code on CPU
(``--device cpu``; ``--quick`` at tiny sizes is what CI runs). Figures,
printed and written as JSON + Markdown (machine, torch and CUDA versions):

1. model time per frame, p50/p95 over >= ``--frames`` frames after warm-up,
   CUDA-synchronised, through the gadgets' own call
   (``Reconstructor.reconstruct_*_batch``: host arrays in, DC included, host
   arrays out): KGMgT centred and causal, SGF-MRI; 192x192 and 256x256; 8 and
   16 coils; batch 1, 4 and 8 (4 or 8 scanners' frames in one call); peak GPU
   memory of each configuration; the DC step alone per frame;
2. precision: fp32 against bf16 and fp16 autocast, time and the PSNR change
   against the fully sampled phantom;
3. ``torch.compile`` (default mode) and CUDA graphs (``mode="reduce-overhead"``)
   on KGMgT centred, CUDA only (skipped on CPU, saying so);
4. frame latency through the embedded host, the simulator paced at
   ``--frame-ms`` (36) per frame, 1 and 4 scanners at once (KGMgT centred,
   in-process on the device);
5. with ``--device cpu`` (not ``--quick``'s sizes only): the CPU settings,
   KGMgT centred s/frame at 128/192/256 with 1 and 2 torch threads,
   ``inference_mode``, channels-last and bf16 autocast.

Inputs are the cardiac phantom with synthetic coil maps, kt-Gaussian 8x
(the model's own input kind: view-shared or zero-filled). Weights: the
shipped sets (an untrained network of the same architecture if absent, said
in the record: timings hold, quality does not).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gadgets import host_settings
from models import registry
from models.inference import load_model
from models.masks import line_mask
from models.metrics import psnr
from pipelines.host import StreamHost
from pipelines.pipeline_config import shipped_pipeline_with
from pipelines.session import SessionOptions
from simulator.acquire import acquisitions
from simulator.benchmarks.device_timing import (CineData, PeakMemory, autocast, dc_call, model_call, stack_windows,
                                                stats_ms, timed, versions)
from simulator.client import Pacing, run_session, run_sessions_at_once
from simulator.header import make_header
from simulator.results import frame_latencies_ms, percentiles
from simulator.scan import phantom_scan

RESULTS = Path(__file__).resolve().parent / "results"
# the networks timed: each operation's default model (what a pipeline naming none streams); they name the rows
CINE, PAIR = registry.default_model("cine"), registry.default_model("pair")

FULL = dict(sizes=[192, 256], coils=[8, 16], batches=[1, 4, 8], frames=100, warmup=3,
            latency_size=256, latency_coils=16, latency_frames=40, scanners=[1, 4], cpu_sizes=[128, 192, 256])
QUICK = dict(sizes=[32], coils=[4], batches=[1, 2], frames=4, warmup=1,
             latency_size=32, latency_coils=4, latency_frames=5, scanners=[1, 2], cpu_sizes=[32])


# ---------------------------------------------------------------------------- sections
class Budget:
    def __init__(self, seconds: float) -> None:
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def load(name: str, device: str, weights: dict[str, str]):
    try:
        return load_model(name, device=device, weights=weights.get(name) or None), True
    except FileNotFoundError:
        return load_model(name, device=device, allow_random=True), False


def section_models(recs, cfg, device, budget, out: list, say) -> None:
    say("\n1. model time per frame (ms; host arrays in and out, DC included) and the DC step alone")
    say(f"{'model':14s} {'matrix':>8s} {'coils':>5s} {'batch':>5s} {'p50':>9s} {'p95':>9s} {'DC p50':>8s} {'peak MiB':>9s}")
    for n in cfg["sizes"]:
        for coils in cfg["coils"]:
            data = CineData(n, coils)
            for kind in (f"{CINE}-centred", f"{CINE}-causal", PAIR):
                rec = recs[PAIR if kind == PAIR else CINE]
                items = [data.pair()] if kind == PAIR else data.windows(8, kind.endswith("-causal"), rec.inputs)
                for b in cfg["batches"]:
                    row = {"model": kind, "matrix": n, "coils": coils, "batch": b}
                    if budget.left() <= 0:
                        out.append({**row, "skipped": "time budget spent"})
                        continue
                    batch = stack_windows(items, b)
                    calls = max(math.ceil(cfg["frames"] / b), 3)
                    try:
                        with PeakMemory(device) as mem:
                            t = timed(model_call(rec, kind, batch), device, calls, cfg["warmup"])
                        dc = timed(dc_call(rec, batch, device), device, max(calls // 2, 3), 1)
                    except Exception as exc:  # e.g. out of memory: say so, go on
                        out.append({**row, "error": f"{type(exc).__name__}: {exc}"[:200]})
                        say(f"{kind:14s} {n:>5d}^2 {coils:>5d} {b:>5d}  failed: {exc}")
                        continue
                    row.update(ms_per_frame=stats_ms(t, b), dc_ms_per_frame=stats_ms(dc, b), peak_mib=mem.mib,
                               calls=calls)
                    out.append(row)
                    say(f"{kind:14s} {n:>5d}^2 {coils:>5d} {b:>5d} {row['ms_per_frame']['p50']:9.2f} "
                        f"{row['ms_per_frame']['p95']:9.2f} {row['dc_ms_per_frame']['p50']:8.2f} {str(mem.mib):>9s}")


def section_precision(recs, cfg, device, budget, out: list, say) -> None:
    n, coils = cfg["sizes"][-1], cfg["coils"][-1]
    say(f"\n2. precision, KGMgT centred and SGF-MRI, {n}x{n}, {coils} coils, batch 1 (PSNR against the phantom)")
    data = CineData(n, coils)
    for kind in (f"{CINE}-centred", PAIR):
        rec = recs[PAIR if kind == PAIR else CINE]
        items = [data.pair()] if kind == PAIR else data.windows(4, False, rec.inputs)
        batch = stack_windows(items, len(items))
        truth = data.truth[batch["t"]]
        base = None
        for precision in ("fp32", "bf16", "fp16"):
            row = {"model": kind, "matrix": n, "coils": coils, "precision": precision}
            if budget.left() <= 0:
                out.append({**row, "skipped": "time budget spent"})
                continue
            if precision == "fp16" and not device.startswith("cuda"):
                out.append({**row, "skipped": "fp16 autocast is for CUDA"})
                continue
            one = stack_windows(items, 1)
            try:
                with autocast(device, precision):
                    images = model_call(rec, kind, batch)()
                    t = timed(model_call(rec, kind, one), device, max(cfg["frames"] // 4, 3), cfg["warmup"])
            except Exception as exc:
                out.append({**row, "error": f"{type(exc).__name__}: {exc}"[:200]})
                say(f"  {kind:14s} {precision}: failed: {type(exc).__name__}: {exc}"[:160])
                continue
            quality = float(np.mean([psnr(im, ref) for im, ref in zip(images, truth)]))
            base = quality if precision == "fp32" else base
            row.update(ms_per_frame=stats_ms(t), psnr_db=round(quality, 3),
                       psnr_change_db=None if base is None else round(quality - base, 3))
            out.append(row)
            say(f"  {kind:14s} {precision}: p50 {row['ms_per_frame']['p50']:8.2f} ms/frame, PSNR {quality:6.2f} dB "
                f"(change {row['psnr_change_db']:+.3f} dB)")


def section_compile(recs, cfg, device, budget, out: list, say) -> None:
    say("\n3. torch.compile and CUDA graphs, KGMgT centred, batch 1")
    if not device.startswith("cuda"):
        out.append({"skipped": "CUDA only (torch.compile on a 2-core CPU takes minutes; CUDA graphs need CUDA)"})
        say("  skipped: CUDA only")
        return
    n, coils = cfg["sizes"][-1], cfg["coils"][-1]
    rec = recs[CINE]
    batch = stack_windows(CineData(n, coils).windows(4, False, rec.inputs), 1)
    eager = rec.model
    try:
        for label, mode in (("eager", None), ("torch.compile", "default"), ("CUDA graphs (reduce-overhead)", "reduce-overhead")):
            row = {"variant": label, "matrix": n, "coils": coils}
            if budget.left() <= 0:
                out.append({**row, "skipped": "time budget spent"})
                continue
            try:
                rec.model = eager if mode is None else torch.compile(eager, mode=mode)
                t0 = time.perf_counter()
                model_call(rec, f"{CINE}-centred", batch)()  # compiles
                first = time.perf_counter() - t0
                t = timed(model_call(rec, f"{CINE}-centred", batch), device, cfg["frames"], cfg["warmup"])
            except Exception as exc:
                out.append({**row, "error": f"{type(exc).__name__}: {exc}"[:200]})
                say(f"  {label}: failed: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            row.update(first_call_s=round(first, 2), ms_per_frame=stats_ms(t))
            out.append(row)
            say(f"  {label:30s} first call {first:6.1f} s, then p50 {row['ms_per_frame']['p50']:8.2f} / "
                f"p95 {row['ms_per_frame']['p95']:8.2f} ms/frame")
    finally:
        rec.model = eager


def section_latency(cfg, device, weights: dict[str, str], allow_random: bool, frame_ms: float, budget, out: list,
                    say) -> None:

    n, coils, frames = cfg["latency_size"], cfg["latency_coils"], cfg["latency_frames"]
    say(f"\n4. frame latency through the embedded host, {n}x{n}, {coils} coils, {frames} frames paced at {frame_ms:g} ms, "
        f"kt-uniform 8x, KGMgT centred in the host's process on {device} (ms)")
    operator = host_settings.load().with_values(device=device, allow_random=allow_random,
                                                model_weights=",".join(f"{k}={v}" for k, v in weights.items() if v))
    host = StreamHost("127.0.0.1", 0, SessionOptions(operator=operator), idle_timeout_s=120)
    host.start_background()
    half = max(8, 3 * n // 16)  # calibration lines before frame 0, for the coil maps
    calib = (n // 2 - half, n // 2 + half)
    scan = phantom_scan("cine", ny=n, nx=n, frames=frames, slices=1, n_coils=coils, frame_ms=frame_ms)
    mask = line_mask("kt-uniform", n, frames, accel=8, acs=max(4, n // 16))
    header, acqs = make_header(scan), list(acquisitions(scan, mask, calib_lines=calib))
    xml = shipped_pipeline_with("kgmgt_cine", "gadgets.cine_kgmgt")
    try:
        run_session("127.0.0.1", host.port, header=header, items=acqs[: len(acqs) // 2], config_text=xml, timeout=600)
        for k in cfg["scanners"]:
            if budget.left() <= 0:
                out.append({"scanners": k, "skipped": "time budget spent"})
                continue
            results, _ = run_sessions_at_once("127.0.0.1", host.port, k, header=header, items=acqs, config_text=xml,
                                              pacing=Pacing.per_frame(frame_ms), timeout=600)
            model = [v for r in results for v in frame_latencies_ms(r, series=1, lookahead=1)]
            conv = [v for r in results for v in frame_latencies_ms(r, series=0, lookahead=0)]
            fallbacks = sum("Fallback" in im.meta for r in results for im in r.images if int(im.image_series_index) == 1)
            row = {"scanners": k, "matrix": n, "coils": coils, "frames": frames, "frame_ms": frame_ms,
                   "kgmgt_latency_ms": percentiles(model), "conventional_latency_ms": percentiles(conv),
                   "fallbacks": fallbacks}
            out.append(row)
            lat = row["kgmgt_latency_ms"]
            say(f"  {k} scanner(s): KGMgT p50 {lat['p50']:.1f} / p95 {lat['p95']:.1f} / max {lat['max']:.1f}, "
                f"conventional p50 {row['conventional_latency_ms']['p50']:.1f}, fallbacks {fallbacks}")
    finally:
        host.shutdown()
        host.server_close()


def section_cpu(cfg, weights, budget, out: list, say) -> None:
    say("\n5. CPU settings, KGMgT centred, 8 coils, batch 1 (s/frame, median)")
    rec, _ = load(CINE, "cpu", weights)
    threads_before = torch.get_num_threads()
    variants = [("1 thread, no_grad", 1, nullcontext, False, "fp32"),
                ("2 threads, no_grad", 2, nullcontext, False, "fp32"),
                ("1 thread, inference_mode", 1, torch.inference_mode, False, "fp32"),
                ("1 thread, channels-last", 1, nullcontext, True, "fp32"),
                ("1 thread, bf16 autocast", 1, nullcontext, False, "bf16")]
    try:
        for n in cfg["cpu_sizes"]:
            batch = stack_windows(CineData(n, 8).windows(3, False, rec.inputs), 1)
            for label, threads, ctx, channels_last, precision in variants:
                row = {"variant": label, "matrix": n}
                if budget.left() <= 0:
                    out.append({**row, "skipped": "time budget spent"})
                    continue
                torch.set_num_threads(threads)
                rec.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                try:
                    with ctx(), autocast("cpu", precision):
                        t = timed(model_call(rec, f"{CINE}-centred", batch), "cpu", 3, 1)
                except Exception as exc:
                    out.append({**row, "error": f"{type(exc).__name__}: {exc}"[:200]})
                    say(f"  {n}x{n} {label}: failed: {type(exc).__name__}: {str(exc)[:100]}")
                    continue
                row["s_per_frame"] = round(float(np.median(t)), 4)
                out.append(row)
                say(f"  {n:>4d}x{n:<4d} {label:28s} {row['s_per_frame']:.3f} s/frame")
    finally:
        rec.model.to(memory_format=torch.contiguous_format)
        torch.set_num_threads(threads_before)


# ---------------------------------------------------------------------------- report
def _why(record: dict[str, Any]) -> str:
    return str(record.get("skipped") or record.get("error"))


def _rows(records: list[dict[str, Any]], measured: str, lead: list[str], columns: int,
          cells: Callable[[dict[str, Any]], list[Any]]) -> list[str]:
    """Markdown table rows: a measured record's ``cells``; else its ``lead`` fields, why not, and empty cells."""
    rows = []
    for r in records:
        if measured in r:
            rows.append("| " + " | ".join(str(c) for c in cells(r)) + " |")
        else:
            head = [str(r[k]) for k in lead] + [_why(r)]
            rows.append("| " + " | ".join(head) + " |" + " |" * (columns - len(head)))
    return rows


def markdown(record: dict[str, Any]) -> str:
    v = record["versions"]
    lines = [f"# streamrecon bench gpu ({record['mode']}), {record['date']}", "",
             f"Command: `{record['command']}`", "",
             f"Machine: {v['machine']}; Python {v['python']}, torch {v['torch']}, CUDA {v['cuda']}, cuDNN {v['cudnn']}; "
             f"load average {v['load_average_1min']:.2f} at start",
             f"Weights: {record['weights']}", f"Wall time: {record['wall_s']:.0f} s", ""]
    if record.get("note"):
        lines += [f"Note: {record['note']}", ""]
    if record["models"]:
        lines += ["## 1. Model time per frame (ms, host arrays in and out, DC included)", "",
                  "| model | matrix | coils | batch | p50 | p95 | DC p50 | peak MiB |", "|---|---|---|---|---|---|---|---|"]
        lines += _rows(record["models"], "ms_per_frame", ["model", "matrix", "coils", "batch"], 8, lambda r: [
            r["model"], r["matrix"], r["coils"], r["batch"], r["ms_per_frame"]["p50"], r["ms_per_frame"]["p95"],
            r["dc_ms_per_frame"]["p50"], r["peak_mib"] if r["peak_mib"] is not None else "-"])
        lines.append("")
    if record["precision"]:
        lines += ["## 2. Precision (autocast)", "", "| model | precision | ms/frame p50 | PSNR dB | change dB |",
                  "|---|---|---|---|---|"]
        lines += _rows(record["precision"], "ms_per_frame", ["model", "precision"], 5, lambda r: [
            r["model"], r["precision"], r["ms_per_frame"]["p50"], r["psnr_db"], r["psnr_change_db"]])
        lines.append("")
    if record["compile"]:
        lines += ["## 3. torch.compile and CUDA graphs", ""]
        for r in record["compile"]:
            lines.append(f"- {r.get('variant', 'all')}: " + (
                f"first call {r['first_call_s']} s, p50 {r['ms_per_frame']['p50']} ms, p95 {r['ms_per_frame']['p95']} ms"
                if "ms_per_frame" in r else _why(r)))
        lines.append("")
    if record["latency"]:
        lines += ["## 4. Frame latency through the embedded host (ms)", "",
                  "| scanners | matrix | coils | frame ms | KGMgT p50 | p95 | max | conventional p50 | fallbacks |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += _rows(record["latency"], "kgmgt_latency_ms", ["scanners"], 9, lambda r: [
            r["scanners"], r["matrix"], r["coils"], r["frame_ms"], r["kgmgt_latency_ms"]["p50"],
            r["kgmgt_latency_ms"]["p95"], r["kgmgt_latency_ms"]["max"], r["conventional_latency_ms"]["p50"],
            r["fallbacks"]])
        lines.append("")
    if record["cpu"]:
        lines += ["## 5. CPU settings, KGMgT centred, 8 coils, batch 1 (s/frame, median of 3 calls)", "",
                  "| matrix | variant | s/frame |", "|---|---|---|"]
        for r in record["cpu"]:
            lines.append(f"| {r['matrix']} | {r['variant']} | {r.get('s_per_frame', _why(r))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon bench gpu", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI): 32x32, 4 coils, batch 1 and 2, few frames")
    p.add_argument("--frames", type=int, default=None, help="frames timed per configuration (default 100; quick 4)")
    p.add_argument("--frame-ms", type=float, default=36.0, help="simulator pacing for the latency section")
    p.add_argument("--budget-s", type=float, default=180.0,
                   help="time budget: each section stops starting measurements after its share of it "
                        "(models 45%%, precision 10%%, compile 25%%, latency 20%%; CPU settings all of it)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: models,precision,compile,latency,cpu")
    p.add_argument("--cine-weights", "--kgmgt-weights", default="",
                   help="the cine model's .safetensors (default: its registered set)")
    p.add_argument("--pair-weights", "--sgfmri-weights", default="",
                   help="the multi-contrast model's .safetensors (default: its registered set)")
    p.add_argument("--note", default="", help="a line for the record (e.g. what else ran on the machine)")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON and Markdown record")
    p.add_argument("--name", default="", help="file stem (default gpu_<device>[_quick]_<date>)")
    args = p.parse_args(argv)

    logging.getLogger("gadgets").setLevel(logging.ERROR)  # fallbacks are counted in the figures
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cfg = dict(QUICK if args.quick else FULL)
    if args.frames:
        cfg["frames"] = args.frames
    skip = set(filter(None, args.skip.split(",")))
    weights = {CINE: args.cine_weights, PAIR: args.pair_weights}
    total = Budget(args.budget_s)
    # each section gets its share, so a slow first section cannot crowd out the others
    share = {"models": 0.45, "precision": 0.1, "compile": 0.25, "latency": 0.2, "cpu": 1.0}
    budget = lambda name: Budget(args.budget_s * share[name])  # noqa: E731
    started = datetime.now(timezone.utc)
    say = lambda text: print(text, flush=True)  # noqa: E731
    record: dict[str, Any] = {"mode": "quick" if args.quick else "full", "date": f"{started:%Y-%m-%d %H:%M} UTC",
                              "command": "streamrecon bench gpu " + " ".join(argv), "note": args.note,
                              "versions": versions(device), "config": cfg,
                              "models": [], "precision": [], "compile": [], "latency": [], "cpu": []}
    say(f"streamrecon bench gpu  {record['date']}\ncommand: {record['command']}\nmachine: {record['versions']['machine']}"
        f"\ntorch {torch.__version__}, CUDA {torch.version.cuda}")
    recs, trained = {}, {}
    for name in (CINE, PAIR):
        recs[name], trained[name] = load(name, device, weights)
    record["weights"] = ", ".join(f"{n}: {r.version}" + ("" if trained[n] else " (UNTRAINED stand-in: timing only)")
                                  for n, r in recs.items())
    say(f"weights: {record['weights']}")
    with torch.no_grad():
        if "models" not in skip:
            section_models(recs, cfg, device, budget("models"), record["models"], say)
        if "precision" not in skip:
            section_precision(recs, cfg, device, budget("precision"), record["precision"], say)
        if "compile" not in skip:
            section_compile(recs, cfg, device, budget("compile"), record["compile"], say)
    if "latency" not in skip:
        section_latency(cfg, device, weights, not trained[CINE], args.frame_ms, budget("latency"), record["latency"],
                        say)
    if device == "cpu" and "cpu" not in skip:
        section_cpu(cfg, weights, budget("cpu"), record["cpu"], say)
    record["wall_s"] = time.perf_counter() - total.t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"gpu_{device.replace(':', '')}{'_quick' if args.quick else ''}_{started:%Y-%m-%d}"
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown(record))
    say(f"\nwall time {record['wall_s']:.0f} s; wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
