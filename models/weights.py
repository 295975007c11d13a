"""Weight files: safetensors tensors + a JSON card beside them; no pickle anywhere.

A weight set ``NAME`` is ``NAME.safetensors`` (the model's ``state_dict``,
float32) and its card, ``{"architecture": <a models.registry name>, "config":
{...}, "version": "...", "meta": {...}}``: everything needed to rebuild the
model and to name it in image meta. The card is written twice: as
``NAME.json`` beside the tensors (readable by people) and inside the
``.safetensors`` metadata, so a tensor file copied alone still loads. A
``NAME.json`` beside the file wins over the embedded card.

Shipped sets live in ``models/weights/`` (see the ``.md`` model cards there).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import registry

SHIPPED_DIR = registry.SHIPPED_DIR


def build_model(architecture: str, config: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate a registered network (:mod:`models.registry`) from a config dict (unknown keys are an error)."""
    try:
        entry = registry.get(architecture)
    except ValueError:
        raise ValueError(f"unknown architecture {architecture!r}") from None
    return entry.build(dict(config or {}))


def model_config(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return dict(getattr(model, "init_kwargs", {}))


def save_weights(model: nn.Module, folder: str | Path, name: str, architecture: str, version: str,
                 meta: dict[str, Any] | None = None) -> Path:
    """Write ``folder/name.safetensors`` and ``folder/name.json``; returns the tensor file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    path = folder / f"{name}.safetensors"
    card = {"architecture": architecture, "config": model_config(model), "version": version, "meta": meta or {}}
    save_file(state, str(path), metadata={"architecture": architecture, "version": version,
                                          CARD_KEY: json.dumps(card, sort_keys=True)})
    (folder / f"{name}.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return path


CARD_KEY = "streamrecon_card"


class WeightsError(ValueError):
    """A weights file that cannot be used; the text names the file and why."""


def read_card(path: str | Path) -> dict[str, Any]:
    """The card of a weight file: ``NAME.json`` beside it, else the one inside the ``.safetensors``."""
    path = Path(path)
    beside = path.with_suffix(".json")
    if beside.exists():
        try:
            return json.loads(beside.read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{beside}: not a readable weights card: {exc}") from None
    tensors = path.with_suffix(".safetensors")
    try:
        from safetensors import safe_open

        with safe_open(str(tensors), framework="pt") as f:
            embedded = (f.metadata() or {}).get(CARD_KEY)
    except Exception as exc:  # safetensors raises its own error types on a damaged header
        raise WeightsError(f"{tensors}: not a readable .safetensors file ({type(exc).__name__}: {exc})") from None
    if not embedded:
        raise WeightsError(f"{tensors}: no card: neither {beside.name} beside it nor one inside the file "
                           "(files written by streamrecon train carry both)")
    return json.loads(embedded)


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model described by ``path``'s card and load its tensors (strict).

    Raises :class:`WeightsError` naming the file when it is damaged, has no card, or does not fit
    the card's architecture."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    card = read_card(path)
    try:
        model = build_model(card["architecture"], card.get("config"))
        model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot be loaded as its card's {card.get('architecture')!r} model "
                           f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None
    return model.to(device).eval(), card


def shipped_path(name: str) -> Path:
    """``models/weights/<name>.safetensors`` (may not exist)."""
    return SHIPPED_DIR / f"{name}.safetensors"


__all__ = ["build_model", "save_weights", "load_weights", "read_card", "WeightsError", "CARD_KEY", "shipped_path", "SHIPPED_DIR", "model_config"]
