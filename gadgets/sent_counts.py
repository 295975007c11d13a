"""What a model gadget actually sent on its model series, counted where the images leave.

A model image computed after its window's deadline fallback went out is
dropped, so counting in the model path would report images the scanner
never got. The gadget's closing log line comes from here instead.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import ismrmrd


class SentImages:
    """Counts the images of one output series by kind: the model's, or fallbacks (with their reasons)."""

    def __init__(self, series: int) -> None:
        self.series = int(series)
        self.model = 0
        self.reasons: Counter = Counter()

    @property
    def fallbacks(self) -> int:
        return sum(self.reasons.values())

    def note(self, item: Any) -> None:
        """Count ``item`` if it is an image of the series (call it for everything the gadget sends)."""
        if not isinstance(item, ismrmrd.Image) or int(item.image_series_index) != self.series:
            return
        reason = item.meta.get("Fallback")
        if reason:
            self.reasons[str(reason)] += 1
        else:
            self.model += 1

    def summary(self) -> str:
        text = f"sent {self.model} model images, {self.fallbacks} fallbacks"
        if self.reasons:
            text += " (" + "; ".join(f"{r}: {n}" for r, n in self.reasons.most_common(3)) + ")"
        return text


__all__ = ["SentImages"]
