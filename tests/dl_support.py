"""Helpers for the deep-learning gadget tests: tiny weight files, pipeline properties, a service process."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipelines.pipeline_config import shipped_pipeline_with as pipeline_text  # noqa: F401  (tests import it from here)
from simulator.processes import free_port, python_env, stop  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"


def tiny_weights(folder: Path) -> dict[str, Path]:
    """Small untrained KGMgT and SGF-MRI weight files (safetensors + JSON card), fixed seeds.

    Real files through the real loader, small enough for a 2-core CPU.
    """
    import torch

    from models.kgmgt import KGMgTConfig
    from models.sgfmri import SGFMRIConfig
    from models.weights import build_model, save_weights

    torch.manual_seed(0)
    k = save_weights(build_model("kgmgt", KGMgTConfig(channels=8, depth=1, heads=2, window=8, asa_radius=1).to_dict()),
                     folder, "kgmgt_tiny", "kgmgt", "tiny-test-1")
    torch.manual_seed(1)
    s = save_weights(build_model("sgfmri", SGFMRIConfig(channels=8, groups=4, squeeze=8, heads=2).to_dict()),
                     folder, "sgfmri_tiny", "sgfmri", "tiny-test-1")
    return {"kgmgt": k, "sgfmri": s}




def series(images, index: int) -> list:
    return [im for im in images if int(im.image_series_index) == index]


def pixels(image) -> np.ndarray:
    return np.asarray(image.data).reshape(image.data.shape[-2:])




def start_service(weights: dict[str, Path], models: str = "kgmgt", tmp: Path | None = None,
                  extra: list[str] | None = None, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """``streamrecon infer-server`` in its own process on a free port; returns (process, endpoint) once healthy."""
    from pipelines.inference_client import health

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = python_env()
    cmd = [sys.executable, "-m", "pipelines.cli", "infer-server", "--bind", endpoint, "--device", "cpu",
           "--models", models, "--kgmgt-weights", str(weights["kgmgt"]), "--sgfmri-weights", str(weights["sgfmri"]),
           "--log-level", "WARNING"] + (extra or [])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"infer-server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            health(endpoint, timeout_ms=500)
            return proc, endpoint
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("infer-server did not become healthy")



def operate(monkeypatch, host=None, **settings):
    """The rest of the test runs under these host operator settings (weights, device, endpoint...).

    They reach the embedded ``host``'s gadgets through its options and every
    other gadget (Gadgetron external processes, gadgets that read the
    environment) through ``STREAMRECON_*`` variables; ``monkeypatch`` undoes both.
    """
    from gadgets import host_settings

    chosen = host_settings.load({}).with_values(**{k: str(v) for k, v in settings.items()})
    for name, value in chosen.environment().items():
        monkeypatch.setenv(name, value)
    if host is not None:
        monkeypatch.setattr(host.options, "operator", chosen)
    return chosen


TRITON_PYTHON_ENV = "STREAMRECON_TRITON_PYTHON"


def triton_python() -> tuple[str | None, str]:
    """The Python that can run ``streamrecon triton-server`` (PyTriton installed), or None and why not.

    PyTriton pins numpy<2, so it lives in its own environment: ``$STREAMRECON_TRITON_PYTHON``,
    else ``.venv-triton`` (``make triton-env``), else this interpreter.
    """
    import os

    candidates = [os.environ.get(TRITON_PYTHON_ENV, ""), str(ROOT / ".venv-triton" / "bin" / "python"), sys.executable]
    tried = []
    for python in filter(None, candidates):
        if not Path(python).exists():
            tried.append(f"{python}: absent")
            continue
        probe = subprocess.run([python, "-c", "import pytriton.triton"], capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return python, ""
        tried.append(f"{python}: {(probe.stderr.strip().splitlines() or ['cannot import pytriton'])[-1]}")
    return None, ("PyTriton is not installed (`make triton-env` installs it into .venv-triton; it needs glibc >= 2.35): "
                  + "; ".join(tried))


def start_triton(python: str, weights: dict[str, Path], models: str = "kgmgt,sgfmri", extra: list[str] | None = None,
                 timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``streamrecon triton-server`` in its own process group on free ports; returns (process, gRPC endpoint) once ready."""
    from pipelines.triton_client import health

    grpc, http, metrics = free_port(), free_port(), free_port()
    endpoint = f"127.0.0.1:{grpc}"
    cmd = [python, "-m", "pipelines.cli", "triton-server", "--grpc-port", str(grpc), "--http-port", str(http),
           "--metrics-port", str(metrics), "--device", "cpu", "--models", models,
           "--kgmgt-weights", str(weights["kgmgt"]), "--sgfmri-weights", str(weights["sgfmri"]),
           "--log-level", "WARNING"] + (extra or [])
    # its own process group: PyTriton starts tritonserver and stub processes that must go with it
    proc = subprocess.Popen(cmd, env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"triton-server exited with {proc.returncode}: {proc.stderr.read().decode()[-3000:]}")
        try:
            if health(endpoint, timeout_ms=1000)["status"] == "ready":
                return proc, endpoint
        except Exception:
            pass
        time.sleep(0.5)
    stop_group(proc, kill=True)
    raise RuntimeError("triton-server did not become ready")


def stop_group(proc: subprocess.Popen, kill: bool = False) -> None:
    """End the process group ``proc`` leads (SIGKILL at once with ``kill``; else SIGTERM, SIGKILL after 20 s)."""
    import os
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # the group's other members (tritonserver, stubs, PyTriton's shared-memory tracker) may outlive
    # their leader by a moment while they clean up; then they go
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if kill:  # a killed PyTriton cannot remove its tensor store's shared memory (named after its pid)
        for leftover in Path("/dev/shm").glob(f"pytrtion{proc.pid}-*"):
            leftover.unlink(missing_ok=True)
