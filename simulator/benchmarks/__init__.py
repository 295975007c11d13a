"""Benchmarks: scripts that measure and print, never assert (``streamrecon bench NAME``)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def machine(device: str = "") -> str:
    """One line naming the machine a benchmark ran on: CPU model, cores, GPU, Python, torch (threads)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    text = (f"{cpu}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")
    return f"{text}, device {device}" if device else text


def record_path(path: str | os.PathLike) -> str:
    """A file as a record names it: relative to the repository when inside it, else its name alone
    (a record must not carry the machine's folders)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(REPOSITORY))
    except ValueError:
        return resolved.name
