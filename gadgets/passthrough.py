"""Trivial gadgets for plumbing checks and ingest benchmarks."""
from __future__ import annotations

import logging
from typing import Any

from .errors import reports_errors

log = logging.getLogger(__name__)


@reports_errors
def pass_through(connection: Any) -> None:
    """Forward everything unchanged."""
    for item in connection:
        connection.send(item)


@reports_errors
def consume(connection: Any) -> None:
    """Read everything, send nothing: measures how fast a host can deliver items to a gadget."""
    count = 0
    for _ in connection:
        count += 1
    log.info("consumed %d items", count)
