"""A bounded, seeded fuzz of the stream host: mutated sessions never hang it, leak threads or break later scans."""
from __future__ import annotations

import threading
import time

import numpy as np

from simulator.fuzz import exchange as _exchange
from simulator.fuzz import mutate as _mutate
from simulator.fuzz import valid_session as _valid_session
from tests.streams import small_cine
from tests.test_host_refusals import _good_session_still_works

SESSIONS = 300
SEED = 11


def test_seeded_fuzz_of_the_stream_host(stream_host):
    scan = small_cine(slices=1, frames=2, coils=2, ny=8, nx=8)
    data, starts = _valid_session(scan)
    rng = np.random.default_rng(SEED)
    threads_before = threading.active_count()
    outcomes = {"closed": 0, "images": 0, "texts": 0}
    for n in range(SESSIONS):
        payload = _mutate(data, starts, rng)
        # every session ends by the host's doing (EOF after our half-close ends it even when the bytes make
        # no sense): counted as `closed` below; our 30 s socket timeout is only the backstop
        texts, closed, images = _exchange(stream_host.port, payload, timeout=30)
        outcomes["closed"] += closed
        outcomes["images"] += bool(images)
        outcomes["texts"] += bool(texts)
        for im in images:
            assert np.all(np.isfinite(np.asarray(im.data))), f"session {n}: non-finite pixels reached the client"
    assert outcomes["closed"] == SESSIONS, outcomes  # the host always said goodbye
    assert outcomes["images"] > 0 and outcomes["texts"] > 0, outcomes  # both kinds of outcome were exercised
    _good_session_still_works(stream_host.port, scan)
    deadline = time.monotonic() + 10
    while threading.active_count() > threads_before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= threads_before + 2, "session threads left behind"
