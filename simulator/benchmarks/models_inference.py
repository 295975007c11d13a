"""``streamrecon bench models``: per-frame inference time, peak memory and parameter counts.

For KGMgT (shipped small config and the official width) and SGF-MRI (shipped
small config and the paper-sized one), at 192x192 and 256x256, batch 1 and 8,
through the same path the gadgets use (``forward`` with DC on 8-coil k-space).
SGF-MRI memory at 128/256/384/512 pixels shows its scaling in pixels. The
torch temporal-TV solver (100 iterations) and, when ``bart`` is on PATH,
BART ``pics`` give the conventional time per frame on the same data.

Time: median of ``--repeats`` runs after one warm-up, divided by the batch.
Memory: peak resident memory of the process during the call minus the
memory before it (Linux VmHWM reset through /proc/self/clear_refs); on CUDA,
``torch.cuda.max_memory_allocated`` above the allocation before the call.
Weights are random for timing (time and memory do not depend on them).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

import numpy as np


def _machine(device: str) -> str:
    import os

    import torch
    cpu = platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "-"
    return (f"CPU {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
            f"torch {torch.__version__}, device {device} ({gpu})")


def _inputs(b: int, n: int, coils: int, device):
    import torch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 2, n, n, generator=g)
    k = torch.complex(torch.randn(b, coils, n, n, generator=g), torch.randn(b, coils, n, n, generator=g))
    maps = torch.complex(torch.randn(b, coils, n, n, generator=g), torch.randn(b, coils, n, n, generator=g))
    maps = maps / torch.sqrt((maps.abs() ** 2).sum(1, keepdim=True))
    mask = torch.rand(b, n, generator=g) < 0.125
    return [t.to(device) for t in (x, k, maps, mask)]


def bench_model(name, model, sizes, batches, device, repeats, coils=8):
    import torch

    from models.evaluate import measure
    rows = []
    model = model.to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    for n in sizes:
        for b in batches:
            x, k, maps, mask = _inputs(b, n, coils, device)
            if name.startswith("KGMgT"):
                call = lambda: model(x, x.roll(1, -1), x.roll(-1, -1), kspace=k, mask=mask, maps=maps)  # noqa: E731
            else:
                call = lambda: model(x, x.flip(-1), kspace=k, mask=mask, maps=maps)  # noqa: E731
            try:
                with torch.no_grad():
                    _, _, mem = measure(call, device)  # warm-up; also the memory figure
                    times = [measure(call, device)[1] for _ in range(repeats)]
            except RuntimeError as exc:  # out of memory and the like: report, go on
                rows.append((name, params, n, b, None, None, str(exc).splitlines()[0][:60]))
                continue
            rows.append((name, params, n, b, statistics.median(times) / b, mem, ""))
            print(f"{name:24s} {params:>9d} params  {n}x{n} batch {b}: {statistics.median(times) / b * 1e3:9.1f} ms/frame, "
                  f"peak +{mem if mem is None else round(mem)} MiB", flush=True)
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamrecon bench models", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[192, 256])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--scaling-sizes", type=int, nargs="+", default=[128, 256, 384, 512])
    p.add_argument("--skip-official", action="store_true", help="time only the shipped small configs")
    p.add_argument("--one-sgf", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    if args.one_sgf:  # child process of the scaling measurement
        from models.evaluate import measure
        from models.sgfmri import SGFMRI, SGFMRIConfig
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        model = SGFMRI(SGFMRIConfig.cpu_small()).to(args.device).eval()
        x, k, maps, mask = _inputs(1, args.one_sgf, 8, args.device)
        with torch.no_grad():
            _, sec, mem = measure(lambda: model(x, x.flip(-1), kspace=k, mask=mask, maps=maps), args.device)
        print(f"ONE {sum(q.numel() for q in model.parameters())} {sec} {mem}")
        return 0

    from models.baselines import bart_available, bart_pics, tv_temporal
    from models.evaluate import measure
    from models.kgmgt import KGMgT, KGMgTConfig
    from models.sgfmri import SGFMRI, SGFMRIConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"date {time.strftime('%Y-%m-%d %H:%M')}\nmachine: {_machine(args.device)}")
    print(f"command: streamrecon bench models {' '.join(argv)}")
    models = [("KGMgT small (shipped)", KGMgT(KGMgTConfig.cpu_small())), ("SGF-MRI small (shipped)", SGFMRI(SGFMRIConfig.cpu_small()))]
    if not args.skip_official:
        models += [("KGMgT official width", KGMgT(KGMgTConfig.official())), ("SGF-MRI paper width", SGFMRI(SGFMRIConfig.paper()))]
    rows = []
    for name, model in models:
        rows += bench_model(name, model, args.sizes, args.batches, args.device, args.repeats)
    print("\nSGF-MRI (small) memory scaling, batch 1, each size in a fresh process:")
    scaling = []
    for n in args.scaling_sizes:
        cmd = [sys.executable, "-m", "simulator.benchmarks.models_inference", "--one-sgf", str(n), "--device", args.device,
               "--threads", str(torch.get_num_threads())]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("ONE ")]
        if not line:
            scaling.append(("SGF-MRI small, scaling", 0, n, 1, None, None, (out.stderr.strip().splitlines() or ["failed"])[-1][:60]))
            continue
        _, params, sec, mem = line[0].split()
        scaling.append(("SGF-MRI small, scaling", int(params), n, 1, float(sec), None if mem == "None" else float(mem), ""))
        print(f"  {n}x{n}: {float(sec) * 1e3:.1f} ms, peak +{mem} MiB", flush=True)
    # conventional reference on the same kind of data: a 12-frame cine at 192x192, 8 coils, 8x
    t, n, c = 12, 192, 8
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((t, c, n, n)) + 1j * rng.standard_normal((t, c, n, n))).astype(np.complex64)
    masks = rng.random((t, n)) < 0.125
    maps = (rng.standard_normal((c, n, n)) + 1j * rng.standard_normal((c, n, n))).astype(np.complex64)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0))
    _, sec, mem = measure(lambda: tv_temporal(k, masks, maps, iterations=100))
    conv = [("temporal TV, torch, 100 it", sec / t, mem)]
    if bart_available():
        _, sec, mem = measure(lambda: bart_pics(k, masks, maps, iterations=100))
        conv.append(("BART pics temporal TV, 100 it", sec / t, mem))
    else:
        print("bart is not on PATH: no BART timing")
    print("\n| model | parameters | matrix | batch | ms/frame | peak MiB | note |\n|---|---|---|---|---|---|---|")
    for name, params, n_, b, s, mem, note in rows + scaling:
        ms = "-" if s is None else f"{s * 1e3:.1f}"
        mb = "-" if mem is None else f"{mem:.0f}"
        print(f"| {name} | {params:,} | {n_}x{n_} | {b} | {ms} | {mb} | {note} |")
    for name, s, mem in conv:
        print(f"| {name} | - | 192x192 (12 frames, 8 coils) | cine | {s * 1e3:.1f} | {'-' if mem is None else round(mem)} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
