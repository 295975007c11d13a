"""Fault injection for reliability work.

Two kinds of fault:

- item faults rearrange the readouts before they are serialised (the
  stream stays well formed): :func:`drop_readouts`,
  :func:`duplicate_readouts`, :func:`reorder_readouts`;
- wire faults break the byte stream itself and are carried out by
  :func:`simulator.client.run_session` from a :class:`StreamFault`:
  truncate a message, cut the connection mid-stream, corrupt the header.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import ismrmrd
import numpy as np

WIRE_FAULTS = ("truncate", "cut", "corrupt-header")


@dataclass
class StreamFault:
    """A wire-level fault for one session.

    ``kind``:
      ``"truncate"``: the item at index ``at`` (0-based, counting the items
      after the header) is sent only in part (``fraction`` of its bytes),
      then the client half-closes (no more bytes, keeps listening) so the
      host's reaction can be recorded;
      ``"cut"``: after ``at`` items the connection is closed abruptly (TCP
      reset when ``reset``, otherwise a half-close), without CLOSE;
      ``"corrupt-header"``: the XML header is sent mangled (cut in the middle
      and followed by junk, with a consistent length prefix); everything
      else is sent normally.
    """

    kind: str
    at: int = 0
    fraction: float = 0.5
    reset: bool = True

    def __post_init__(self) -> None:
        if self.kind not in WIRE_FAULTS:
            raise ValueError(f"fault kind must be one of {WIRE_FAULTS}, got {self.kind!r}")


def corrupt_xml(xml: str) -> bytes:
    """A header that no XML parser accepts: the first half of ``xml`` plus junk."""
    half = xml.encode()[: len(xml) // 2]
    return half + b"<<\x01 not xml &&"


def _is_readout(item: object) -> bool:
    return isinstance(item, ismrmrd.Acquisition)


def _pick(n: int, count: int | None, fraction: float | None, seed: int) -> set[int]:
    rng = np.random.default_rng(seed)
    k = count if count is not None else int(round((fraction or 0.0) * n))
    k = max(0, min(n, k))
    return set(rng.choice(n, size=k, replace=False).tolist()) if k else set()


def _chosen_readouts(items: list, count: int | None, fraction: float | None,
                     indices: Iterable[int] | None, seed: int) -> set[int]:
    """Readout indices a fault applies to: given, or ``count``/``fraction`` of them chosen at random."""
    if indices is not None:
        return set(indices)
    return _pick(sum(_is_readout(i) for i in items), count, fraction, seed)


def drop_readouts(items: Iterable, *, count: int | None = None, fraction: float | None = None,
                  indices: Iterable[int] | None = None, seed: int = 0) -> list:
    """Remove readouts (by readout index, or ``count``/``fraction`` chosen at random); other items pass."""
    return _copies(items, 0, count, fraction, indices, seed)


def duplicate_readouts(items: Iterable, *, count: int | None = None, fraction: float | None = None,
                       indices: Iterable[int] | None = None, seed: int = 0) -> list:
    """Send chosen readouts twice in a row (a retransmission)."""
    return _copies(items, 2, count, fraction, indices, seed)


def _copies(items: Iterable, copies: int, count: int | None, fraction: float | None, indices: Iterable[int] | None,
            seed: int) -> list:
    """``items`` with each chosen readout sent ``copies`` times (0: dropped) and everything else once."""
    items = list(items)
    chosen = _chosen_readouts(items, count, fraction, indices, seed)
    out, r = [], 0
    for it in items:
        n = 1
        if _is_readout(it):
            n = copies if r in chosen else 1
            r += 1
        out.extend([it] * n)
    return out


def reorder_readouts(items: Iterable, *, window: int = 4, seed: int = 0) -> Iterator:
    """Shuffle readouts within consecutive windows of ``window`` readouts (late packets).

    Flags travel with their readouts, so a frame's LAST flag may arrive
    before some of its lines: exactly what a host must survive.
    """
    rng = np.random.default_rng(seed)
    buf: list = []
    for it in items:
        if _is_readout(it):
            buf.append(it)
            if len(buf) == window:
                yield from (buf[i] for i in rng.permutation(len(buf)))
                buf = []
        else:
            yield from buf
            buf = []
            yield it
    yield from (buf[i] for i in rng.permutation(len(buf)))


__all__ = ["StreamFault", "WIRE_FAULTS", "corrupt_xml", "drop_readouts", "duplicate_readouts", "reorder_readouts"]
