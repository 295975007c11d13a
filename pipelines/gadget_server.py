"""Warm gadgets for a real Gadgetron: ``streamrecon gadget-server``.

Gadgetron runs an ``<external><execute>`` node by starting a fresh
``python -m gadgetron`` process per node per scan, which pays for importing
torch and loading the weights at the start of every acquisition. An
``<external><connect port=P>`` node instead makes Gadgetron connect to a
process that is already listening on P. This is that process: it serves the
project's gadgets on loopback ports, one port per gadget, with the
deep-learning models loaded once at start (the gadget modules' ``preload``
hooks), and runs every connection Gadgetron opens on its own thread with
the same ``gadgetron.external.Connection`` the execute mode uses.

Which gadget a port serves comes from the connect-mode pipelines in the
host's pipeline folders (``pipelines/*_connect.xml`` and ``--pipelines``):
each of their ``<external>`` nodes carries ``<connect port=P>`` first (what
Gadgetron uses) and ``<execute name=MODULE target=TARGET>`` after it (what
this server serves on P). Ports and modules are thus the host operator's,
never a client's, and modules outside the allowed packages are refused.

The peer is Gadgetron on the same host, which has already checked the
client's messages; the server binds loopback only unless told otherwise, and
bounds its concurrent connections (``--max-connections``).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import socket
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from gadgetron.external import Connection

from gadgets.errors import send_error
from gadgets.external_link import PeerGone, SafeLink, drain, harden

from .pipeline_config import (DEFAULT_GADGET_PACKAGES, PIPELINE_DIR, GadgetSpec, Pipeline, PipelineError, xml_tag,
                              load_gadgets)

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 30.0  # Gadgetron sends CONFIG and HEADER as soon as it connects


class ServedConnection(Connection):
    """``gadgetron.external.Connection`` over a :class:`SafeLink` from the first byte.

    The library's constructor wraps the socket in its own reader, which
    loops forever if Gadgetron closes before the header; this one reads the
    configuration and header through the safe link, with a deadline.
    """

    def __init__(self, sock: socket.socket) -> None:  # noqa: super().__init__ would read with the unsafe link
        self.socket = SafeLink(sock)
        self.readers = Connection._default_readers()
        self.writers = Connection._default_writers()
        self.raw_bytes = Connection.Struct(config=None, header=None)
        self.filters = []
        self.socket.read_deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        try:
            self.config, self.raw_bytes.config = self._read_config()
            self.header, self.raw_bytes.header = self._read_header()
        finally:
            self.socket.read_deadline = None


@dataclass
class ServedGadget:
    port: int
    spec: GadgetSpec
    source: str  # the first pipeline file that named it
    configs: list[ET.Element] = field(default_factory=list)  # every configuration it is named with


def served_gadgets(folders: Sequence[Path], allowed_packages: Sequence[str] = DEFAULT_GADGET_PACKAGES
                   ) -> dict[int, ServedGadget]:
    """Port -> gadget, from every ``<external>`` with ``<connect port>`` and ``<execute>`` in ``folders``.

    Raises :class:`PipelineError` when two pipelines give one port to
    different gadgets, or a node connects without naming its gadget.
    """
    served: dict[int, ServedGadget] = {}
    files = sorted({p.name: p for d in reversed(list(folders)) for p in Path(d).glob("*.xml")}.values())
    for path in files:
        try:
            root = ET.fromstring(path.read_text())
        except ET.ParseError as exc:
            log.warning("pipeline %s skipped: %s", path.name, exc)
            continue
        for node in root.iter():
            if xml_tag(node) != "external":
                continue
            connect = next((c for c in node if xml_tag(c) == "connect"), None)
            if connect is None:
                continue
            execute = next((c for c in node if xml_tag(c) == "execute"), None)
            if execute is None or not execute.get("name") or not execute.get("target"):
                raise PipelineError(f"{path.name}: <external name={node.get('name')!r}> connects to port "
                                    f"{connect.get('port')} but names no <execute name= target=> for the gadget-server")
            try:
                port = int(connect.get("port", ""))
            except ValueError:
                raise PipelineError(f"{path.name}: <connect port={connect.get('port')!r}> is not a port number") from None
            config = next((c for c in node if xml_tag(c) == "configuration"), None)
            spec = GadgetSpec(module=execute.get("name"), target=execute.get("target"),
                              config=config if config is not None else ET.Element("configuration"),
                              name=node.get("name", ""))
            known = served.setdefault(port, ServedGadget(port, spec, path.name))
            if (known.spec.module, known.spec.target) != (spec.module, spec.target):
                raise PipelineError(f"port {port} is {known.spec.module}.{known.spec.target} in {known.source} "
                                    f"but {spec.module}.{spec.target} in {path.name}")
            known.configs.append(spec.config)
    load_gadgets(Pipeline("gadget-server", [g.spec for g in served.values()]), allowed_packages)
    return served


def preload(gadgets: Sequence[ServedGadget]) -> None:
    """Run the ``preload(config)`` hook of every served module, for every configuration that names it."""
    for served in gadgets:
        hook = getattr(importlib.import_module(served.spec.module), "preload", None)
        for config in served.configs if hook else ():
            try:
                log.info("%s: %s", served.spec.label, hook(config))
            except Exception as exc:  # a missing model must not stop the other gadgets
                log.warning("%s: not preloaded: %s: %s", served.spec.label, type(exc).__name__, exc)


class GadgetServer:
    """Listens on every served port; one thread per Gadgetron connection."""

    def __init__(self, gadgets: dict[int, ServedGadget], host: str = "127.0.0.1", max_connections: int = 64) -> None:
        self.gadgets = gadgets
        self.host = host
        self.slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        self.listeners: list[socket.socket] = []
        self._stop = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for port in sorted(gadgets):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                self.close()
                raise OSError(f"cannot listen on {host}:{port} for {gadgets[port].spec.label}: {exc}") from None
            sock.listen(16)
            self.listeners.append(sock)

    def serve_forever(self) -> None:
        threads = [threading.Thread(target=self._accept, args=(sock,), daemon=True,
                                    name=f"gadget-server:{sock.getsockname()[1]}") for sock in self.listeners]
        for thread in threads:
            thread.start()
        self._stop.wait()

    def start_background(self) -> None:
        threading.Thread(target=self.serve_forever, daemon=True, name="gadget-server").start()

    def close(self) -> None:
        self._stop.set()
        for sock in self.listeners:
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        served = self.gadgets[listener.getsockname()[1]]
        while not self._stop.is_set():
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            if not self.slots.acquire(blocking=False):
                log.warning("%s: refusing %s: %d connections already running", served.spec.label, peer,
                            self.max_connections)
                conn.close()
                continue
            threading.Thread(target=self._run, args=(served, conn, peer), daemon=True,
                             name=f"{served.spec.label}:{peer[1]}").start()

    def _run(self, served: ServedGadget, sock: socket.socket, peer: Any) -> None:
        label = f"{served.spec.label} <- {peer[0]}:{peer[1]}"
        start = time.perf_counter()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = ServedConnection(sock)
        except Exception as exc:  # also a port probe that connects and closes
            log.info("%s: no configuration and header: %s", label, exc)
            sock.close()
            self.slots.release()
            return
        try:
            run_gadget(served.spec, connection)
            log.info("%s: done in %.2f s", label, time.perf_counter() - start)
        except Exception as exc:
            log.warning("%s: failed after %.2f s: %s: %s", label, time.perf_counter() - start, type(exc).__name__, exc)
        finally:
            connection.socket.close()
            self.slots.release()


def run_gadget(spec: GadgetSpec, connection: Any) -> None:
    """Run one gadget over ``connection`` with the execute mode's guarantees.

    Gadgets wrapped by :func:`gadgets.errors.reports_errors` report their
    own failures; for others the error is reported here the same way.
    """
    assert spec.function is not None, "gadget not loaded"
    if getattr(spec.function, "reports_errors", False):
        spec.function(connection)
        return
    harden(connection)
    try:
        spec.function(connection)
    except PeerGone as exc:
        log.warning("%s stopped: %s", spec.label, exc)
        drain(connection)
    except Exception as exc:  # same order as gadgets.errors.reports_errors: drain, then report
        drain(connection)
        send_error(connection, f"{spec.label} failed: {type(exc).__name__}: {exc}")
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrecon gadget-server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback: the peer is Gadgetron on this host)")
    p.add_argument("--pipelines", type=Path, action="append", default=[],
                   help="extra folder of connect-mode pipelines (before the shipped ones)")
    p.add_argument("--gadget-package", action="append", default=[],
                   help="extra Python package whose modules the pipelines may name (default: gadgets)")
    p.add_argument("--max-connections", type=int, default=64, help="concurrent Gadgetron connections, all ports together")
    p.add_argument("--no-preload-models", action="store_true", help="do not load the deep-learning models at start")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    folders = [*args.pipelines, PIPELINE_DIR]
    allowed = tuple(DEFAULT_GADGET_PACKAGES) + tuple(args.gadget_package)
    try:
        gadgets = served_gadgets(folders, allowed)
    except PipelineError as exc:
        print(f"streamrecon gadget-server: {exc}", file=sys.stderr)
        return 2
    if not gadgets:
        print(f"streamrecon gadget-server: no <connect> nodes in {', '.join(map(str, folders))}", file=sys.stderr)
        return 2
    if not args.no_preload_models:
        preload(list(gadgets.values()))
    try:
        server = GadgetServer(gadgets, args.host, args.max_connections)
    except OSError as exc:
        print(f"streamrecon gadget-server: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: server.close())
    for port, served in sorted(gadgets.items()):
        log.info("serving %s on %s:%d", served.spec.label, args.host, port)
    log.info("gadget-server ready")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
