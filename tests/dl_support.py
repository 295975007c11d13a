"""Helpers for the deep-learning gadget tests: tiny weight files, pipeline properties, a service process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

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


def pipeline_text(name: str, module: str, **props) -> str:
    """A shipped pipeline's XML with properties of the gadget ``module`` set (added when absent)."""
    root = ET.fromstring((PIPELINES / f"{name}.xml").read_text())
    for ext in root.iter("external"):
        if ext.find("execute").get("name") != module:
            continue
        cfg = ext.find("configuration")
        for key, value in props.items():
            prop = next((p for p in cfg.iter("property") if p.get("name") == key), None)
            if prop is None:
                prop = ET.SubElement(cfg, "property", name=key)
            prop.set("value", str(value))
        return ET.tostring(root, encoding="unicode")
    raise KeyError(f"{name} has no gadget {module}")


def series(images, index: int) -> list:
    return [im for im in images if int(im.image_series_index) == index]


def pixels(image) -> np.ndarray:
    return np.asarray(image.data).reshape(image.data.shape[-2:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(weights: dict[str, Path], models: str = "kgmgt", tmp: Path | None = None,
                  extra: list[str] | None = None, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """``streamrecon infer-server`` in its own process on a free port; returns (process, endpoint) once healthy."""
    from pipelines.inference_client import health

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
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


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
