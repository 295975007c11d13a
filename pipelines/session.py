"""One client connection: configuration, header, data through the chain, results back.

Whatever goes wrong (bad config, bad header, a malformed message, a gadget
exception, the peer vanishing) the session ends the same way: every item
the chain can still produce from the data that did arrive is written back,
then TEXT(reason) and CLOSE if the peer is still there.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import ismrmrd

from gadgets.header_checks import unsupported_reason
from gadgets import host_settings
from gadgets.wire import ACQUISITION, CLOSE, CONFIG_FILE, CONFIG_TEXT, ERROR, HEADER, IMAGE, MESSAGE_NAMES, TEXT, WAVEFORM

from .chain import Chain
from .pipeline_config import (DEFAULT_GADGET_PACKAGES, PipelineError, pipeline_from_config_file,
                              pipeline_from_config_text)
from .protocol import (ISMRMRD_HEADER_VERSION, Limits, MessageReader, MessageWriter, ProtocolError, StreamEnded,
                       TruncatedMessage)

log = logging.getLogger(__name__)


@dataclass
class SessionOptions:
    limits: Limits = field(default_factory=Limits)
    search_dirs: Sequence[Path] = ()
    allowed_packages: Sequence[str] = DEFAULT_GADGET_PACKAGES
    gadget_timeout_s: float = 600.0  # how long the chain may take to finish after the input ends
    operator: host_settings.OperatorSettings | None = None  # None: from the environment / STREAMRECON_CONFIG


@dataclass
class SessionOutcome:
    pipeline: str = ""
    messages_in: int = 0
    items_out: int = 0
    bytes_in: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _PeerGone(Exception):
    pass


class Session:
    def __init__(self, read: Callable[[int], bytes], out: BinaryIO, options: SessionOptions | None = None,
                 label: str = "session", message_clock: Callable[[bool], None] | None = None) -> None:
        self.options = options or SessionOptions()
        self.reader = MessageReader(read, self.options.limits, message_clock)
        self.writer = MessageWriter(out)
        self.label = label
        self.outcome = SessionOutcome()
        self._peer_gone = False
        self._write_lock = threading.Lock()

    # -- writing -----------------------------------------------------------
    def _write(self, item: Any) -> None:
        if self._peer_gone:
            return
        try:
            with self._write_lock:
                self.writer.write(item)
        except (OSError, ValueError) as exc:  # ValueError: write to a closed file
            self._peer_gone = True
            log.warning("%s: peer gone while writing results: %s", self.label, exc)

    def _finish(self, errors: list[str]) -> None:
        for text in errors:
            self._write(text)  # a str is serialised as TEXT
        if not self._peer_gone:
            try:
                with self._write_lock:
                    self.writer.close()
            except (OSError, ValueError):
                self._peer_gone = True

    # -- reading -----------------------------------------------------------
    def _expect(self, wanted: tuple[int, ...], what: str) -> tuple[int, Any]:
        try:
            mid, item = self.reader.read_message()
        except StreamEnded:
            raise ProtocolError(f"stream ended before {what}") from None
        self.outcome.messages_in += 1
        if mid not in wanted:
            names = " or ".join(MESSAGE_NAMES[w] for w in wanted)
            raise ProtocolError(f"expected {names} ({what}), got {MESSAGE_NAMES.get(mid, mid)}")
        return mid, item

    def run(self) -> SessionOutcome:
        start = time.perf_counter()
        try:
            self._run()
        finally:
            self.outcome.bytes_in = self.reader.bytes_read
            self.outcome.seconds = time.perf_counter() - start
            level = logging.WARNING if self.outcome.errors else logging.INFO
            log.log(level, "%s: pipeline %s, %d messages in, %d items out, %.2f s%s", self.label,
                    self.outcome.pipeline or "-", self.outcome.messages_in, self.outcome.items_out,
                    self.outcome.seconds, "; errors: " + " | ".join(self.outcome.errors) if self.outcome.errors else "")
        return self.outcome

    def _run(self) -> None:
        # 1. Configuration and header, refused before any data is read.
        try:
            mid, config = self._expect((CONFIG_FILE, CONFIG_TEXT), "the pipeline configuration")
            if mid == CONFIG_FILE:
                pipeline = pipeline_from_config_file(str(config), self.options.search_dirs, self.options.allowed_packages)
            else:
                pipeline = pipeline_from_config_text(str(config), self.options.allowed_packages)
            self.outcome.pipeline = pipeline.name
            _, header = self._expect((HEADER,), "the ISMRMRD header")
            refusal = unsupported_reason(header.header)
            if refusal is not None:
                raise ProtocolError(refusal)
            settings = self.options.operator or host_settings.load()
            host_settings.check_header(header.header, settings)
        except (PipelineError, ProtocolError, OSError, ValueError) as exc:
            reason = f"connection error: {exc}" if isinstance(exc, OSError) and not isinstance(exc, socket.timeout) \
                else str(exc)
            self.outcome.errors.append(reason)
            self._finish([reason])
            return
        log.info("%s: running pipeline %s (%s)", self.label, pipeline.name,
                 " -> ".join(g.label for g in pipeline.gadgets))
        if getattr(header.header, "version", None) != ISMRMRD_HEADER_VERSION:
            log.info("%s: accepted ISMRMRD header version %s (ISMRMRD 1.14 and Gadgetron 4.7 require %d)",
                     self.label, getattr(header.header, "version", None), ISMRMRD_HEADER_VERSION)

        # 2. Data through the chain; results written back as they come.
        chain = Chain(pipeline.gadgets, header.header, header.xml, label=self.label, operator_settings=settings)
        try:
            chain.start()
        except Exception as exc:  # e.g. no more threads: stop what started, tell the client
            chain.stop()
            reason = f"the pipeline could not be started: {type(exc).__name__}: {exc}"
            log.error("%s: %s", self.label, reason)
            self.outcome.errors.append(reason)
            self._finish([reason])
            return
        writer = threading.Thread(target=self._write_results, args=(chain,), name=f"{self.label}:writer", daemon=True)
        writer.start()
        input_error = self._pump(chain)
        chain.close_input()
        if not chain.join(self.options.gadget_timeout_s):
            chain.report_error(f"the gadget chain did not finish within {self.options.gadget_timeout_s:.0f} s")
        writer.join(self.options.gadget_timeout_s)

        errors = ([input_error] if input_error else []) + chain.errors
        self.outcome.errors.extend(errors)
        self._finish(errors)

    def _pump(self, chain: Chain) -> str | None:
        """Read data messages into the chain until CLOSE; return the reason it stopped early."""
        while not chain.failed:
            try:
                mid, item = self.reader.read_message()
            except StreamEnded:
                return "the client closed the connection without sending CLOSE"
            except TruncatedMessage as exc:
                return f"truncated message: {exc}"
            except ProtocolError as exc:
                return str(exc)
            except socket.timeout as exc:  # the host's reader says which deadline
                return str(exc) or "no data from the client within the idle timeout"
            except OSError as exc:
                return f"connection error: {exc}"
            self.outcome.messages_in += 1
            if mid in (ACQUISITION, IMAGE, WAVEFORM):
                chain.feed(item)
            elif mid == CLOSE:
                return None
            elif mid == TEXT:
                log.info("%s: client says: %s", self.label, item)
            elif mid == ERROR:
                return f"client reported an error: {item}"
            else:
                return f"unexpected {MESSAGE_NAMES.get(mid, mid)} message after the header"
        return None

    def _write_results(self, chain: Chain) -> None:
        for item in chain.output():
            if isinstance(item, (ismrmrd.Image, ismrmrd.Acquisition, ismrmrd.Waveform)):
                self._write(item)
                self.outcome.items_out += 1
            else:
                log.warning("%s: dropping %s at the end of the chain (no ISMRMRD message for it)",
                            self.label, type(item).__name__)
