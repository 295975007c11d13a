"""Gadgets that exist only to exercise the host: pass-through, fail on demand, a class gadget."""
from __future__ import annotations

from typing import Any

import ismrmrd

from gadgets import properties
from gadgets.errors import reports_errors


def pass_through(connection: Any) -> None:
    for item in connection:
        connection.send(item)


@reports_errors
def fail_after(connection: Any) -> None:
    """Forwards ``count`` acquisitions, then raises."""
    count = properties.get(connection.config, "count", 10)
    for i, item in enumerate(connection):
        if i == count:
            raise RuntimeError(f"deliberate failure after {count} items")
        connection.send(item)


class ImageCounter:
    """A class gadget (instantiated per connection, like Gadgetron does): tags images with their count."""

    def __init__(self) -> None:
        self.seen = 0

    def handle(self, connection: Any) -> None:
        for item in connection:
            if isinstance(item, ismrmrd.Image):
                self.seen += 1
                meta = item.meta
                meta["SeenByCounter"] = str(self.seen)
                item.meta = meta
            connection.send(item)


# Readouts seen by ``record_readouts``, by its ``key`` property (the embedded host runs gadgets in this process).
RECORDED: dict[str, list] = {}


def record_readouts(connection: Any) -> None:
    """Keeps every acquisition it sees under its ``key`` property and forwards everything."""
    seen = RECORDED.setdefault(str(properties.get(connection.config, "key", "default")), [])
    for item in connection:
        if isinstance(item, ismrmrd.Acquisition):
            seen.append(item)
        connection.send(item)
