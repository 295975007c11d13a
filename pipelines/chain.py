"""Running a gadget chain in-process: one thread per gadget, bounded queues between.

Each gadget gets an :class:`EmbeddedConnection` that behaves like
``gadgetron.external.Connection``: iterate it for the items from upstream,
``send`` to pass items downstream, ``header`` and ``config``. Queues are
bounded so a slow model back-pressures the socket reader instead of
buffering a whole acquisition in memory.
"""
from __future__ import annotations

import logging
import queue
import threading
import xml.etree.ElementTree as ET
from typing import Any, Callable, Iterator

from gadgets.errors import GadgetError

from .pipeline_config import GadgetSpec

log = logging.getLogger(__name__)

END = object()  # end-of-stream marker between stages
QUEUE_DEPTH = 512


class Link:
    """A bounded queue from one stage to the next.

    Once its consumer has finished (normally or by failure) items put into
    it are dropped, so an upstream stage never blocks on a dead one.
    """

    def __init__(self, depth: int = QUEUE_DEPTH) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self.consumer_done = threading.Event()

    def put(self, item: Any) -> bool:
        while not self.consumer_done.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> Any:
        return self._queue.get()

    def finish_consumer(self) -> None:
        self.consumer_done.set()
        # Unblock a producer waiting on a full queue.
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


class EmbeddedConnection:
    """The embedded host's stand-in for ``gadgetron.external.Connection``."""

    accepts_gadget_errors = True

    def __init__(self, inbox: Link, outbox: Link, header: Any, config: ET.Element,
                 report_error: Callable[[str], None], raw_header: bytes = b"", operator_settings: Any = None) -> None:
        self._inbox = inbox
        self.operator_settings = operator_settings  # read by gadgets.host_settings.for_connection
        self._outbox = outbox
        self.header = header
        self.config = config
        self.raw_bytes = type("RawBytes", (), {"config": ET.tostring(config), "header": raw_header})()
        self._filters: list[Callable[[Any], bool]] = []
        self._report_error = report_error

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._inbox.get()
            if item is END:
                return
            if all(pred(item) for pred in self._filters):
                yield item
            else:
                self.send(item)

    def __next__(self) -> Any:
        for item in self:
            return item
        raise StopIteration

    def filter(self, predicate: Any) -> None:
        """Like gadgetron's: items failing the predicate go straight downstream."""
        if isinstance(predicate, type):
            cls = predicate
            self._filters.append(lambda item: isinstance(item, cls))
        else:
            self._filters.append(predicate)

    def send(self, item: Any) -> None:
        if isinstance(item, GadgetError):
            self._report_error(item.text)
            return
        self._outbox.put(item)


class Chain:
    """Gadgets wired in order; ``feed`` items in, ``output`` yields what comes out."""

    def __init__(self, gadgets: list[GadgetSpec], header: Any, raw_header: bytes = b"",
                 label: str = "session", operator_settings: Any = None) -> None:
        self.links = [Link() for _ in range(len(gadgets) + 1)]
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = []
        for i, spec in enumerate(gadgets):
            conn = EmbeddedConnection(self.links[i], self.links[i + 1], header, spec.config,
                                      self.report_error, raw_header, operator_settings)
            thread = threading.Thread(target=self._run_gadget, args=(spec, conn, i),
                                      name=f"{label}:{spec.label}", daemon=True)
            self._threads.append(thread)

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    def report_error(self, text: str) -> None:
        with self._lock:
            if text not in self.errors:
                self.errors.append(text)

    def start(self) -> None:
        """Start every gadget; raises (e.g. no more threads) after the ones started are told to stop."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End the gadgets that started (after a failed ``start``): each gets END and no more input."""
        started = [i for i, t in enumerate(self._threads) if t.ident is not None]
        for i in started:
            self.links[i].put(END)
        for i in started:
            self._threads[i].join(5.0)

    def _run_gadget(self, spec: GadgetSpec, conn: EmbeddedConnection, index: int) -> None:
        try:
            assert spec.function is not None, "gadget not loaded"
            spec.function(conn)
        except Exception as exc:
            log.exception("gadget %s failed", spec.label)
            # A gadget wrapped by gadgets.errors.reports_errors has already
            # reported a fuller message; keep the first one only.
            with self._lock:
                if not any(spec.module in e for e in self.errors):
                    self.errors.append(f"gadget {spec.label} failed: {type(exc).__name__}: {exc}")
        finally:
            self.links[index].finish_consumer()
            # Downstream still gets END so it can flush every frame it holds.
            self.links[index + 1].put(END)

    def feed(self, item: Any) -> bool:
        """Pass an item to the first gadget; False once that gadget has stopped."""
        return self.links[0].put(item)

    def close_input(self) -> None:
        self.links[0].put(END)

    def output(self) -> Iterator[Any]:
        """Items leaving the last gadget, until every gadget has finished."""
        last = self.links[-1]
        try:
            while True:
                item = last.get()
                if item is END:
                    return
                yield item
        finally:
            last.finish_consumer()

    def join(self, timeout: float | None = None) -> bool:
        for thread in self._threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in self._threads)
