"""The virtual clock the scheduler's tests run on: time moves only when every participant waits, one runs at a time."""
from __future__ import annotations

import time

import pytest

from tests.virtual_clock import VirtualClock, VirtualDeadlock


def test_time_moves_only_when_every_participant_waits_and_events_come_in_time_order():
    clock = VirtualClock()
    log = []

    def worker(name, period, times):
        def run():
            for _ in range(times):
                clock.sleep(period)
                log.append((round(clock.now(), 6), name))
        return run

    threads = [clock.thread(worker("a", 0.3, 3), "a"), clock.thread(worker("b", 0.2, 4), "b")]
    for t in threads:
        t.start()
    time.sleep(0.05)  # real time passing while this participant runs moves no virtual time
    assert clock.now() == 0.0 and log == []
    for t in threads:
        t.join()  # waits through the clock: the others run, time moves
    assert log == [(0.2, "b"), (0.3, "a"), (0.4, "b"), (0.6, "a"), (0.6, "b"), (0.8, "b"), (0.9, "a")]
    assert clock.now() == pytest.approx(0.9)


def test_a_condition_wait_times_out_in_virtual_seconds_or_returns_when_notified():
    clock = VirtualClock()
    cond = clock.condition()
    got = []

    def waiter():
        with cond:
            got.append(("first", cond.wait(0.5), clock.now()))   # nobody notifies: times out at 0.5
            got.append(("second", cond.wait(10.0), clock.now()))  # notified at 0.7, long before 10.5

    t = clock.thread(waiter, "waiter")
    t.start()
    clock.sleep(0.7)
    with cond:
        cond.notify_all()
    t.join()
    assert got == [("first", False, 0.5), ("second", True, 0.7)]


def test_when_nothing_can_ever_happen_the_wait_raises_instead_of_hanging():
    clock = VirtualClock()
    cond = clock.condition()
    with cond, pytest.raises(VirtualDeadlock, match="no timer"):
        cond.wait()
