"""The model registry: every network the plugin can build, load and serve, by name.

One entry per model says everything the rest of the code needs to know
about it, so nothing outside ``models/`` names a model:

- ``build(config)``: the ``nn.Module`` from a weights card's config (``None``:
  the model's small CPU default); :func:`models.weights.build_model` uses it,
  so a card's ``architecture`` is a registry name;
- ``operation``: the call it answers (:data:`OPERATIONS`): ``"cine"`` (a
  window of three frames) or ``"pair"`` (a reference guides a target);
  ``""`` for a network that is only trained or compared, never served;
- the operation's :class:`InputSpec`: the arrays of one request, their
  shapes and dtypes; the ZeroMQ service validates requests with it and the
  Triton server declares its tensors from it;
- ``default_weights``: the shipped weight set (``models/weights/<name>``) or a
  path; ``card``: the model card (``.md`` beside the shipped weights);
- ``display`` and ``recon_method``: how images name it (meta ``Model``,
  ``ReconMethod``, ``ImageComment``).

The in-process backend (:mod:`models.inference`), the ZeroMQ service and
the Triton server serve any registered model of a known operation; a gadget
names its model by a pipeline property (``model``), defaulting to
:func:`default_model` of its operation.

A new model: a module that builds its network (the operation's network
contract: :class:`models.inference.Reconstructor`) and calls
:func:`register`; servers started with ``--model-module that.module`` import
it. This module imports no torch (gadgets read the registry; builders import
their network when called).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class InputSpec:
    """The arrays of one batched request of an operation.

    ``shapes`` gives each array's shape, dimensions named ``B`` (items),
    ``C`` (coils), ``ny``, ``nx`` or fixed integers; every array is complex64
    except the bool ``mask`` (``(B, ny)`` lines or ``(B, ny, nx)`` pixels).
    ``flags`` are per-request booleans (``causal``). ``target`` is the array
    whose pixels the reply images correspond to (for the clients' timeouts).
    """

    operation: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    shapes: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    target: str = "kspace"

    @property
    def arrays(self) -> tuple[str, ...]:
        return self.required + self.optional

    def complex_arrays(self) -> tuple[str, ...]:
        return tuple(a for a in self.arrays if a != "mask")

    def shape(self, name: str, b: int, coils: int, ny: int, nx: int) -> tuple[int, ...]:
        """The shape ``name`` must have in a request of ``b`` items, ``coils`` coils on an ``ny x nx`` matrix."""
        sizes = {"B": b, "C": coils, "ny": ny, "nx": nx}
        return tuple(sizes[d] if isinstance(d, str) else int(d) for d in self.shapes[name])

    def item_shape(self, name: str) -> tuple[int, ...]:
        """Shape of one item, ``-1`` for a variable dimension (what Triton declares)."""
        return tuple(-1 if isinstance(d, str) else int(d) for d in self.shapes[name][1:])


_IMAGE = ("B", "ny", "nx")
_COILS = ("B", "C", "ny", "nx")
OPERATIONS: dict[str, InputSpec] = {
    # frames (t-1, t, t+1) centred or (t-2, t-1, t) causal, coil-combined; frame t's measured k-space
    "cine": InputSpec("cine", ("frames", "kspace", "mask", "maps"),
                      shapes={"frames": ("B", 3, "ny", "nx"), "kspace": _COILS, "maps": _COILS},
                      flags=("causal",), target="frames"),
    # the zero-filled target and its k-space, guided by a fully sampled reference (optional: single contrast)
    "pair": InputSpec("pair", ("target", "kspace", "mask", "maps"), ("reference",),
                      shapes={"target": _IMAGE, "reference": _IMAGE, "kspace": _COILS, "maps": _COILS},
                      target="target"),
}


@dataclass(frozen=True)
class ModelEntry:
    """One registered model (module docstring)."""

    name: str
    operation: str
    build: Callable[[Mapping[str, Any] | None], Any]
    default_weights: str = ""
    card: str = ""
    display: str = ""
    recon_method: str = ""
    description: str = ""

    @property
    def spec(self) -> InputSpec:
        if self.operation not in OPERATIONS:
            raise ValueError(f"model {self.name!r} is not served (operation {self.operation!r})")
        return OPERATIONS[self.operation]

    @property
    def label(self) -> str:
        return self.display or self.name

    def weights_path(self) -> Path | None:
        """The default weights file: a shipped set's name or a path; None when the model has none."""
        if not self.default_weights:
            return None
        path = Path(self.default_weights)
        if path.suffix or path.is_absolute() or len(path.parts) > 1:
            return path.with_suffix(".safetensors")
        return SHIPPED_DIR / f"{self.default_weights}.safetensors"


class InferenceError(RuntimeError):
    """Inference did not produce an image (the reason is the message).

    Every backend raises it, in process or remote; it lives here, below them
    all and free of torch, so the clients need nothing of the gadgets.
    """


_ENTRIES: dict[str, ModelEntry] = {}
# Per operation, the model a gadget uses when its pipeline names none: the first registered.
_DEFAULTS: dict[str, str] = {}


def register(entry: ModelEntry, replace: bool = False) -> ModelEntry:
    """Add ``entry``; registering a different entry under a taken name is an error unless ``replace``."""
    if entry.operation and entry.operation not in OPERATIONS:
        raise ValueError(f"model {entry.name!r}: unknown operation {entry.operation!r}; one of {sorted(OPERATIONS)}")
    old = _ENTRIES.get(entry.name)
    if old is not None and old != entry and not replace:
        raise ValueError(f"a model named {entry.name!r} is already registered")
    _ENTRIES[entry.name] = entry
    if entry.operation:
        _DEFAULTS.setdefault(entry.operation, entry.name)
    return entry


def unregister(name: str) -> None:
    """Remove a model (tests that register one clean up after themselves)."""
    entry = _ENTRIES.pop(name, None)
    if entry is not None and _DEFAULTS.get(entry.operation) == name:
        del _DEFAULTS[entry.operation]
        for other in _ENTRIES.values():
            if other.operation == entry.operation:
                _DEFAULTS[entry.operation] = other.name
                break


def get(name: str) -> ModelEntry:
    """The entry of ``name``; ``ValueError`` naming the registered models otherwise."""
    entry = _ENTRIES.get(name)
    if entry is None:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_ENTRIES))}")
    return entry


def names(operation: str | None = None) -> list[str]:
    """Registered models, in registration order; only those answering ``operation`` if given."""
    return [n for n, e in _ENTRIES.items() if operation is None or e.operation == operation]


def served() -> list[str]:
    """Models a server can serve (those with an operation)."""
    return [n for n, e in _ENTRIES.items() if e.operation]


def default_model(operation: str) -> str:
    """The model a gadget of ``operation`` uses when its pipeline names none."""
    if operation not in _DEFAULTS:
        raise ValueError(f"no model registered for operation {operation!r}")
    return _DEFAULTS[operation]


class OperationCalls:
    """The backends' per-operation calls, on top of their ``run(model, arrays, causal)``.

    Every backend (in process, ZeroMQ, Triton) answers ``cine_batch`` and
    ``pair_batch`` the same way: the arrays named as the operation's
    :class:`InputSpec`, for ``model`` or the operation's default model.
    """

    def run(self, model: str, arrays: dict[str, Any], causal: bool = False) -> Any:
        raise NotImplementedError

    def cine_batch(self, frames: Any, kspace: Any, mask: Any, maps: Any, causal: bool, model: str | None = None) -> Any:
        return self.run(model or default_model("cine"), {"frames": frames, "kspace": kspace, "mask": mask, "maps": maps},
                        causal)

    def pair_batch(self, reference: Any, target: Any, kspace: Any, mask: Any, maps: Any, model: str | None = None) -> Any:
        return self.run(model or default_model("pair"), {"reference": reference, "target": target, "kspace": kspace,
                                                         "mask": mask, "maps": maps})


def model_key(name: str, device: str = "cpu", weights: str | None = None, allow_random: bool = False,
              cpu_runtime: str = "torch") -> tuple:
    """What identifies one loaded model in a process (the in-process cache's key and its turns')."""
    return (name, device, str(Path(weights).resolve()) if weights else "", bool(allow_random), cpu_runtime)


def import_modules(modules: Iterable[str]) -> list[str]:
    """Import modules that register models (servers' ``--model-module``); returns the models now registered."""
    for module in modules:
        if module:
            importlib.import_module(module)
    return served()


# ---------------------------------------------------------------------------- the built-in models
def _build_kgmgt(config: Mapping[str, Any] | None) -> Any:
    from .kgmgt import KGMgT, KGMgTConfig

    return KGMgT(KGMgTConfig(**config) if config else KGMgTConfig.cpu_small())


def _build_sgfmri(config: Mapping[str, Any] | None) -> Any:
    from .sgfmri import SGFMRI, SGFMRIConfig

    return SGFMRI(SGFMRIConfig(**config) if config else SGFMRIConfig.cpu_small())


def _build_dual_unet_resnet3d(config: Mapping[str, Any] | None) -> Any:
    from .baselines import DualUNetResNet3D

    return DualUNetResNet3D(**dict(config or {}))


register(ModelEntry("kgmgt", "cine", _build_kgmgt, default_weights="kgmgt_cine_rt", card="kgmgt_cine_rt.md",
                    display="KGMgT", recon_method="KGMgT + k-space DC",
                    description="knowledge-guided multi-scale transformer for cardiac cine (three-frame window)"))
register(ModelEntry("sgfmri", "pair", _build_sgfmri, default_weights="sgfmri_brain_ur",
                    card="sgfmri_brain_ur.md", display="SGF-MRI", recon_method="SGF-MRI + k-space DC",
                    description="reference-guided multi-contrast reconstruction"))
# the whole-series baseline of the cine evaluation (seeds/004): trained and compared, not streamed
register(ModelEntry("dual_unet_resnet3d", "", _build_dual_unet_resnet3d, display="dual U-Net + 3-D ResNet",
                    description="dual U-Net + 3-D ResNet over a whole zero-filled cine series"))


__all__ = ["InferenceError", "InputSpec", "ModelEntry", "OperationCalls", "OPERATIONS", "register", "unregister", "get", "names", "served",
           "default_model", "import_modules", "model_key", "SHIPPED_DIR"]
