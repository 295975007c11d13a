"""Reading a gadget's ``<property name= value=>`` parameters from its configuration.

Gadgetron hands an external gadget the XML of its node's
``<configuration>``; the embedded host hands over the same element. Values
arrive as text, so each getter converts and names the property when the
text does not parse.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def properties(config: ET.Element | None) -> dict[str, str]:
    """All ``name -> value`` pairs under ``config`` (any depth, last one wins)."""
    if config is None:
        return {}
    found = {}
    for element in config.iter():
        if element.tag.rsplit("}", 1)[-1] == "property" and element.get("name"):
            found[element.get("name")] = element.get("value", element.text or "")
    return found


def _convert(name: str, text: str, kind: Callable[[str], T]) -> T:
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ValueError(f"property {name!r}: cannot read {text!r} as {getattr(kind, '__name__', kind)}") from None


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def get(config: Any, name: str, default: T, kind: Callable[[str], T] | None = None) -> T:
    """The property ``name`` converted like ``default`` (or by ``kind``), else ``default``."""
    props = properties(config)
    if name not in props:
        return default
    if kind is None:
        kind = _bool if isinstance(default, bool) else type(default) if default is not None else str
    return _convert(name, props[name], kind)
