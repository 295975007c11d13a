"""The embedded Gadgetron-compatible host: ``streamrecon serve``.

Listens like Gadgetron (port 9002, loopback unless told otherwise), runs
one :class:`~pipelines.session.Session` per connection on its own thread,
and never lets one session's failure reach another. ``--stream`` reads one
ISMRMRD stream on stdin and writes the result stream on stdout, like
``gadgetron --from_stream``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import socketserver
import sys
import threading
from pathlib import Path
from typing import Sequence

from .pipeline_config import DEFAULT_GADGET_PACKAGES, PIPELINE_DIR, PipelineError, load_gadgets, parse_pipeline
from .protocol import Limits
from .session import Session, SessionOptions

log = logging.getLogger(__name__)


class _Handler(socketserver.BaseRequestHandler):
    server: "StreamHost"

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.server.idle_timeout_s)
        label = f"session {self.client_address[0]}:{self.client_address[1]}"
        rfile = sock.makefile("rb", buffering=1 << 16)
        wfile = sock.makefile("wb", buffering=1 << 16)
        try:
            Session(rfile.read, wfile, self.server.options, label=label).run()
        except Exception:  # a bug in the host must still not take the server down
            log.exception("%s: unexpected host error", label)
        finally:
            _close_gently(sock, rfile, wfile)


def _close_gently(sock: socket.socket, rfile, wfile) -> None:
    # Closing with unread input makes the kernel send RST, which can destroy
    # the TEXT/CLOSE still in flight to the peer. Half-close, then drain
    # briefly so the peer reads our last messages before the socket goes.
    try:
        wfile.flush()
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(2.0)
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass
    for f in (rfile, wfile):
        try:
            f.close()
        except OSError:
            pass
    sock.close()


class StreamHost(socketserver.ThreadingTCPServer):
    """A threaded ISMRMRD stream server; ``server_address[1]`` is the bound port."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", port: int = 9002, options: SessionOptions | None = None,
                 idle_timeout_s: float = 60.0) -> None:
        self.options = options or SessionOptions()
        self.idle_timeout_s = idle_timeout_s
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    def preload_pipelines(self, models: bool = True) -> list[str]:
        """Import every known pipeline's gadget modules now, so the first scan does not pay for it.

        With ``models``, a gadget module's optional ``preload(config)`` hook
        runs too (the deep-learning gadgets load their in-process weights).
        Returns the pipelines that could not be loaded (logged, not fatal:
        a broken site pipeline must not stop the others from serving).
        """
        failed = []
        folders = [*self.options.search_dirs, PIPELINE_DIR]
        for path in sorted({p.name: p for d in reversed(folders) for p in Path(d).glob("*.xml")}.values()):
            try:
                pipeline = load_gadgets(parse_pipeline(path.read_text(), path.name), self.options.allowed_packages)
            except PipelineError as exc:
                log.warning("pipeline %s not preloaded: %s", path.name, exc)
                failed.append(path.name)
                continue
            for spec in pipeline.gadgets if models else ():
                hook = getattr(importlib.import_module(spec.module), "preload", None)
                if hook is None:
                    continue
                try:
                    log.info("pipeline %s, %s: %s", path.name, spec.label, hook(spec.config))
                except Exception as exc:  # a missing model file must not stop the host
                    log.warning("pipeline %s, %s: not preloaded: %s: %s", path.name, spec.label, type(exc).__name__, exc)
                    failed.append(path.name)
        return failed

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start_background(self) -> threading.Thread:
        """Serve on a daemon thread (tests, the demo); ``shutdown()`` stops it."""
        thread = threading.Thread(target=self.serve_forever, name=f"streamhost:{self.port}", daemon=True)
        thread.start()
        return thread


def run_stream(stdin=None, stdout=None, options: SessionOptions | None = None) -> int:
    """One session from a byte stream to a byte stream; exit status 1 on errors."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    outcome = Session(stdin.read, stdout, options, label="stream").run()
    stdout.flush()
    for error in outcome.errors:
        print(f"streamrecon serve --stream: {error}", file=sys.stderr)
    return 1 if outcome.errors else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrecon serve", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0 only if you mean it)")
    p.add_argument("--port", type=int, default=9002)
    p.add_argument("--pipelines", type=Path, action="append", default=[],
                   help="extra folder searched for CONFIG_FILE pipelines (before the shipped ones)")
    p.add_argument("--gadget-package", action="append", default=[],
                   help="extra Python package whose modules pipelines may name (default: gadgets)")
    p.add_argument("--max-message-mb", type=float, default=256.0, help="largest acquisition/image payload accepted")
    p.add_argument("--idle-timeout", type=float, default=60.0, help="seconds of client silence before a session is ended")
    p.add_argument("--stream", action="store_true", help="read one stream on stdin, write the results on stdout")
    p.add_argument("--no-preload-models", action="store_true",
                   help="do not load the deep-learning pipelines' in-process models at start")
    p.add_argument("--reference-store", type=Path, default=None,
                   help="folder of the multi-contrast reference store (sets $STREAMRECON_REFERENCE_STORE; "
                        "default that variable, else ~/.cache/streamrecon/references); purged at start and hourly")
    p.add_argument("--log-level", default="INFO")
    return p


def configure_reference_store(folder: Path | None) -> threading.Event:
    """The host's reference store: ``folder`` (else the environment's) for every gadget of this process and
    the Gadgetron-style children it starts; entries past their age are purged now and hourly."""
    from gadgets.reference_store import ENV_FOLDER, ReferenceStore, start_purging

    if folder is not None:
        os.environ[ENV_FOLDER] = str(folder.expanduser().resolve())
    store = ReferenceStore()
    log.info("reference store %s (age limit %.0f s, at most %d entries, %d MiB)", store.folder,
             store.settings.max_age_s, store.settings.max_entries, store.settings.max_bytes // 2**20)
    return start_purging(store)


def options_from_args(args: argparse.Namespace) -> SessionOptions:
    return SessionOptions(
        limits=Limits(max_payload_bytes=int(args.max_message_mb * 2**20)),
        search_dirs=tuple(args.pipelines),
        allowed_packages=tuple(DEFAULT_GADGET_PACKAGES) + tuple(args.gadget_package),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = options_from_args(args)
    configure_reference_store(args.reference_store)
    if args.stream:
        return run_stream(options=options)
    server = StreamHost(args.host, args.port, options, idle_timeout_s=args.idle_timeout)
    server.preload_pipelines(models=not args.no_preload_models)
    log.info("streamrecon host listening on %s:%d", args.host, server.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
