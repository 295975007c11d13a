"""One line naming the machine a figure was measured on: training records, evaluation reports, benchmarks."""
from __future__ import annotations

import os
import platform


def machine(device: str = "") -> str:
    """One line naming the machine a benchmark ran on: CPU model, cores, GPU, Python, torch (threads)."""
    import torch  # inside: importing this module must not cost torch's import (bench --help)

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
