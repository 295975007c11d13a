"""``streamrecon bench NAME``: run one benchmark and print its figures.

Benchmarks measure; they never assert. Each module under
``simulator/benchmarks/`` exposes ``main(argv) -> int`` and prints the
machine it ran on with its figures; recorded results live beside them in
``simulator/benchmarks/results/``, dated, with the command that made them.
"""
from __future__ import annotations

import importlib
import sys

BENCHMARKS: dict[str, tuple[str, str]] = {
    "host": ("simulator.benchmarks.host_ingest", "host ingest throughput vs gadgetron.external.Connection; conventional frame latency"),
    "models": ("simulator.benchmarks.models_inference", "per-frame inference time, peak memory and parameter counts of the networks"),
    "stream": ("simulator.benchmarks.streaming", "frame latency and throughput of the deep-learning pipelines"),
    "gpu": ("simulator.benchmarks.gpu", "real-time figures on one device in one run: model time, DC, precision, compile, latency"),
    "backends": ("simulator.benchmarks.backends", "1, 2, 4 concurrent scans through Triton vs the ZeroMQ service vs in-process"),
    "soak": ("simulator.benchmarks.soak", "several scanners and hostile sessions for minutes; host RSS, threads, fds "
             "(--dl: the deep-learning pipelines, session by session)"),
    "pi": ("simulator.benchmarks.parallel_imaging", "conventional series on Siemens-layout iPAT-2 files vs CG-SENSE and the folded image"),
    "runtime": ("simulator.benchmarks.cpu_runtime", "KGMgT on the CPU: ONNX Runtime and OpenVINO as a ratio to torch eager"),
    "gadgetron": ("simulator.benchmarks.gadgetron_first_image", "first-image time under a real Gadgetron, execute vs connect vs embedded"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: streamrecon bench NAME [options]\n\nbenchmarks:")
        for name, (_, text) in BENCHMARKS.items():
            print(f"  {name:8s} {text}")
        return 0
    if argv[0] not in BENCHMARKS:
        print(f"streamrecon bench: unknown benchmark {argv[0]!r}; one of {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(BENCHMARKS[argv[0]][0]).main(argv[1:]) or 0)
