"""A short soak of the deep-learning pipelines: threads and fds return to their level after every session.

``simulator.benchmarks.soak_dl.soak`` runs a real ``streamrecon serve``
process (tiny networks, in process) and reads its threads, open fds and RSS
from ``/proc`` after each session; the 200-session figures are in
``simulator/benchmarks/results/``.
"""
from __future__ import annotations

import pytest

from simulator.benchmarks.soak_dl import soak
from tests.dl_support import tiny_weights


@pytest.fixture(scope="module")
def serve_args(tmp_path_factory):
    weights = tiny_weights(tmp_path_factory.mktemp("weights"))
    return ["--kgmgt-weights", str(weights["kgmgt"]), "--sgfmri-weights", str(weights["sgfmri"]), "--device", "cpu"]


@pytest.mark.parametrize("pipeline", ["kgmgt_cine", "sgfmri_multicontrast"])
def test_threads_and_fds_return_to_their_level_after_every_session(pipeline, serve_args):
    result = soak(pipeline, 5, matrix=24, coils=2, frames=4, serve_args=serve_args)
    assert result.failures == [] and len(result.samples) == 5
    _, threads, fds = result.after(1)  # the first session warms up (models, imports, pools)
    for session, _, t, f, _, images in result.samples[1:]:
        assert (t, f) == (threads, fds), (pipeline, session, result.samples)
    # The baseline is read right after start-up, when a transient fd (an import's or the listener's handshake)
    # may still be open: at most the baseline, and the same after every session, is what "no leak" means.
    assert threads <= result.baseline[1] + 2 and fds <= result.baseline[2], (result.baseline, result.samples)
