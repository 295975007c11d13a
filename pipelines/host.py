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
import inspect
import logging
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from gadgets import host_settings, wire
from gadgets.reference_store import ReferenceStore, StoreSettings, start_purging

from .pipeline_config import DEFAULT_GADGET_PACKAGES, PIPELINE_DIR, PipelineError, load_gadgets, parse_pipeline
from .process_memory import release_free_memory
from .protocol import Limits
from .session import Session, SessionOptions
from .cli_help import HelpFormatter

log = logging.getLogger(__name__)


class DeadlineReader:
    """``read(n)`` from a socket under three clocks, each failing with ``socket.timeout(reason)``.

    - idle: the longest wait for any byte;
    - message: from a message's first byte to its last (``message_clock``),
      so a client trickling a byte at a time cannot hold a session;
    - session: the whole connection.

    A per-read socket timeout alone is not enough: a buffered file's
    ``read(n)`` keeps waiting as long as each byte comes within it.
    """

    def __init__(self, sock: socket.socket, idle_s: float, message_s: float, session_s: float) -> None:
        self.sock = sock
        self.idle_s, self.message_s = idle_s, message_s
        self.session_deadline = time.monotonic() + session_s
        self.message_deadline = float("inf")
        self._buf = bytearray()

    def message_clock(self, started: bool) -> None:
        self.message_deadline = time.monotonic() + self.message_s if started else float("inf")

    def _timeout(self) -> float:
        now = time.monotonic()
        left = {"idle": self.idle_s, "message": self.message_deadline - now, "session": self.session_deadline - now}
        which = min(left, key=left.get)
        if left[which] <= 0:
            raise socket.timeout(self._reason(which))
        self._which = which
        return left[which]

    def _reason(self, which: str) -> str:
        return {"idle": f"no data from the client within the idle timeout ({self.idle_s:g} s)",
                "message": f"a message took longer than {self.message_s:g} s to arrive (message deadline)",
                "session": "the session reached its deadline (session deadline)"}[which]

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            self.sock.settimeout(self._timeout())
            try:
                chunk = self.sock.recv(max(1 << 16, n - len(self._buf)))
            except socket.timeout:
                raise socket.timeout(self._reason(self._which)) from None
            if not chunk:
                break
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


class _Handler(socketserver.BaseRequestHandler):
    server: "StreamHost"

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        label = f"session {self.client_address[0]}:{self.client_address[1]}"
        server = self.server
        reader = DeadlineReader(sock, server.idle_timeout_s, server.message_timeout_s, server.session_timeout_s)
        wfile = sock.makefile("wb", buffering=1 << 16)
        try:
            Session(reader.read, wfile, server.options, label=label, message_clock=reader.message_clock).run()
        except Exception:  # a bug in the host must still not take the server down
            log.exception("%s: unexpected host error", label)
        finally:
            _close_gently(sock, None, wfile)


def _close_gently(sock: socket.socket, rfile, wfile) -> None:
    # Closing with unread input makes the kernel send RST, which can destroy
    # the TEXT/CLOSE still in flight to the peer. Half-close, then drain
    # briefly so the peer reads our last messages before the socket goes.
    try:
        wfile.flush()
    except OSError:
        pass
    _half_close_and_drain(sock, 2.0)
    for f in (rfile, wfile):
        if f is None:
            continue
        try:
            f.close()
        except OSError:
            pass
    sock.close()


def _refuse_busy(sock: socket.socket, reason: str) -> None:
    # On the accepting thread: never wait long on this peer.
    try:
        sock.settimeout(0.5)
        sock.sendall(wire.text_bytes(reason) + wire.message_id(wire.CLOSE))
    except OSError:
        pass
    else:
        _half_close_and_drain(sock, 0.2)
    finally:
        sock.close()


def _half_close_and_drain(sock: socket.socket, timeout_s: float) -> None:
    """Half-close, then read what the peer still sends until it closes or ``timeout_s`` of silence: closing
    with unread input would make the kernel send RST, which can destroy our last messages in flight."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(timeout_s)
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass


class StreamHost(socketserver.ThreadingTCPServer):
    """A threaded ISMRMRD stream server; ``server_address[1]`` is the bound port."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: a burst of scanners connecting at once is not refused by the kernel

    def __init__(self, host: str = "127.0.0.1", port: int = 9002, options: SessionOptions | None = None,
                 idle_timeout_s: float = 60.0, max_connections: int = 32, message_timeout_s: float = 60.0,
                 session_timeout_s: float = 4 * 3600.0) -> None:
        self.options = options or SessionOptions()
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max(1, max_connections)
        self.message_timeout_s = message_timeout_s
        self.session_timeout_s = session_timeout_s
        self.active = 0
        self._active_lock = threading.Lock()
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    def process_request(self, request, client_address) -> None:
        """One thread per connection, at most ``max_connections``; beyond, TEXT + CLOSE at once."""
        with self._active_lock:
            busy = self.active >= self.max_connections
            if not busy:
                self.active += 1
        if busy:
            log.warning("refusing %s:%s: %d connections open (--max-connections)", *client_address[:2], self.active)
            _refuse_busy(request, f"host busy: {self.max_connections} connections already open; try again later")
            return
        try:
            super().process_request(request, client_address)
        except Exception:  # e.g. no thread could be started: this connection only
            self._release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()
            release_free_memory()  # the session's freed frames go back to the system (pipelines/process_memory.py)

    def _release(self) -> None:
        with self._active_lock:
            self.active -= 1

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
                    accepts_settings = len(inspect.signature(hook).parameters) > 1
                    done = hook(spec.config, self.options.operator) if accepts_settings else hook(spec.config)
                    log.info("pipeline %s, %s: %s", path.name, spec.label, done)
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
    p = argparse.ArgumentParser(prog="streamrecon serve", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0 only if you mean it)")
    p.add_argument("--port", type=int, default=9002, help="port to listen on (Gadgetron's)")
    p.add_argument("--pipelines", type=Path, action="append", default=[],
                   help="extra folder searched for CONFIG_FILE pipelines (before the shipped ones; `streamrecon pipelines` lists them)")
    p.add_argument("--gadget-package", action="append", default=[],
                   help="extra Python package whose modules pipelines may name (default: gadgets)")
    p.add_argument("--max-message-mb", type=float, default=256.0, help="largest acquisition/image payload accepted")
    p.add_argument("--idle-timeout", type=float, default=60.0, help="seconds of client silence before a session is ended")
    p.add_argument("--message-timeout", type=float, default=60.0,
                   help="seconds one message may take from its first byte to its last")
    p.add_argument("--session-timeout", type=float, default=4 * 3600.0, help="seconds one connection may last")
    p.add_argument("--max-connections", type=int, default=32,
                   help="connections served at once (one thread each); more get TEXT 'host busy' + CLOSE")
    p.add_argument("--stream", action="store_true", help="read one stream on stdin, write the results on stdout")
    p.add_argument("--no-preload-models", action="store_true",
                   help="do not load the deep-learning pipelines' in-process models at start")
    p.add_argument("--reference-store", type=Path, default=None,
                   help="folder of the multi-contrast reference store (operator setting reference_store; "
                        "default $STREAMRECON_REFERENCE_STORE, else ~/.cache/streamrecon/references); "
                        "purged at start and hourly")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    host_settings.add_arguments(p)
    return p


def configure_reference_store(settings: host_settings.OperatorSettings) -> threading.Event:
    """The host's reference store (operator settings ``reference_store*``, which every session's gadgets get
    through their connection); entries past their age are purged now and hourly."""
    store = ReferenceStore(StoreSettings.from_settings(settings))
    log.info("reference store %s (age limit %.0f s, at most %d entries, %d MiB)", store.folder,
             store.settings.max_age_s, store.settings.max_entries, store.settings.max_bytes // 2**20)
    return start_purging(store)


def options_from_args(args: argparse.Namespace) -> SessionOptions:
    operator = host_settings.from_args(args)
    if args.reference_store is not None:
        operator = operator.with_values(reference_store=str(args.reference_store.expanduser().resolve()))
    return SessionOptions(
        limits=Limits(max_payload_bytes=int(args.max_message_mb * 2**20)),
        search_dirs=tuple(args.pipelines),
        allowed_packages=tuple(DEFAULT_GADGET_PACKAGES) + tuple(args.gadget_package),
        operator=operator,
    )


def operator_weights_problem(settings: host_settings.OperatorSettings) -> str | None:
    """Why an operator-chosen weights file cannot serve (named), or None; shipped weights are not checked here.

    Checked before the host listens: a damaged or mismatched file would otherwise let every scan of
    its pipelines fall back to the conventional image."""
    for architecture, path in host_settings.weights_by_model(settings).items():
        if not path:
            continue
        from models.weights import WeightsError, load_weights

        own = f"{architecture}_weights"  # the shipped models' own settings, else the general one
        setting = own if own in host_settings.BY_NAME and getattr(settings, own) == path else f"model_weights {architecture}"
        if not Path(path).with_suffix(".safetensors").is_file():
            return f"{setting} {path}: no such weights file"
        try:
            _, card = load_weights(path)
        except WeightsError as exc:
            return f"{setting}: {exc}"
        if card.get("architecture") != architecture:
            return f"{setting} {path}: holds a {card.get('architecture')!r} model, not {architecture}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = options_from_args(args)
    # Every gadget of this host gets these settings through its connection (and the preload hooks as an
    # argument): nothing is handed over through this process's environment.
    configure_reference_store(options.operator)
    problem = operator_weights_problem(options.operator)
    if problem is not None:
        print(f"streamrecon serve: {problem}", file=sys.stderr)
        return 2
    if args.stream:
        return run_stream(options=options)
    try:
        server = StreamHost(args.host, args.port, options, idle_timeout_s=args.idle_timeout,
                            max_connections=args.max_connections, message_timeout_s=args.message_timeout,
                            session_timeout_s=args.session_timeout)
    except OSError as exc:
        print(f"streamrecon serve: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
              f"is another host running there? Stop it, or choose another port with --port", file=sys.stderr)
        return 2
    server.preload_pipelines(models=not args.no_preload_models)
    log.info("streamrecon host listening on %s:%d", args.host, server.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
