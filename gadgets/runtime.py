"""Process-level settings the gadgets need to stay fast in a streaming host.

OpenBLAS's thread pool makes the small per-readout matrix products of the
gadgets (oversampling removal, pre-whitening) up to 50x slower when several
gadget threads call it at once on a loaded machine: its threads spin and
fight over the cores. Streaming work is parallel across gadgets and
sessions, not inside one small product, so BLAS gets one thread. The deep
learning models use torch's own thread pool and are not affected.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
_limiter = None


def single_threaded_blas() -> None:
    """Limit NumPy's BLAS to one thread for this process (idempotent)."""
    global _limiter
    with _lock:
        if _limiter is not None:
            return
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # still correct, only slower under load
            log.warning("threadpoolctl is not installed; BLAS keeps its default thread count")
            _limiter = False
            return
        import numpy  # noqa: F401  (BLAS must be loaded to be limited)

        _limiter = threadpool_limits(limits=1, user_api="blas")
