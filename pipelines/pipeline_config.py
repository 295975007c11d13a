"""Gadgetron version-2 pipeline XML: parse, resolve and validate before any data.

A pipeline is ``<configuration><version>2</version><readers/><writers/>
<stream>...</stream></configuration>``; every ``<external>`` node in the
stream names a Python gadget (``<execute name="MODULE" target="TARGET"
type="python"/>``) and carries its own ``<configuration>`` of
``<property name= value=>`` children. Anything this host cannot run (a C++
``<gadget>``, ``<parallel>``/``<distributed>`` blocks, an ``<external>``
that only connects to an already running process) is refused by name, as are
modules outside the allowed packages: a pipeline arrives over the network,
and importing whatever module it names would let any client run any code
installed on the reconstruction server.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from gadgets import host_settings

log = logging.getLogger(__name__)

PIPELINE_DIR = Path(__file__).resolve().parent
DEFAULT_GADGET_PACKAGES: tuple[str, ...] = ("gadgets",)
# Every node is a thread (embedded) or a process (Gadgetron); the shipped
# pipelines have five.
MAX_NODES = 32


class PipelineError(Exception):
    """The pipeline cannot be run; the message says which node and why."""


@dataclass
class GadgetSpec:
    """One ``<external>`` node: what to import and the configuration it gets."""

    module: str
    target: str
    config: ET.Element
    name: str = ""
    function: Callable[[Any], None] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return self.name or f"{self.module}.{self.target}"


@dataclass
class Pipeline:
    name: str
    gadgets: list[GadgetSpec]


def xml_tag(element: ET.Element) -> str:
    """An element's tag without its namespace (Gadgetron pipelines sometimes carry a default one)."""
    return element.tag.rsplit("}", 1)[-1]


def resolve_config_file(name: str, search_dirs: Sequence[Path] = ()) -> Path:
    """Map a CONFIG_FILE name to a pipeline file: ``pipelines/<name>`` with or without ``.xml``.

    Only bare file names are accepted; a name with a path separator or
    ``..`` could read arbitrary files on the server.
    """
    name = name.strip()
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise PipelineError(f"pipeline name {name!r} is not a plain file name")
    candidates = [name] if name.endswith(".xml") else [name + ".xml", name]
    for folder in [*search_dirs, PIPELINE_DIR]:
        for candidate in candidates:
            path = Path(folder) / candidate
            if path.is_file():
                return path
    # The TEXT goes to a network client: name the pipelines, never the server's folders.
    raise PipelineError(f"unknown pipeline {name!r}; this host has: {', '.join(pipeline_names(search_dirs))}")


def pipeline_names(search_dirs: Sequence[Path] = ()) -> list[str]:
    """The names (without ``.xml``) of the pipelines a CONFIG_FILE may ask for, sorted."""
    return sorted({p.stem for d in [*search_dirs, PIPELINE_DIR] for p in Path(d).glob("*.xml")})


def pipeline_summary(name: str, search_dirs: Sequence[Path] = ()) -> str:
    """The first sentence of a pipeline's leading XML comment (what it does), or ""."""
    text = resolve_config_file(name, search_dirs).read_text()
    start, end = text.find("<!--"), text.find("-->")
    if start < 0 or end < start:
        return ""
    comment = re.sub(r"\s*\([^()]*(\([^()]*\)[^()]*)*\)", "", " ".join(text[start + 4:end].split()))
    first = comment.split(". ")[0].split(": ")[0].rstrip(".")
    return first if len(first) <= 90 else first[:87] + "..."


def parse_pipeline(xml_text: str | bytes, name: str = "CONFIG_TEXT", max_nodes: int = MAX_NODES) -> Pipeline:
    """Parse a version-2 pipeline; raise :class:`PipelineError` naming what is wrong."""
    if isinstance(xml_text, bytes):
        xml_text = xml_text.decode("utf-8", errors="replace")
    xml_text = xml_text.strip("\x00 \t\r\n")
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise PipelineError(f"pipeline {name} is not well-formed XML: {exc}") from None
    if xml_tag(root) != "configuration":
        raise PipelineError(f"pipeline {name}: root element is <{xml_tag(root)}>, expected <configuration>")
    version = next((c for c in root if xml_tag(c) == "version"), None)
    if version is None or (version.text or "").strip() != "2":
        raise PipelineError(f"pipeline {name}: only Gadgetron version-2 pipelines are supported (<version>2</version>)")
    stream = next((c for c in root if xml_tag(c) == "stream"), None)
    if stream is None:
        raise PipelineError(f"pipeline {name} has no <stream>")
    if len(stream) > max_nodes:
        raise PipelineError(f"pipeline {name} has {len(stream)} nodes; this host runs at most {max_nodes}")
    gadgets: list[GadgetSpec] = []
    for node in stream:
        tag = xml_tag(node)
        if tag == "external":
            gadgets.append(_external(node, name))
        elif tag == "gadget":
            cls = (node.findtext("classname") or node.findtext("name") or "?").strip()
            raise PipelineError(f"pipeline {name}: C++ <gadget> {cls!r} cannot run in the embedded host (Python <external> gadgets only)")
        else:
            raise PipelineError(f"pipeline {name}: <{tag}> nodes are not supported by the embedded host")
    if not gadgets:
        raise PipelineError(f"pipeline {name}: <stream> has no <external> gadgets")
    return Pipeline(name=name, gadgets=gadgets)


def _external(node: ET.Element, pipeline: str) -> GadgetSpec:
    # A connect-mode node (pipelines/*_connect.xml) also names its gadget in
    # <execute>: Gadgetron connects, this host runs the gadget in process.
    execute = next((c for c in node if xml_tag(c) == "execute"), None)
    if execute is None:
        if any(xml_tag(c) == "connect" for c in node):
            raise PipelineError(f"pipeline {pipeline}: <external><connect> (an already running module) is not supported")
        raise PipelineError(f"pipeline {pipeline}: <external> without <execute>")
    kind = execute.get("type", "python")
    if kind != "python":
        raise PipelineError(f"pipeline {pipeline}: external type {kind!r} is not supported (python only)")
    module, target = execute.get("name"), execute.get("target")
    if not module or not target:
        raise PipelineError(f"pipeline {pipeline}: <execute> needs both name= (module) and target=")
    config = next((c for c in node if xml_tag(c) == "configuration"), None)
    if config is None:
        config = ET.Element("configuration")
    refused = host_settings.operator_properties(config)
    if refused:
        raise PipelineError(f"pipeline {pipeline}, gadget {module}.{target}: {host_settings.refusal(refused)}")
    return GadgetSpec(module=module, target=target, config=config, name=node.get("name", ""))


def load_gadgets(pipeline: Pipeline, allowed_packages: Sequence[str] = DEFAULT_GADGET_PACKAGES) -> Pipeline:
    """Import every gadget's module and target; refuse unknown ones by name."""
    for spec in pipeline.gadgets:
        if not any(spec.module == p or spec.module.startswith(p + ".") for p in allowed_packages):
            raise PipelineError(
                f"gadget module {spec.module!r} is not in the allowed packages ({', '.join(allowed_packages)})")
        try:
            module = importlib.import_module(spec.module)
        except ModuleNotFoundError as exc:
            raise PipelineError(f"unknown gadget module {spec.module!r} ({exc})") from None
        except Exception as exc:
            raise PipelineError(f"gadget module {spec.module!r} failed to import: {type(exc).__name__}: {exc}") from None
        target = getattr(module, spec.target, None)
        if target is None:
            raise PipelineError(f"gadget module {spec.module!r} has no target {spec.target!r}")
        spec.function = _callable(target, spec)
    return pipeline


def _callable(target: Any, spec: GadgetSpec) -> Callable[[Any], None]:
    # Same rule as gadgetron's own loader: a class is instantiated per
    # connection and its handle() called; a function is called directly.
    if inspect.isclass(target):
        if not callable(getattr(target, "handle", None)):
            raise PipelineError(f"gadget class {spec.module}.{spec.target} has no handle(connection) method")
        return lambda connection: target().handle(connection)
    if callable(target):
        return target
    raise PipelineError(f"gadget target {spec.module}.{spec.target} is neither a function nor a class")


def pipeline_from_config_file(name: str, search_dirs: Sequence[Path] = (),
                              allowed_packages: Sequence[str] = DEFAULT_GADGET_PACKAGES) -> Pipeline:
    path = resolve_config_file(name, search_dirs)
    return load_gadgets(parse_pipeline(path.read_text(), name=path.name), allowed_packages)


def pipeline_from_config_text(text: str, allowed_packages: Sequence[str] = DEFAULT_GADGET_PACKAGES) -> Pipeline:
    return load_gadgets(parse_pipeline(text), allowed_packages)


def with_properties(xml_text: str, module: str, **props: object) -> str:
    """Pipeline XML with properties of the gadget from ``module`` set (added when absent)."""
    root = ET.fromstring(xml_text)
    for ext in root.iter("external"):
        execute = next((c for c in ext if xml_tag(c) == "execute"), None)
        if execute is None or execute.get("name") != module:
            continue
        cfg = next((c for c in ext if xml_tag(c) == "configuration"), None)
        if cfg is None:
            cfg = ET.SubElement(ext, "configuration")
        for key, value in props.items():
            prop = next((q for q in cfg.iter("property") if q.get("name") == key), None)
            if prop is None:
                prop = ET.SubElement(cfg, "property", name=key)
            prop.set("value", str(value))
        return ET.tostring(root, encoding="unicode")
    raise PipelineError(f"pipeline has no gadget from module {module!r}")


def shipped_pipeline_with(name: str, module: str, **props: object) -> str:
    """A shipped pipeline's XML (``pipelines/<name>.xml``) with gadget properties changed."""
    return with_properties(resolve_config_file(name).read_text(), module, **props)
