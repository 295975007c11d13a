"""Helpers for the deep-learning gadget tests: tiny weight files, pipeline properties, a service process."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from pipelines.pipeline_config import shipped_pipeline_with as pipeline_text  # noqa: F401  (tests import it from here)
from pipelines.processes import (free_port, python_env, start_inference_service, start_triton_server, stop, stop_group,  # noqa: F401
                                 triton_python)

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"

# A real-time bound (``max_lag_ms``) no test run reaches: 10 minutes, beyond every hang guard. For tests of
# what the images are, through real sockets and threads, where the machine's load must not decide which
# windows get the model or in which order. The real-time path still runs (deadlines, plans); the bound
# itself is tested on a virtual clock (tests/test_dl_realtime.py, tests/test_realtime_scheduler.py).
UNREACHED_LAG_MS = 600_000


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




class SimulatedTimeBackend:
    """The real in-process KGMgT, whose duration is simulated on a virtual clock (``tests/virtual_clock.py``).

    The images are the real tiny network's; the time a call takes is not the
    machine's (which a loaded 2-core CPU makes anything) but ``first_s`` more
    on the first call, plus ``call_s`` per call and ``per_item_s`` per window,
    of virtual time, so a scheduler test sees the same model speed on every
    run. ``sizes`` records each call's batch size.

    It is one session's backend and does not offer the shared model's turn
    waits (``expected_wait_s``): those are measured on the turns thread in
    real seconds, which must not leak into the virtual clock's plans.
    """

    label = "in-process"

    def __init__(self, clock, weights: Path, *, first_s: float = 0.0, call_s: float = 0.0,
                 per_item_s: float = 0.0) -> None:
        from gadgets.inference import InProcessBackend

        self.model = InProcessBackend(device="cpu", weights={"kgmgt": str(weights)})
        self.clock = clock
        self.first_s, self.call_s, self.per_item_s = first_s, call_s, per_item_s
        self.sizes: list[int] = []

    def cine_batch(self, frames, kspace, mask, maps, causal, model=None):
        images = self.model.cine_batch(frames, kspace, mask, maps, causal, model)  # real work: no virtual time
        self.clock.sleep((self.first_s if not self.sizes else 0.0) + self.call_s + self.per_item_s * len(frames))
        self.sizes.append(len(frames))
        return images

    def model_info(self, model: str) -> dict:
        return self.model.model_info(model)

    def close(self) -> None:
        self.model.close()


def series(images, index: int) -> list:
    return [im for im in images if int(im.image_series_index) == index]


def pixels(image) -> np.ndarray:
    return np.asarray(image.data).reshape(image.data.shape[-2:])




def start_service(weights: dict[str, Path], models: str = "kgmgt", tmp: Path | None = None,
                  extra: list[str] | None = None, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """``streamrecon infer-server`` on the given weights, CPU, in its own process; (process, endpoint) once healthy."""
    return start_inference_service(["--device", "cpu", "--models", models, "--kgmgt-weights", str(weights["kgmgt"]),
                                    "--sgfmri-weights", str(weights["sgfmri"])] + (extra or []), timeout=timeout)



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



def start_triton(python: str, weights: dict[str, Path], models: str = "kgmgt,sgfmri", extra: list[str] | None = None,
                 timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``streamrecon triton-server`` on the tiny weights, on free loopback ports; (process, gRPC endpoint) once ready."""
    return start_triton_server(python, ["--device", "cpu", "--models", models, "--kgmgt-weights", str(weights["kgmgt"]),
                                        "--sgfmri-weights", str(weights["sgfmri"]), "--log-level", "WARNING"]
                               + (extra or []), timeout)
