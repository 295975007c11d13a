"""Memory a long-lived host process gives back: glibc's free pages trimmed after every session.

glibc's malloc serves blocks above its mmap threshold with ``mmap`` and
unmaps them on ``free``, but the threshold is dynamic: each freed mapped
block raises it to that block's size (up to 32 MiB), so from then on a
frame's images, k-space and network activations come from the heap and the
per-thread arenas. Memory freed there stays in the process: each session's
threads (new ones every session) leave their arenas holding freed pages, and
the host's resident memory grows by megabytes a session until every arena
has been filled once (``streamrecon bench soak --dl``, results in
``simulator/benchmarks/results/``). Fixing the threshold low would map
every tensor afresh (the network ran 1.7x slower so); instead the host asks
glibc to return free pages of every arena after each session
(``malloc_trim(0)``: a few milliseconds, no effect on the images).
Measured (KGMgT, 64x64, 8 coils): +4.2 MB a session before, +0.4 MB a
session after (noisy; trimming frees whole free pages only). Capping the
arenas (``limit_arenas``, ``MALLOC_ARENA_MAX=2``) did not measurably add
to that in a 100-session run, so the host does not do it. Elsewhere than
glibc both do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt(3)
_trim = None


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _malloc_trim():
    global _trim
    if _trim is None:
        try:
            fn = _libc().malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _trim = fn
        except AttributeError:  # not glibc: nothing to trim
            _trim = False
    return _trim


def limit_arenas(arenas: int | None = None) -> bool:
    """Cap glibc's malloc arenas (default: the CPU count, at least 2); call early, before the sessions' threads.

    Returns False where the C library is not glibc (nothing done).
    """
    arenas = max(2, int(arenas or os.cpu_count() or 2))
    try:
        mallopt = _libc().mallopt
    except AttributeError:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system; True when glibc released any."""
    trim = _malloc_trim()
    if not trim:
        return False
    try:
        return bool(trim(0))
    except Exception as exc:  # never let housekeeping end a session badly
        log.debug("malloc_trim failed: %s", exc)
        return False


__all__ = ["release_free_memory", "limit_arenas"]
