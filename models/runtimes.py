"""CPU runtimes for KGMgT's generator: torch eager, ONNX Runtime or OpenVINO, from one exported ONNX graph.

Only the generator (the shared-weight U-Net of guided stages, called twice a
frame) is handed to another runtime; everything around it stays in torch:
the complex plumbing, the padding, and data consistency (complex FFTs and a
conjugate-gradient loop with a data-dependent exit, which ONNX exports
poorly). So any KGMgT configuration works the same way (``dc_per_step``,
``dc_on_input``, cascades), because they differ only outside the generator.

:class:`ExportedGenerator` is a drop-in for :class:`models.kgmgt.KGMgTGenerator`:
the same ``forward(x, ref, priors) -> (residual, features)``. The mentor
pass (``priors=None``) is fed zero priors, which is what the generator
itself uses then, so one graph serves both passes. The graph is exported
per input shape ``(B, H, W)`` on first use (a few seconds; the window
attention's padding and masks are fixed by the shape, so one traced graph
cannot serve every size) and kept, at most ``max_shapes`` of them. The
TorchScript exporter is used: torch 2.13's dynamo exporter fails to
decompose the window attention's reshape after
``scaled_dot_product_attention``.

The graph then runs on ONNX Runtime's CPU execution provider or on
OpenVINO's CPU plugin (which reads the same ONNX graph). Both are optional
dependencies (``pip install 'streamrecon[cpu-runtimes]'``), imported only
when asked for. Which one is faster than torch eager is measured by
``streamrecon bench runtime`` (records in ``simulator/benchmarks/results/``).
"""
from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

RUNTIMES = ("torch", "onnxruntime", "openvino")
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_INPUTS = ("x", "ref", "p0", "p1", "p2", "p3", "p4")
_OUTPUTS = ("residual", "f0", "f1", "f2", "f3", "f4")


def runtime_missing(runtime: str) -> str | None:
    """Why ``runtime`` cannot be used here, or None when it can."""
    if runtime == "torch":
        return None
    if runtime not in _PACKAGES:
        return f"unknown runtime {runtime!r}; one of {RUNTIMES}"
    try:
        __import__(_PACKAGES[runtime])
    except ImportError as exc:
        return f"{runtime} is not installed (pip install 'streamrecon[cpu-runtimes]'): {exc}"
    return None


def onnxruntime_missing() -> str | None:
    """Why ONNX Runtime cannot be used here, or None when it can."""
    return runtime_missing("onnxruntime")


class _Flat(nn.Module):
    """The generator with its priors and features as flat tensors (what an exported graph takes)."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x, ref, p0, p1, p2, p3, p4):
        residual, features = self.generator(x, ref, [p0, p1, p2, p3, p4])
        return (residual, *features)


def _prior_shapes(b: int, c: int, h: int, w: int) -> list[tuple[int, int, int, int]]:
    # the five stages: full, half, quarter resolution, then half and full again (H, W multiples of 4)
    return [(b, c, h, w), (b, c, h // 2, w // 2), (b, c, h // 4, w // 4), (b, c, h // 2, w // 2), (b, c, h, w)]


class ExportedGenerator(nn.Module):
    """KGMgT's generator run by ONNX Runtime or OpenVINO on the CPU; see the module docstring.

    ``threads``: the runtime's inference threads (the operator's ``cpu_threads``);
    ONNX Runtime's pool does not spin-wait (a spinning pool slows everything
    else on a shared host).
    """

    def __init__(self, generator: nn.Module, runtime: str = "onnxruntime", threads: int = 1, max_shapes: int = 8) -> None:
        super().__init__()
        if runtime not in _PACKAGES:
            raise ValueError(f"an exported generator runs on {tuple(_PACKAGES)}, not {runtime!r}")
        reason = runtime_missing(runtime)
        if reason:
            raise RuntimeError(reason)
        self.runtime = runtime
        self.torch_generator = generator.eval()  # kept: the weights, parameter count and re-export
        self.channels = int(generator.head.out_channels)
        self.threads, self.max_shapes = max(1, int(threads)), max(1, int(max_shapes))
        self._sessions: OrderedDict[tuple[int, int, int], object] = OrderedDict()
        self._lock = threading.Lock()

    def _export(self, shape: tuple[int, int, int]):
        b, h, w = shape
        example = [torch.zeros(b, 2, h, w), torch.zeros(b, 2, h, w)]
        example += [torch.zeros(s) for s in _prior_shapes(b, self.channels, h, w)]
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: the shape-dependent branches are fixed per shape
            torch.onnx.export(_Flat(self.torch_generator), tuple(example), buffer, dynamo=False, opset_version=17,
                              input_names=list(_INPUTS), output_names=list(_OUTPUTS), do_constant_folding=True)
        return self._compile(buffer.getvalue())

    def _compile(self, onnx: bytes):
        if self.runtime == "openvino":
            import openvino as ov

            compiled = ov.Core().compile_model(ov.convert_model(io.BytesIO(onnx)), "CPU", {
                "INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
            def run(feeds: dict) -> list:
                result = compiled(feeds)
                return [result[name] for name in _OUTPUTS]

            return run
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(list(_OUTPUTS), feeds)

    def session(self, shape: tuple[int, int, int]):
        """The compiled graph (a callable ``feeds -> outputs``) for inputs ``(B, 2, H, W)``, exported on first use."""
        with self._lock:
            sess = self._sessions.get(shape)
            if sess is None:
                sess = self._sessions[shape] = self._export(shape)
                while len(self._sessions) > self.max_shapes:
                    self._sessions.popitem(last=False)
            else:
                self._sessions.move_to_end(shape)
            return sess

    def forward(self, x: torch.Tensor, ref: torch.Tensor, priors: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.device.type != "cpu":
            raise RuntimeError(f"the {self.runtime} generator runs on the CPU only")
        b, _, h, w = x.shape
        if priors is None:
            priors = [torch.zeros(s, dtype=torch.float32) for s in _prior_shapes(b, self.channels, h, w)]
        arrays = [t.detach().float().contiguous().numpy() for t in (x, ref, *priors)]
        outputs = self.session((b, h, w))(dict(zip(_INPUTS, arrays)))
        tensors = [torch.from_numpy(np.ascontiguousarray(o)) for o in outputs]
        return tensors[0], tensors[1:]


def use_runtime(model: nn.Module, runtime: str, threads: int = 1) -> str:
    """Run ``model``'s generator on ``runtime`` (one of :data:`RUNTIMES`); returns the runtime in use.

    Only KGMgT has a generator to hand over; other models stay on torch (the
    return value says so). The exported runtimes need the model on the CPU.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    generator = getattr(model, "generator", None)
    if runtime == "torch" or generator is None:
        return "torch"
    if isinstance(generator, ExportedGenerator):
        generator = generator.torch_generator
    if next(generator.parameters()).device.type != "cpu":
        raise ValueError(f"the {runtime} runtime runs on the CPU: load the model with device='cpu'")
    model.generator = ExportedGenerator(generator, runtime, threads)
    return runtime


__all__ = ["RUNTIMES", "ExportedGenerator", "use_runtime", "runtime_missing", "onnxruntime_missing"]
