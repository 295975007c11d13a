"""Telling the scanner that a gadget failed.

Under Gadgetron an uncaught exception in an external Python module reaches
the scanner as zero images and no error; Gadgetron shows an error only if
the module sends message id 8 (uint64 length + UTF-8 text) before closing.
:func:`reports_errors` wraps a gadget so that any failure is sent that way
(and re-raised, so the process still exits non-zero). Under the embedded
host the same :class:`GadgetError` item is picked up by the host's
connection, which ends the session with a TEXT message.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable

from . import wire
from .external_link import PeerGone, drain, harden

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class GadgetError:
    """An error report travelling to the peer."""

    text: str


def _write_gadgetron_error(destination: Any, error: GadgetError) -> None:
    destination.write(wire.error_bytes(error.text))


def send_error(connection: Any, text: str) -> None:
    """Send ``text`` to the peer as an error, however the gadget is hosted."""
    writers = getattr(connection, "writers", None)
    if isinstance(writers, list) and not getattr(connection, "accepts_gadget_errors", False):
        # gadgetron.external.Connection: teach it to serialise GadgetError as
        # id 8. Its add_writer() wraps writers in a one-argument lambda that
        # send() then calls with two (gadgetron 1.4.1), so register directly
        # in the (predicate, writer(destination, item)) list send() walks.
        writers.insert(0, (lambda item: isinstance(item, GadgetError), _write_gadgetron_error))
    try:
        connection.send(GadgetError(text))
    except Exception:  # the peer may already be gone; the log still has it
        log.exception("could not report the error to the peer")


def reports_errors(gadget: Callable[[Any], None]) -> Callable[[Any], None]:
    """Decorator: a gadget whose failures reach the scanner as an error message.

    Under Gadgetron the gadget's link is hardened first
    (:mod:`gadgets.external_link`), and a failed gadget reads and discards
    the rest of its input until Gadgetron's CLOSE *before* it sends the
    error. A gadget that stops reading leaves Gadgetron blocked writing to
    it, and the session hangs. Sending the error first is not safe either:
    Gadgetron 4.7.2 answers it by writing CLOSE from its reading thread while
    its writing thread may be in the middle of an item, and the interleaved
    bytes end the session without the error (1 run in 19 here). Gadgetron
    reports node errors to the client only when the client's stream is over,
    so reading the rest first costs the scanner nothing.
    """

    @functools.wraps(gadget)
    def wrapper(connection: Any) -> None:
        hardened = harden(connection)
        try:
            gadget(connection)
        except PeerGone as exc:  # not this gadget's failure: a peer failed or went away
            log.warning("%s.%s stopped: %s", gadget.__module__, gadget.__name__, exc)
            if hardened:
                drain(connection)
        except Exception as exc:
            text = f"{gadget.__module__}.{gadget.__name__} failed: {type(exc).__name__}: {exc}"
            log.exception(text)
            if hardened:
                drain(connection)
            send_error(connection, text)
            raise

    wrapper.reports_errors = True  # hosts that wrap gadgets themselves need not report twice
    return wrapper
