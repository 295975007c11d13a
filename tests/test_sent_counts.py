"""The KGMgT gadget's closing log line counts the images that left, not the ones computed.

With ``max_lag_ms`` 1 every window's deadline passes while the model is
still computing: its flagged fallback leaves, and the model's late image is
dropped. The log used to count those dropped images as model images.
"""
from __future__ import annotations

import logging
import re

import ismrmrd
import numpy as np

from gadgets.sent_counts import SentImages
from models.masks import line_mask
from simulator.acquire import acquisitions
from simulator.client import run_session
from simulator.header import make_header
from simulator.scan import phantom_scan
from tests.dl_support import operate, pipeline_text, series, tiny_weights


def _image(series_index: int, **meta) -> ismrmrd.Image:
    im = ismrmrd.Image.from_array(np.zeros((4, 4), np.float32), transpose=False)
    im.image_series_index = series_index
    im.meta = meta
    return im


def test_counts_only_its_series_and_splits_fallbacks():
    sent = SentImages(1)
    for item in (_image(1), _image(1, Fallback="late"), _image(1, Fallback="late"), _image(0), "text"):
        sent.note(item)
    assert (sent.model, sent.fallbacks) == (1, 2)
    assert sent.summary() == "sent 1 model images, 2 fallbacks (late: 2)"


def test_log_matches_what_the_scanner_received(stream_host, monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gadgets.cine_kgmgt")
    weights = tiny_weights(tmp_path)
    operate(monkeypatch, stream_host, kgmgt_weights=weights["kgmgt"], device="cpu")
    scan = phantom_scan("cine", ny=32, nx=32, frames=6, n_coils=2)
    mask = line_mask("kt-gaussian", 32, 6, accel=2, acs=12, seed=0)
    xml = pipeline_text("kgmgt_cine_causal", "gadgets.cine_kgmgt", max_lag_ms=1)
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=xml,
                         items=acquisitions(scan, mask))
    model = series(result.images, 1)
    assert result.closed and len(model) == 6
    got_fallbacks = sum(1 for im in model if im.meta.get("Fallback"))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("KGMgT: sent"))
    logged = tuple(int(v) for v in re.match(r"KGMgT: sent (\d+) model images, (\d+) fallbacks", line).groups())
    assert logged == (len(model) - got_fallbacks, got_fallbacks), line
