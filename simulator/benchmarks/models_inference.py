"""``streamrecon bench models``: per-frame inference time, peak memory and parameter counts.

For KGMgT (shipped small config and the official width) and SGF-MRI (shipped
small config and the paper-sized one), at 192x192 and 256x256, batch 1 and 8,
through the same path the gadgets use (``forward`` with DC on 8-coil k-space).
SGF-MRI memory at 128/256/384/512 pixels shows its scaling in pixels. The
torch temporal-TV solver (100 iterations) and, when ``bart`` is on PATH,
BART ``pics`` give the conventional time per frame on the same data.

Time: median of ``--repeats`` runs after one warm-up, divided by the batch.
Memory: each configuration runs in a fresh process; peak resident memory
during its first call minus the memory before it (Linux VmHWM reset through /proc/self/clear_refs); on CUDA,
``torch.cuda.max_memory_allocated`` above the allocation before the call.
Weights are random for timing (time and memory do not depend on them).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from models.baselines import bart_available, bart_pics, tv_temporal
from models.evaluation.scores import measure
from models import registry
from models.kgmgt import KGMgTConfig
from models.machine import machine
from models.sgfmri import SGFMRIConfig
from models.weights import build_model


def _inputs(b: int, n: int, coils: int, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 2, n, n, generator=g)
    k = torch.complex(torch.randn(b, coils, n, n, generator=g), torch.randn(b, coils, n, n, generator=g))
    maps = torch.complex(torch.randn(b, coils, n, n, generator=g), torch.randn(b, coils, n, n, generator=g))
    maps = maps / torch.sqrt((maps.abs() ** 2).sum(1, keepdim=True))
    mask = torch.rand(b, n, generator=g) < 0.125
    return [t.to(device) for t in (x, k, maps, mask)]


# key: (label, registry name, the model's own configuration); networks are built through the registry
MODELS = {
    "kgmgt-small": ("KGMgT small (shipped)", "kgmgt", KGMgTConfig.cpu_small),
    "sgfmri-small": ("SGF-MRI small (shipped)", "sgfmri", SGFMRIConfig.cpu_small),
    "kgmgt-official": ("KGMgT official width", "kgmgt", KGMgTConfig.official),
    "sgfmri-paper": ("SGF-MRI paper width", "sgfmri", SGFMRIConfig.paper),
}


def run_one(key: str, n: int, b: int, device: str, repeats: int, coils: int = 8) -> str:
    """One configuration in this (fresh) process: ``ONE params seconds_per_frame peak_MiB``."""

    torch.manual_seed(0)
    _, name, config = MODELS[key]
    model = build_model(name, config().to_dict()).to(device).eval()
    x, k, maps, mask = _inputs(b, n, coils, device)
    if registry.get(name).operation == "cine":  # three frames; a pair: the target and its reference
        call = lambda: model(x, x.roll(1, -1), x.roll(-1, -1), kspace=k, mask=mask, maps=maps)  # noqa: E731
    else:
        call = lambda: model(x, x.flip(-1), kspace=k, mask=mask, maps=maps)  # noqa: E731
    with torch.no_grad():
        _, _, mem = measure(call, device)  # first call: its peak is the memory figure (nothing cached yet)
        times = [measure(call, device)[1] for _ in range(repeats)]
    return f"ONE {sum(p.numel() for p in model.parameters())} {statistics.median(times) / b} {mem}"


def bench_model(key, sizes, batches, device, repeats, threads):
    """Each (size, batch) in a fresh process, so the peak memory is not hidden by memory an earlier run left cached."""
    rows = []
    name = MODELS[key][0]
    for n in sizes:
        for b in batches:
            cmd = [sys.executable, "-m", "simulator.benchmarks.models_inference", "--one", key, str(n), str(b),
                   "--device", device, "--threads", str(threads), "--repeats", str(repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("ONE ")]
            if not line:
                rows.append((name, 0, n, b, None, None, (out.stderr.strip().splitlines() or ["failed"])[-1][:60]))
                continue
            _, params, sec, mem = line[0].split()
            rows.append((name, int(params), n, b, float(sec), None if mem == "None" else float(mem), ""))
            print(f"{name:24s} {int(params):>9d} params  {n}x{n} batch {b}: {float(sec) * 1e3:9.1f} ms/frame, "
                  f"peak +{mem if mem == 'None' else round(float(mem))} MiB", flush=True)
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
    p.add_argument("--one", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:  # child process: one configuration
        if args.threads:
            torch.set_num_threads(args.threads)
        print(run_one(args.one[0], int(args.one[1]), int(args.one[2]), args.device, args.repeats))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"date {time.strftime('%Y-%m-%d %H:%M')}\nmachine: {machine(args.device)}")
    print(f"command: streamrecon bench models {' '.join(argv)}")
    keys = ["kgmgt-small", "sgfmri-small"] + ([] if args.skip_official else ["kgmgt-official", "sgfmri-paper"])
    threads = torch.get_num_threads()
    rows = []
    for key in keys:
        rows += bench_model(key, args.sizes, args.batches, args.device, args.repeats, threads)
    print("\nSGF-MRI (small) memory scaling, batch 1:")
    scaling = bench_model("sgfmri-small", args.scaling_sizes, [1], args.device, 1, threads)
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
