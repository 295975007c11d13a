"""How long the model takes: a batch's service time, measured and re-fitted after every batch.

The real-time scheduler (:mod:`gadgets.realtime_scheduler`) plans every batch
from this estimate: which items can still be on time, and how many fit in
one batch before the oldest one's deadline.
"""
from __future__ import annotations


# Feasibility margin on the estimate: a batch that misses its deadline wastes
# all its work, one that is refused a little too early only loses that item.
SAFETY = 1.25


class ServiceTime:
    """A batch's time as ``call_s + items * item_s``, re-fitted after every batch.

    Exponentially weighted least squares over the recent batches (weight
    ``forget`` per older batch), so it follows a slow first call, a machine
    getting busier or quieter, and other scans' turns within a few batches.
    A fixed part matters: through a service, on a GPU or with a small model a
    call's overhead dwarfs its per-item cost, and a purely proportional
    estimate would refuse batches that fit easily. Until batches of different
    sizes have been seen the time is taken as proportional to the items
    (the cautious reading for batches larger than those seen).
    """

    def __init__(self, forget: float = 0.5) -> None:
        self.forget = forget
        self._s = [0.0] * 5  # weighted sums of 1, n, t, n^2, n*t
        self.call_s = 0.0
        self.item_s: float | None = None
        self.samples = 0
        self.largest = 0  # the largest batch measured: plans never go beyond twice it (the fit is a guess there)

    def observe(self, items: int, seconds: float) -> None:
        n, t = float(max(1, items)), max(0.0, float(seconds))
        self._s = [self.forget * a + b for a, b in zip(self._s, (1.0, n, t, n * n, n * t))]
        s0, sn, st, snn, snt = self._s
        spread = s0 * snn - sn * sn
        call, item = 0.0, st / sn
        if spread > 1e-6 * s0 * s0:
            slope = (s0 * snt - sn * st) / spread
            icpt = (st - slope * sn) / s0
            if slope >= 0 and icpt >= 0:  # else noise: keep the proportional reading
                call, item = icpt, slope
        self.call_s, self.item_s = call, item
        self.samples += 1
        self.largest = max(self.largest, int(n))

    @property
    def per_item_s(self) -> float | None:
        """The time one item alone takes (one call)."""
        return None if self.item_s is None else self.call_s + self.item_s

    def batch_s(self, items: int) -> float | None:
        """Expected time of a batch of ``items``, with the :data:`SAFETY` margin; None before any measurement."""
        return None if self.item_s is None else SAFETY * (self.call_s + items * self.item_s)


__all__ = ["SAFETY", "ServiceTime"]
