"""KGMgT under a real-time bound: the latch (a slow first batch, then recovery), the burst after coil maps,
newest first when behind, several scans sharing one in-process model.

All but the last run the real gadget, scheduler and tiny network on a virtual clock (tests/virtual_clock.py):
frames arrive and the model takes its time in virtual seconds, so the same events happen on every run
however loaded the machine is. The last runs four real scans through the embedded host and asserts only
what does not depend on speed."""
from __future__ import annotations

import threading
import xml.etree.ElementTree as ET

import pytest

from gadgets.cine_kgmgt import KGMgTStream, attach_scheduler
from gadgets.frames import FrameAccumulator
from gadgets.inference import InProcessBackend
from models.masks import line_mask
from simulator.acquire import acquisitions
from simulator.client import Pacing, run_session
from simulator.header import make_header
from tests.dl_support import UNREACHED_LAG_MS, SimulatedTimeBackend, operate, pipeline_text, series, tiny_weights
from tests.streams import small_cine
from tests.virtual_clock import VirtualClock

NY = 32
CALIB = (8, 24)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("weights"))


def _stream(backend, frames, mode="causal", **props):
    scan = small_cine(slices=1, frames=frames, coils=4, ny=NY, nx=NY, order_dim="repetition")
    mask = line_mask("kt-uniform", NY, frames, accel=4, acs=4)
    header = make_header(scan)
    extra = "".join(f'<property name="{k}" value="{v}"/>' for k, v in props.items())
    config = ET.fromstring(f'<configuration><property name="mode" value="{mode}"/>{extra}</configuration>')
    return scan, mask, header, KGMgTStream(header, config, backend=backend)


def _play(clock, stream, header, items, frame_s):
    """Feed the frames ``frame_s`` apart in virtual time; returns {frame: time its window was released} (causal:
    on arrival)."""
    acc = FrameAccumulator(header, time_dim="repetition")
    released = {}
    for acq in items:
        for frame in acc.add(acq):
            list(stream.add(frame))
            released[frame.key("repetition")[3]] = clock.now()
            clock.sleep(frame_s)
    stream.flush()
    return released


class Sent:
    """The model series as the scanner gets it: {frame: (virtual time it left, image)}, one image per frame."""

    def __init__(self, clock):
        self.clock, self.lock, self.images = clock, threading.Lock(), {}

    def __call__(self, image):
        with self.lock:
            assert image.repetition not in self.images, "two model-series images for one frame"
            self.images[image.repetition] = (self.clock.now(), image)


def test_slow_first_batch_then_the_model_comes_back(weights):
    """The issue's latch: one call far over the bound must not shut the model out for the rest of the scan."""
    clock = VirtualClock()
    lag, frames = 0.6, 45
    backend = SimulatedTimeBackend(clock, weights["kgmgt"], first_s=1.5, per_item_s=0.02)
    scan, mask, header, stream = _stream(backend, frames)
    sent = Sent(clock)
    scheduler = attach_scheduler(stream, sent, max_lag_ms=lag * 1000, clock=clock)
    released = _play(clock, stream, header, acquisitions(scan, mask, calib_lines=CALIB), frame_s=0.06)
    assert sorted(sent.images) == list(range(frames))  # one model-series image per frame
    # every image within the bound, the slow call's windows included (they fell back at their deadlines)
    assert all(at - released[t] <= lag + 1e-9 for t, (at, _) in sent.images.items())
    model = {t for t, (_, im) in sent.images.items() if "Fallback" not in im.meta}
    first_done = min(released.values()) + 1.5
    after = [t for t in range(frames) if released[t] > first_done]
    assert len(after) >= 15
    # recovered: every frame after the slow call gets the network again (the old worker gave none)
    assert set(after) <= model, (sorted(model), after)
    assert scheduler.estimate.per_item_s < lag
    fallbacks = [im for _, im in sent.images.values() if "Fallback" in im.meta]
    assert fallbacks and all(im.meta["ReconMethod"] == "view-sharing SENSE" for im in fallbacks)


def test_burst_after_coil_maps_is_sized_to_the_bound_and_stale_windows_fall_back(weights):
    """No calibration scan: windows wait for time-averaged maps; the wait counts, and the burst is not one big batch."""
    clock = VirtualClock()
    per_item, lag, frames = 0.1, 0.45, 16
    backend = SimulatedTimeBackend(clock, weights["kgmgt"], per_item_s=per_item)
    scan, mask, header, stream = _stream(backend, frames, map_wait_frames=8)
    sent = Sent(clock)
    conv_maps = {}
    real_add = stream.add

    def add(frame):  # when did this slice first have coil maps?
        for image in real_add(frame):
            if image.meta.get("CoilMaps", "none") != "none":
                conv_maps.setdefault("at", clock.now())
            yield image

    stream.add = add
    scheduler = attach_scheduler(stream, sent, max_lag_ms=lag * 1000, clock=clock)
    # frames 0.1 s apart: the model (0.1 s a window) keeps up once it runs, but not with the burst of every
    # window still in time when the maps come
    released = _play(clock, stream, header, acquisitions(scan, mask), frame_s=0.1)  # no calibration lines
    assert sorted(sent.images) == list(range(frames))
    assert all(at - released[t] <= lag + 1e-9 for t, (at, _) in sent.images.items())  # all within the bound
    maps_at = conv_maps["at"]
    assert maps_at > min(released.values()) + lag  # the maps really came after the first windows' bound
    waited_out = [t for t in released if released[t] + lag < maps_at]
    assert waited_out
    for t in waited_out:
        # waited for maps past its bound: fell back at its deadline, not after the burst's model work
        at, im = sent.images[t]
        assert "still waiting for coil maps" in im.meta["Fallback"], im.meta.get("Fallback")
        assert at == pytest.approx(released[t] + lag)
    burst = [t for t in released if maps_at - lag <= released[t] <= maps_at]  # in time when the maps came
    assert len(burst) * per_item > lag  # more work than the bound holds: one batch of all would be late
    # the burst was not run as one batch of every waiting window: each batch fits the bound
    assert backend.sizes and max(backend.sizes) * per_item <= lag
    assert scheduler.stats["late"] == 0  # no model work thrown away: the measured time plans every batch
    # newest first: the newest window of the burst gets the model; the older ones it cannot serve in time fall
    # back, flagged, by their deadline; those known hopeless before it, at once (their image leaves earlier)
    assert "Fallback" not in sent.images[max(burst)][1].meta
    dropped = [t for t in burst if "Fallback" in sent.images[t][1].meta]
    assert dropped and all("model busy" in sent.images[t][1].meta["Fallback"] for t in dropped)
    assert any(sent.images[t][0] < released[t] + lag - 1e-9 for t in dropped)
    # and the model goes on working for every window after the burst
    later = [t for t in released if released[t] > maps_at]
    served = [t for t in later if "Fallback" not in sent.images[t][1].meta]
    assert len(later) >= 5 and served == later, (served, later)


def test_behind_the_model_works_on_the_newest_windows(weights):
    """Frames faster than the model for the whole scan: it serves the newest windows, drops older ones at once."""
    clock = VirtualClock()
    lag, frames = 0.45, 30
    # 0.05 s a call + 0.05 s a window (3 windows: 0.2 s) against a frame every 0.04 s: always behind
    backend = SimulatedTimeBackend(clock, weights["kgmgt"], call_s=0.05, per_item_s=0.05)
    scan, mask, header, stream = _stream(backend, frames)
    sent = Sent(clock)
    scheduler = attach_scheduler(stream, sent, max_lag_ms=lag * 1000, clock=clock)
    released = _play(clock, stream, header, acquisitions(scan, mask, calib_lines=CALIB), frame_s=0.04)
    assert sorted(sent.images) == list(range(frames))
    assert all(at - released[t] <= lag + 1e-9 for t, (at, _) in sent.images.items())  # all within the bound
    served = [t for t, (_, im) in sent.images.items() if "Fallback" not in im.meta]
    dropped = {t: at for t, (at, im) in sent.images.items() if "Fallback" in im.meta}
    assert dropped and all("model busy with newer windows" in sent.images[t][1].meta["Fallback"] for t in dropped)
    # never model work whose image would come too late (serving in release order, it would, again and again)
    assert scheduler.stats["late"] == 0
    # a window is dropped only for a newer one: one released by then is served
    assert all(any(u > t and released[u] <= at for u in served) for t, at in dropped.items()), (served, dropped)
    # so the model gives what it can: ~60% of a long scan at 15 windows/s against 25 frames/s
    assert len(served) >= 0.6 * frames, served


def test_four_scans_share_one_model_in_fair_turns(stream_host, weights, monkeypatch):
    """Four real scans through the embedded host on loopback: one model copy, one call at a time, in fair turns.

    Real threads and sockets, so only what does not depend on the machine's speed is asserted; the real-time
    bound is set far beyond any run (a hang guard, like the joins): the turns are under test here, the
    deadlines in the virtual-time tests above."""
    from gadgets import inference
    from models import inference as loaded_models

    operate(monkeypatch, stream_host, kgmgt_weights=weights["kgmgt"], device="cpu")
    turns = InProcessBackend(device="cpu", weights={"kgmgt": str(weights["kgmgt"])}).turns("kgmgt")
    xml = pipeline_text("kgmgt_cine", "gadgets.cine_kgmgt", max_lag_ms=UNREACHED_LAG_MS)
    scans = [small_cine(slices=2, frames=6, coils=4, ny=NY, nx=NY) for _ in range(4)]
    mask = line_mask("kt-uniform", NY, 6, accel=4, acs=4)
    earlier = len(turns.turns)  # the other tests' turns on this model (far below the 512 the history keeps)
    results: list = [None] * 4

    def scan(i):
        results[i] = run_session("127.0.0.1", stream_host.port, header=make_header(scans[i]), config_text=xml,
                                 items=acquisitions(scans[i], mask, calib_lines=CALIB), pacing=Pacing.per_frame(30))

    threads = [threading.Thread(target=scan, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)  # hang guard
    for r in results:
        assert r is not None and r.closed and not r.texts and not r.errors
        model = series(r.images, 1)
        # every frame exactly one image per series, and (no deadline reached) every one the model's
        every_frame = [(s, t) for s in range(2) for t in range(6)]
        assert sorted((im.slice, im.repetition) for im in model) == every_frame
        assert sorted((im.slice, im.repetition) for im in series(r.images, 0)) == every_frame
        assert all("Fallback" not in im.meta for im in model), [im.meta.get("Fallback") for im in model]
    # one copy of the model in the process, one call at a time
    key = inference.model_key("kgmgt", "cpu", str(weights["kgmgt"]))
    assert sum(1 for k in loaded_models._MODELS if k[:3] == key[:3]) == 1
    assert turns.most_running == 1
    log = list(turns.turns)[earlier:]  # this test's turns
    assert len({t.session for t in log}) == 4 and sum(t.items for t in log) == 4 * 12
    # fair turns: between two turns of one scan, every other scan that was waiting got its turn
    for i, turn in enumerate(log):
        nxt = next((k for k in range(i + 1, len(log)) if log[k].session == turn.session), None)
        if nxt is None:
            continue
        served = {log[k].session for k in range(i + 1, nxt)}
        assert set(turn.waiting) - {turn.session} <= served, (i, nxt)
