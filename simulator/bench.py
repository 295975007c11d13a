"""``streamrecon bench NAME``: run one benchmark and print its figures.

Benchmarks measure; they never assert. Each module under
``simulator/benchmarks/`` exposes ``main(argv) -> int`` and prints the
machine it ran on with its figures; recorded results live beside them in
``simulator/benchmarks/results/``, dated, with the command that made them.
What a benchmark measures is said once, in its module docstring's first
line, which ``streamrecon bench --help`` lists without importing it.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

BENCHMARKS: dict[str, str] = {
    "host": "simulator.benchmarks.host_ingest",
    "models": "simulator.benchmarks.models_inference",
    "stream": "simulator.benchmarks.streaming",
    "gpu": "simulator.benchmarks.gpu",
    "backends": "simulator.benchmarks.backends",
    "soak": "simulator.benchmarks.soak",
    "pi": "simulator.benchmarks.parallel_imaging",
    "runtime": "simulator.benchmarks.cpu_runtime",
    "gadgetron": "simulator.benchmarks.gadgetron_first_image",
}


def summary(module: str) -> str:
    """The first line of ``module``'s docstring after its ``streamrecon bench NAME``: prefix (read, not imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    text = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    first = text.splitlines()[0] if text else ""
    return first.split(": ", 1)[1] if first.startswith("``streamrecon bench") and ": " in first else first


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: streamrecon bench NAME [options]\n\nbenchmarks:")
        for name, module in BENCHMARKS.items():
            print(f"  {name:10s} {summary(module)}")
        print("\n  soak --dl  the deep-learning pipelines, session by session (simulator/benchmarks/soak_dl.py)")
        return 0
    if argv[0] not in BENCHMARKS:
        print(f"streamrecon bench: unknown benchmark {argv[0]!r}; one of {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0)
