"""Operator settings: what only the host operator decides, never a client's pipeline.

A pipeline arrives over the network, so its ``<property>`` values are per-scan
algorithm parameters, checked by each gadget. Anything that touches the host
(where files are written, which endpoint receives k-space and supplies images,
process-wide torch threads, which weights run, untrained networks, resource
limits) is an *operator setting*, read from, highest precedence first:

1. ``streamrecon serve`` options (the embedded host hands them to every gadget
   through its connection's ``operator_settings``);
2. environment variables ``STREAMRECON_<NAME>`` (a real Gadgetron starts a
   ``python -m gadgetron`` process per node: they inherit its environment);
3. a JSON host config file named by ``STREAMRECON_CONFIG`` (``{"name": value}``);
4. the defaults below.

A pipeline property naming an operator setting is refused by name: the
embedded host refuses the pipeline before any data (TEXT + CLOSE), and under
Gadgetron the gadget fails with the same message (:func:`for_connection`).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import properties

CONFIG_ENV = "STREAMRECON_CONFIG"


@dataclass(frozen=True)
class Setting:
    name: str
    kind: Callable[[str], Any]
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "STREAMRECON_" + self.name.upper()


def _bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean")


CPU_RUNTIMES = ("torch", "onnxruntime", "openvino")  # models.runtimes.RUNTIMES (gadgets import no torch here)
# KGMgT's generator on the CPU: the runtime `streamrecon bench runtime` measured fastest against torch eager
# (simulator/benchmarks/results/cpu_runtime_*.md); a runtime whose package is missing falls back to torch.
DEFAULT_CPU_RUNTIME = "torch"


def _cpu_runtime(text: Any) -> str:
    value = str(text).strip().lower()
    if value not in CPU_RUNTIMES:
        raise ValueError(f"{text!r} is not one of {CPU_RUNTIMES}")
    return value


SETTINGS: tuple[Setting, ...] = (
    Setting("inference_endpoint", str, "tcp://127.0.0.1:5555",
            "inference service endpoint of the pipelines with inference=service"),
    Setting("inference_override", str, "",
            "in-process, service or triton: replaces every pipeline's inference choice (e.g. service under "
            "Gadgetron's execute mode, so per-scan processes use the warm infer-server); empty: as each pipeline says"),
    Setting("inference_timeout_ms", float, 0.0,
            "service reply timeout; 0 derives it from the model time the service measured"),
    Setting("triton_endpoint", str, "127.0.0.1:8001",
            "Triton server (gRPC host:port) of the pipelines with inference=triton"),
    Setting("device", str, "auto", "in-process inference device: cpu, cuda, cuda:N or auto"),
    Setting("cpu_threads", int, 1, "torch threads for in-process CPU inference (process-wide)"),
    Setting("cpu_runtime", _cpu_runtime, DEFAULT_CPU_RUNTIME,
            "runtime of KGMgT's network on the CPU: torch, onnxruntime or openvino (DC stays in torch)"),
    Setting("kgmgt_weights", str, "", "KGMgT .safetensors for in-process inference (default: the shipped set)"),
    Setting("sgfmri_weights", str, "", "SGF-MRI .safetensors for in-process inference (default: the shipped set)"),
    Setting("model_weights", str, "",
            "weights of any registered model for in-process inference, NAME=PATH[,NAME=PATH...] (models.registry "
            "names; wins over kgmgt_weights and sgfmri_weights; default: each model's registered set)"),
    Setting("allow_random", _bool, False, "tests only: untrained networks when weights are missing"),
    Setting("reference_store", str, "", "folder of the multi-contrast reference store"),
    Setting("max_matrix", int, 512, "largest encoded or recon matrix side a header may claim"),
    Setting("max_coils", int, 64, "most receiver channels a header or readout may claim"),
    Setting("max_open_frames", int, 64, "frames open at once per session (the oldest is closed beyond)"),
    Setting("max_cache_entries", int, 64, "slices whose coil maps a session keeps (oldest dropped beyond)"),
    Setting("reference_store_max_age_s", float, 7200.0, "age limit of a stored reference (a pipeline may only shorten it)"),
    Setting("reference_store_max_entries", int, 512, "references the store keeps (oldest dropped beyond)"),
    Setting("reference_store_max_mb", float, 256.0, "MiB the reference store may hold (oldest dropped beyond)"),
    Setting("peer_stall_s", float, 5.0, "seconds a gadget waits on a peer that stopped reading before giving up"),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
# `serve --reference-store` is added with the reference store's own rework; the
# environment variable and the config file work already.
_NO_CLI = {"reference_store"}


class OperatorSettingRefused(ValueError):
    """A pipeline tried to set what only the host operator may set."""


@dataclass(frozen=True)
class OperatorSettings:
    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        if name in BY_NAME:
            return self.values.get(name, BY_NAME[name].default)
        raise AttributeError(name)

    def with_values(self, **values: Any) -> "OperatorSettings":
        unknown = set(values) - set(BY_NAME)
        if unknown:
            raise KeyError(f"unknown operator settings: {sorted(unknown)}")
        converted = {k: _convert(BY_NAME[k], v) for k, v in values.items() if v is not None}
        return OperatorSettings({**self.values, **converted})

    def environment(self) -> dict[str, str]:
        """``STREAMRECON_*`` variables carrying these settings to child processes."""
        return {BY_NAME[k].env: str(v) for k, v in self.values.items()}


def _convert(setting: Setting, value: Any) -> Any:
    try:
        return setting.kind(str(value) if setting.kind is str else value)
    except (TypeError, ValueError):
        raise ValueError(f"operator setting {setting.name}: cannot read {value!r}") from None


def load(environ: Mapping[str, str] | None = None) -> OperatorSettings:
    """Defaults, then the ``STREAMRECON_CONFIG`` file, then ``STREAMRECON_*`` variables."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = environ.get(CONFIG_ENV, "")
    if path:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{CONFIG_ENV} file {path}: expected a JSON object")
        unknown = set(data) - set(BY_NAME)
        if unknown:
            raise ValueError(f"{CONFIG_ENV} file {path}: unknown settings {sorted(unknown)}")
        values.update({k: _convert(BY_NAME[k], v) for k, v in data.items()})
    for s in SETTINGS:
        if s.env in environ:
            values[s.name] = _convert(s, environ[s.env])
    return OperatorSettings(values)


def operator_properties(config: Any) -> list[str]:
    """The properties of a gadget configuration that name operator settings."""
    return sorted(name for name in properties.properties(config) if name in BY_NAME)


def refusal(names: list[str]) -> str:
    listed = ", ".join(f"'{n}'" for n in names)
    return (f"pipeline property {listed} is a host operator setting: set it with `streamrecon serve` options, "
            f"STREAMRECON_* environment variables or the {CONFIG_ENV} file, not in a pipeline")


def check_config(config: Any) -> None:
    """Raise :class:`OperatorSettingRefused` when ``config`` sets an operator setting."""
    names = operator_properties(config)
    if names:
        raise OperatorSettingRefused(refusal(names))


def for_connection(connection: Any) -> OperatorSettings:
    """The operator settings for a gadget: the embedded host's, else the process environment.

    Refuses a node configuration that tries to set one (under Gadgetron no
    host checked the pipeline before the gadget runs).
    """
    check_config(getattr(connection, "config", None))
    settings = getattr(connection, "operator_settings", None)
    return settings if isinstance(settings, OperatorSettings) else load()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--kgmgt-weights`` etc. for every operator setting (default: environment / config file)."""
    group = parser.add_argument_group("operator settings (override STREAMRECON_* and the STREAMRECON_CONFIG file)")
    for s in SETTINGS:
        if s.name in _NO_CLI:
            continue
        flag = "--" + s.name.replace("_", "-")
        if s.kind is _bool:
            group.add_argument(flag, dest=s.name, action="store_const", const=True, default=None, help=s.help)
        else:
            said = "default" in s.help.lower()  # stated once, in words, where the help says it already
            group.add_argument(flag, dest=s.name, type=s.kind, default=None,
                               help=s.help if said else f"{s.help} (default {s.default!r})")


def from_args(args: argparse.Namespace, base: OperatorSettings | None = None) -> OperatorSettings:
    base = base if base is not None else load()
    return base.with_values(**{s.name: getattr(args, s.name, None) for s in SETTINGS if s.name not in _NO_CLI})


def weights_by_model(settings: OperatorSettings) -> dict[str, str | None]:
    """The operator's weights per model name (``None``: the model's registered default set).

    ``kgmgt_weights`` and ``sgfmri_weights`` are the two shipped models' own
    settings; ``model_weights`` names any registered model's (a model added
    to the registry needs no setting of its own).
    """
    chosen: dict[str, str | None] = {"kgmgt": settings.kgmgt_weights or None, "sgfmri": settings.sgfmri_weights or None}
    for part in str(settings.model_weights or "").split(","):
        if not part.strip():
            continue
        name, sep, path = part.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"operator setting model_weights: {part.strip()!r} is not NAME=PATH")
        chosen[name.strip()] = path.strip()
    return chosen


__all__ = ["SETTINGS", "OperatorSettings", "weights_by_model", "OperatorSettingRefused", "load", "for_connection", "check_config",
           "operator_properties", "refusal", "add_arguments", "from_args", "CONFIG_ENV"]


# ---------------------------------------------------------------------------- limits from the header
def _matrix(space: Any) -> tuple[int, int, int]:
    m = getattr(space, "matrixSize", None)
    return tuple(int(getattr(m, a, 0) or 0) for a in "xyz") if m is not None else (0, 0, 0)


def check_header(header: Any, settings: OperatorSettings) -> None:
    """Refuse (``ValueError``) a header whose matrices or channel count exceed the operator's limits.

    Called before anything is sized from the header: a 32x32 stream under a
    header claiming a 2048x2048 recon matrix must cost a message, not gigabytes.
    """
    for i, enc in enumerate(header.encoding):
        for what in ("encodedSpace", "reconSpace"):
            size = _matrix(getattr(enc, what, None))
            # the encoded readout includes its oversampling (typically 2x)
            limits = (2 * settings.max_matrix if what == "encodedSpace" else settings.max_matrix,
                      settings.max_matrix, settings.max_matrix)
            if any(n > limit for n, limit in zip(size, limits)):
                raise ValueError(f"header encoding {i} {what} matrix {size[0]}x{size[1]}x{size[2]} exceeds this host's "
                                 f"limit of {settings.max_matrix} per side (operator setting max_matrix)")
        e1 = getattr(getattr(enc, "encodingLimits", None), "kspace_encoding_step_1", None)
        lines = int(e1.maximum) + 1 if e1 is not None and e1.maximum is not None else 0
        if lines > settings.max_matrix:
            raise ValueError(f"header encoding {i} claims {lines} phase-encode lines; this host's limit is "
                             f"{settings.max_matrix} (operator setting max_matrix)")
    channels = getattr(getattr(header, "acquisitionSystemInformation", None), "receiverChannels", None)
    if channels is not None and int(channels) > settings.max_coils:
        raise ValueError(f"header claims {int(channels)} receiver channels; this host's limit is {settings.max_coils} "
                         f"(operator setting max_coils)")


def max_readout_samples(header: Any) -> int:
    """Most samples a readout may carry under ``header``: twice the encoded readout matrix.

    The encoded matrix already includes readout oversampling; twice it leaves
    room for converters that report the recon matrix there.
    """
    enc = header.encoding[0]
    return 2 * max(_matrix(enc.encodedSpace)[0], _matrix(enc.reconSpace)[0], 1)


def check_readout(samples: int, channels: int, header: Any, settings: OperatorSettings) -> None:
    """Refuse (``ValueError``) a readout larger than its header allows."""
    limit = max_readout_samples(header)
    if samples > limit:
        raise ValueError(f"readout of {samples} samples exceeds the {limit} samples the header allows "
                         f"(twice its encoded readout matrix)")
    if channels > settings.max_coils:
        raise ValueError(f"readout has {channels} channels; this host's limit is {settings.max_coils} "
                         f"(operator setting max_coils)")
