"""The real-time scheduler and the shared model's turns, on their own: policy, estimate, threads, fairness."""
from __future__ import annotations

import threading
import time

import pytest

from gadgets.model_turns import ModelTurns
from gadgets.realtime_scheduler import Job, RealtimeScheduler, plan
from gadgets.service_time import SAFETY, ServiceTime
from tests.virtual_clock import VirtualClock


def _jobs(releases, lag=2.0):
    return [Job(payload=i, released=r, deadline=r + lag, seq=i) for i, r in enumerate(releases)]


def _measured(per_item: float) -> ServiceTime:
    """An estimate that has seen batches of 1 and 4 items at ``per_item`` each."""
    e = ServiceTime()
    e.observe(1, per_item)
    e.observe(4, 4 * per_item)
    return e


# ------------------------------------------------------------------------------------------ the policy (pure)
def test_keeping_up_runs_in_release_order_and_batches_what_fits_before_the_oldest_deadline():
    jobs = _jobs([0.0, 0.1, 0.2, 0.3, 0.4])
    p = plan(jobs, now=0.5, estimate=_measured(0.1), max_batch=8)
    assert [j.payload for j in p.batch] == [0, 1, 2, 3, 4] and not p.stale and not p.probe
    # the oldest has 0.3 s left: only the batch that ends in time may take it along
    p = plan(jobs, now=1.7, estimate=_measured(0.1), max_batch=8)
    assert [j.payload for j in p.batch] == [0, 1]
    assert SAFETY * 2 * 0.1 <= 0.3 < SAFETY * 3 * 0.1
    p = plan(jobs, now=0.5, estimate=_measured(0.1), max_batch=2)  # max_batch bounds it too
    assert [j.payload for j in p.batch] == [0, 1]
    single = ServiceTime()
    single.observe(1, 0.1)  # only single items measured: a batch of 5 would be a guess, at most 2 are tried
    assert [j.payload for j in plan(jobs, now=0.5, estimate=single, max_batch=8).batch] == [0, 1]


def test_not_keeping_up_serves_the_newest_and_drops_only_hopeless_windows():
    # 8 windows waited for coil maps and are released together, the oldest 1.9 s ago; 0.3 s an item
    jobs = _jobs([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4])
    p = plan(jobs, now=1.9, estimate=_measured(0.3), max_batch=8)
    assert [j.payload for j in p.stale] == [0, 1]  # cannot be done even if started now (0.375 s with the margin)
    assert [j.payload for j in p.batch][-1] == 7     # the newest is in the batch
    end = 1.9 + SAFETY * 0.3 * len(p.batch)
    assert all(end <= j.deadline for j in p.batch)   # the batch fits the bound of everything in it
    assert len(p.batch) < 5                          # so it is not the whole burst
    waiting = set(range(8)) - {j.payload for j in p.batch} - {j.payload for j in p.stale}
    assert waiting  # windows that may still be on time wait for the next plan


def test_a_stale_estimate_never_locks_the_model_out():
    """The latch of the issue: an estimate above the bound must not stop the model from being tried."""
    jobs = _jobs([10.0, 10.4])
    slow = _measured(5.0)  # a slow first call: every window looks hopeless
    p = plan(jobs, now=10.5, estimate=slow, max_batch=8)
    assert p.probe and [j.payload for j in p.batch] == [1] and [j.payload for j in p.stale] == [0]


def test_first_call_measures_on_one_window_that_is_not_about_to_expire():
    jobs = _jobs([0.0, 1.0, 1.9])
    p = plan(jobs, now=1.95, estimate=ServiceTime(), max_batch=8)
    assert p.probe and [j.payload for j in p.batch] == [1]


def test_first_call_after_every_deadline_passed_probes_the_newest():
    """Nothing measured and every window already late (a 1 ms bound): the plan must still name one window
    (it raised StopIteration on the model thread, which lost the gadget's model thread)."""
    jobs = _jobs([0.0, 0.5, 1.0], lag=0.001)
    p = plan(jobs, now=2.0, estimate=ServiceTime(), max_batch=8)
    assert p.probe and [j.payload for j in p.batch] == [2] and [j.payload for j in p.stale] == [0, 1]


def test_without_a_bound_windows_go_in_release_order_in_chunks():
    jobs = [Job(payload=i, released=float(i), deadline=None, seq=i) for i in range(11)]
    p = plan(list(reversed(jobs)), now=100.0, estimate=_measured(50.0), max_batch=4)
    assert [j.payload for j in p.batch] == [0, 1, 2, 3] and not p.stale


def test_service_time_follows_the_model_and_separates_call_overhead():
    e = ServiceTime()
    e.observe(1, 5.0)  # a slow first call
    for _ in range(6):
        e.observe(1, 0.02)
    assert e.per_item_s < 0.2
    e = ServiceTime()
    for n, t in [(1, 0.20), (8, 0.30), (2, 0.21), (4, 0.24)]:  # overhead-dominated (a service, a GPU)
        e.observe(n, t)
    assert 0.15 < e.call_s < 0.21 and e.item_s < 0.03
    assert e.batch_s(8) < 2 * e.batch_s(1)


# ------------------------------------------------------------------------------------------ the threads
# The scheduler's real threads on a virtual clock (tests/virtual_clock.py): the model's time is simulated with
# clock.sleep, so every run sees the same sequence of events however loaded the machine is.
class Recorder:
    """Each item's outcome and the (virtual) time it left; an item given two outcomes fails the test."""

    def __init__(self, clock):
        self.clock = clock
        self.lock = threading.Lock()
        self.model: dict = {}
        self.fallback: dict = {}
        self.at: dict = {}

    def deliver(self, payload, result):
        with self.lock:
            assert payload not in self.model and payload not in self.fallback
            self.model[payload], self.at[payload] = result, self.clock.now()

    def fall_back(self, payload, reason):
        with self.lock:
            assert payload not in self.model and payload not in self.fallback
            self.fallback[payload], self.at[payload] = reason, self.clock.now()


def test_a_slow_first_batch_then_recovery():
    """First call 1.5 s against a 0.6 s bound, then 10 ms: the scheduler must come back to the model."""
    clock = VirtualClock()
    rec = Recorder(clock)
    calls = []

    def run(payloads):
        calls.append(list(payloads))
        clock.sleep(1.5 if len(calls) == 1 else 0.01)
        return [f"model {p}" for p in payloads]

    s = RealtimeScheduler(run, rec.deliver, rec.fall_back, max_lag_s=0.6, max_batch=4, clock=clock)
    released = {}
    for i in range(50):  # a window every 60 ms, 3 s in all
        released[i] = clock.now()
        s.submit(i)
        clock.sleep(0.06)
    s.finish()
    assert set(rec.model) | set(rec.fallback) == set(range(50))
    # every outcome within the bound: the slow call's windows fell back at their deadlines, not after it
    assert all(rec.at[i] - released[i] <= 0.6 + 1e-9 for i in range(50)), rec.at
    assert calls[0] == [0] and rec.fallback[0].startswith("model image late")  # the slow call's own window
    assert s.stats["late"] == 1  # its result came past the deadline and was dropped
    slow_done = released[0] + 1.5
    after = [i for i in range(50) if released[i] > slow_done]
    assert len(after) >= 20
    # recovered: every window released after the slow call gets the model again (the latch gave none)
    assert all(i in rec.model for i in after), ([i for i in after if i not in rec.model], rec.fallback)
    assert s.estimate.per_item_s < 0.6 and s.stats["probes"] >= 1


def test_every_item_gets_exactly_one_outcome_even_when_run_raises():
    clock = VirtualClock()
    rec = Recorder(clock)

    def run(payloads):
        if 3 in payloads:
            raise RuntimeError("boom")
        return [p * 10 for p in payloads]

    s = RealtimeScheduler(run, rec.deliver, rec.fall_back, max_lag_s=0.0, max_batch=1, clock=clock)
    for i in range(6):
        s.submit(i)
    with pytest.raises(RuntimeError, match="boom"):
        s.finish()
    assert rec.model == {0: 0, 1: 10, 2: 20, 4: 40, 5: 50} and "boom" in rec.fallback[3]


def test_waiting_for_inputs_counts_against_the_bound():
    """An item that waits (coil maps) past its deadline falls back then, not when its inputs come."""
    clock = VirtualClock()
    rec = Recorder(clock)
    s = RealtimeScheduler(lambda ps: ps, rec.deliver, rec.fall_back, max_lag_s=0.3, clock=clock)
    job = s.submit("window", runnable=False, waiting_for="coil maps")
    clock.sleep(0.8)
    assert "still waiting for coil maps" in rec.fallback.get("window", ""), rec.fallback
    assert rec.at["window"] == pytest.approx(0.3)  # left at its deadline
    s.make_runnable(job)  # the maps came too late: nothing more happens
    s.finish()
    assert rec.model == {} and s.stats["deadline"] == 1


def test_a_model_image_later_than_the_bound_is_replaced_at_the_deadline():
    """The deadline watch does not wait for a running batch: the fallback leaves at the deadline, the late result
    is dropped."""
    clock = VirtualClock()
    rec = Recorder(clock)

    def run(payloads):
        clock.sleep(1.0)
        return list(payloads)

    s = RealtimeScheduler(run, rec.deliver, rec.fall_back, max_lag_s=0.3, clock=clock)
    s.submit("window")
    s.finish()
    assert rec.model == {} and "model image late" in rec.fallback["window"]
    assert "still running" in rec.fallback["window"]
    assert rec.at["window"] == pytest.approx(0.3)
    assert s.stats["late"] == 1 and s.stats["deadline"] == 1


def test_deadlines_count_from_the_model_being_ready_even_when_the_stream_ends_first():
    """A per-scan process (Gadgetron execute mode) loading its model: a short scan ends before the load does."""
    clock = VirtualClock()
    rec = Recorder(clock)
    s = RealtimeScheduler(lambda ps: [f"model {p}" for p in ps], rec.deliver, rec.fall_back, max_lag_s=0.3,
                          prepare=lambda: clock.sleep(1.0), clock=clock)
    for i in range(3):
        s.submit(i)
    s.finish()  # the stream is over while the model still loads
    assert rec.model == {0: "model 0", 1: "model 1", 2: "model 2"} and rec.fallback == {}
    assert all(at == pytest.approx(1.0) for at in rec.at.values())  # past release + 0.3, within ready + 0.3


# ------------------------------------------------------------------------------------------ fair turns
def _until(condition, guard_s: float = 60.0) -> None:
    """Poll until ``condition()`` holds: the order of events is under test, not their speed (the guard stops a hang)."""
    give_up = time.monotonic() + guard_s
    while not condition():
        assert time.monotonic() < give_up, "hang guard"
        time.sleep(0.005)


def test_sessions_take_turns_on_the_shared_model_one_call_at_a_time():
    turns = ModelTurns("test")
    gate = threading.Event()
    order = []
    lock = threading.Lock()

    def work(tag):
        def fn():
            with lock:
                order.append(tag)
            if tag == "a1":
                gate.wait(10)
            return tag
        return fn

    def caller(session, tag):
        assert turns.call(session, work(tag)) == tag

    threads = [threading.Thread(target=caller, args=("A", "a1"))]
    threads[0].start()
    _until(lambda: order)  # a1 is running and holds the model
    # queued while a1 runs: A has three calls waiting, B two, C one
    for session, tag in [("B", "b1"), ("A", "a2"), ("C", "c1"), ("A", "a3"), ("B", "b2"), ("A", "a4")]:
        before = turns.waiting()
        t = threading.Thread(target=caller, args=(session, tag))
        t.start()
        threads.append(t)
        _until(lambda: turns.waiting() > before)
    gate.set()
    for t in threads:
        t.join(10)
    assert order == ["a1", "b1", "a2", "c1", "b2", "a3", "a4"]  # round robin, not first come first served
    assert turns.most_running == 1
