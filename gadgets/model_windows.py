"""Which frames of a cine series are ready for a three-frame model window (times only, no arrays).

The cine gadget (:mod:`gadgets.cine_kgmgt`) asks :class:`SlidingWindows`
after every completed frame which windows it can now reconstruct, and which
frames no future window needs (so their arrays can go). The rules, for
centred ``(t-1, t, t+1)`` and causal ``(t-2, t-1, t)`` windows, gated
(periodic) and real-time series, are in the gadget's module docstring.
"""
from __future__ import annotations

from dataclasses import dataclass, field

GroupKey = tuple[int, int, int]  # slice, contrast, set


@dataclass
class Window:
    """A frame ready to reconstruct: its group, its time and the three times to use, in model order."""

    group: GroupKey
    t: int
    times: tuple[int, int, int]


@dataclass
class SlidingWindows:
    """Which frames are ready, given the frames seen so far (no arrays, just times).

    ``period``: number of cardiac phases for gated (periodic) cine, else None.
    ``last_index``: the last real-time frame the header announces (None: unknown).
    """

    causal: bool = False
    period: int | None = None
    last_index: int | None = None
    present: dict = field(default_factory=dict)   # group -> set of times held
    emitted: dict = field(default_factory=dict)   # group -> set of times done
    newest: dict = field(default_factory=dict)    # group -> largest time seen (real time)
    ended: bool = False
    ended_groups: set = field(default_factory=set)

    def _wrap(self, t: int) -> int:
        return t % self.period if self.period else t

    def neighbours(self, t: int) -> tuple[int, int]:
        """The two other frames of ``t``'s window: (t-1, t+1) centered, (t-2, t-1) causal."""
        a, b = (t - 2, t - 1) if self.causal else (t - 1, t + 1)
        return self._wrap(a), self._wrap(b)

    def _state(self, g: GroupKey, n: int) -> str:
        if n in self.present[g]:
            return "present"
        if self.ended or g in self.ended_groups:
            return "never"
        if self.period:
            return "never" if not 0 <= n < self.period else "pending"
        if n < 0 or (self.last_index is not None and n > self.last_index) or n < self.newest[g]:
            return "never"  # real time: frames come in order, so a skipped one will not come
        return "pending"

    def _window(self, g: GroupKey, t: int) -> Window | None:
        if t in self.emitted[g] or t not in self.present[g]:
            return None
        a, b = self.neighbours(t)
        sa, sb = self._state(g, a), self._state(g, b)
        if "pending" in (sa, sb):
            return None
        if self.causal:  # (t-2, t-1, t)
            b2 = b if sb == "present" else t
            a2 = a if sa == "present" else b2
            return Window(g, t, (a2, b2, t))
        a2 = a if sa == "present" else (b if sb == "present" else t)
        b2 = b if sb == "present" else (a if sa == "present" else t)
        return Window(g, t, (a2, t, b2))

    def _ready(self, g: GroupKey) -> list[Window]:
        out = []
        for t in sorted(self.present[g] - self.emitted[g]):
            w = self._window(g, t)
            if w is not None:
                out.append(w)
        for w in out:
            self.emitted[g].add(w.t)
        return out

    def add(self, g: GroupKey, t: int) -> list[Window]:
        """Frame ``t`` of group ``g`` is complete; the windows now ready, in time order."""
        self.present.setdefault(g, set()).add(t)
        self.emitted.setdefault(g, set())
        self.newest[g] = max(self.newest.get(g, t), t)
        return self._ready(g)

    def end_group(self, g: GroupKey) -> list[Window]:
        """Group ``g`` will get no more frames: its frames not yet out, with the best neighbours there are."""
        self.ended_groups.add(g)
        return self._ready(g) if g in self.present else []

    def forget(self, g: GroupKey) -> None:
        for d in (self.present, self.emitted, self.newest):
            d.pop(g, None)

    def flush(self) -> list[Window]:
        """The stream ended: every frame not yet out, with the best neighbours there are."""
        self.ended = True
        out = []
        for g in sorted(self.present):
            out.extend(self._ready(g))
        return out

    def droppable(self, g: GroupKey) -> set[int]:
        """Frames of ``g`` no future window can use (so their arrays can go)."""
        held = self.present.get(g, set())
        if self.period:
            return set(held) if len(self.emitted[g]) >= self.period else set()
        waiting = held - self.emitted[g]
        oldest_needed = min(waiting, default=self.newest[g] + 1) - 2
        # A future frame u > newest uses at most u-2 >= newest-1.
        return {t for t in held if t < min(oldest_needed, self.newest[g] - 1)}

    def drop(self, g: GroupKey, times: set[int]) -> None:
        self.present[g] -= times
        if not self.period:
            self.emitted[g] = {t for t in self.emitted[g] if t >= self.newest[g] - 2}


__all__ = ["GroupKey", "SlidingWindows", "Window"]
