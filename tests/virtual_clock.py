"""A virtual clock for the real-time scheduler's tests: the same sequence of events whatever the machine's load.

The scheduler's tests are about time (deadlines, a model slower than the
frames, a burst after coil maps), and on a loaded 2-core machine wall-clock
time is whatever the other processes leave: sleeps overrun, a thread is not
scheduled for half a second, and a test asserting on what happened "within
0.45 s" fails for no fault of the code. So these tests run the real
scheduler, gadget and model on a :class:`VirtualClock` instead
(the scheduler takes it as its ``clock``, a :class:`gadgets.realtime_scheduler.Timebase`):

- virtual time moves only when every participating thread waits on it:
  in :meth:`VirtualClock.sleep` (the frames' pace, a model's simulated
  duration), in ``wait`` on a condition made by :meth:`VirtualClock.condition`
  (the scheduler's), or joining a thread made by :meth:`VirtualClock.thread`.
  It then jumps to the earliest wake-up. However long the real work between
  two waits takes (a model call, a SENSE image), it takes no virtual time;
- one participant runs at a time: a thread woken by ``notify`` runs when the
  one that woke it waits, in the order they were woken, and timers fire in
  (time, order set) order. No two threads race, so a test sees the same
  sequence of events on every run, on an idle or an overloaded machine.

Participants are the thread that made the clock and the threads made by it.
A participant must not wait for another participant by any other means than
the clock's (a real ``Thread.join``, an ``Event``): that other one would never
be run. Waiting on threads outside the clock (the model's turns thread) is fine.
If every participant waits and no timer is set, nothing can ever happen: the
waits raise :class:`VirtualDeadlock` instead of hanging. A real-time guard
(:data:`REAL_TIME_GUARD_S`) turns a hang of the machinery itself into an error.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from typing import Callable

# Hang guard only: no participant ever waits this long in real time for its turn unless something is stuck.
REAL_TIME_GUARD_S = 300.0


class VirtualDeadlock(RuntimeError):
    """Every participant waits and no timer is set: nothing can ever happen."""


class _Waiter:
    """One blocked participant."""

    __slots__ = ("thread", "state", "timed_out", "error")

    def __init__(self, thread: threading.Thread | None) -> None:
        self.thread = thread
        self.state = "blocked"  # blocked -> ready -> running
        self.timed_out = False
        self.error: str | None = None


class VirtualClock:
    """A discrete-event clock: the scheduler's :class:`~gadgets.realtime_scheduler.Timebase` in tests (see above)."""

    def __init__(self, start: float = 0.0) -> None:
        self._k = threading.Condition(threading.Lock())  # the kernel's lock: guards everything below
        self._now = float(start)
        self._runner: threading.Thread | None = threading.current_thread()  # the one participant running
        self._ready: deque[_Waiter] = deque()  # woken, in the order they were woken
        self._timers: list[tuple[float, int, _Waiter]] = []
        self._seq = itertools.count()
        self._blocked: set[_Waiter] = set()

    # ------------------------------------------------------------------ the Timebase
    def now(self) -> float:
        return self._now

    def condition(self) -> threading.Condition:
        return _VirtualCondition(self)

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        return _VirtualThread(self, target, name)

    # ------------------------------------------------------------------ for the test and simulated models
    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass for the calling participant (the others run meanwhile)."""
        if seconds <= 0:
            return
        with self._k:
            w = self._block(seconds)
            self._await(w)

    # ------------------------------------------------------------------ the kernel (self._k held)
    def _block(self, timeout: float | None) -> _Waiter:
        """The running participant stops: until woken, or ``timeout`` virtual seconds (None: no timer)."""
        me = threading.current_thread()
        if self._runner is not me:
            raise RuntimeError(f"{me.name} waits on the virtual clock but is not the running participant "
                               f"({self._runner.name if self._runner else 'none'} is)")
        w = _Waiter(me)
        self._blocked.add(w)
        if timeout is not None:
            heapq.heappush(self._timers, (self._now + max(0.0, timeout), next(self._seq), w))
        self._runner = None
        self._dispatch()
        return w

    def _wake(self, w: _Waiter) -> bool:
        """``w`` may run again (notified, joined thread ended); it runs when the running participant waits."""
        if w.state != "blocked":
            return False
        w.state = "ready"
        self._blocked.discard(w)
        self._ready.append(w)  # its timer, if any, is now stale: skipped when it comes up
        self._dispatch()
        return True

    def _dispatch(self) -> None:
        """If nobody runs: the next woken participant, else the earliest timer (time moves to it)."""
        if self._runner is not None:
            return
        if not self._ready:
            while self._timers and self._timers[0][2].state != "blocked":
                heapq.heappop(self._timers)
            if not self._timers:
                if self._blocked:
                    self._deadlock()
                return
            at, _, w = heapq.heappop(self._timers)
            self._now = max(self._now, at)
            w.timed_out = True
            w.state = "ready"
            self._blocked.discard(w)
            self._ready.append(w)
        w = self._ready.popleft()
        w.state = "running"
        self._runner = w.thread
        self._k.notify_all()

    def _deadlock(self) -> None:
        names = sorted(w.thread.name for w in self._blocked if w.thread is not None)
        for w in list(self._blocked):
            w.error = f"virtual deadlock at t={self._now:.3f} s: {names} all wait and no timer is set"
            w.state = "running"  # each raises on its own; the clock is unusable from here on
        self._blocked.clear()
        self._k.notify_all()

    def _await(self, w: _Waiter) -> None:
        """Block the calling thread until ``w`` is the running participant."""
        give_up = time.monotonic() + REAL_TIME_GUARD_S
        while w.state != "running":
            if time.monotonic() > give_up:
                raise TimeoutError(f"virtual clock: {threading.current_thread().name} not run for "
                                   f"{REAL_TIME_GUARD_S:.0f} s of real time (t={self._now:.3f} s, running: "
                                   f"{self._runner.name if self._runner else 'none'})")
            self._k.wait(1.0)
        if w.error is not None:
            raise VirtualDeadlock(w.error)


class _VirtualCondition(threading.Condition):
    """A condition whose ``wait(timeout)`` counts virtual seconds and whose waiters are woken through the clock."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(threading.RLock())  # re-entrant, as threading.Condition() is
        self._clock = clock
        self._vwaiters: list[_Waiter] = []

    def wait(self, timeout: float | None = None) -> bool:
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        if timeout is not None and timeout <= 0:
            return False
        k = self._clock
        with k._k:
            w = k._block(timeout)  # before the lock is let go: no notify can come in between
            self._vwaiters.append(w)
        saved = self._release_save()
        try:
            with k._k:
                k._await(w)
        finally:
            self._acquire_restore(saved)
            if w in self._vwaiters:  # timed out: no notify took it
                self._vwaiters.remove(w)
        return not w.timed_out

    def notify(self, n: int = 1) -> None:
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        k = self._clock
        with k._k:
            woken = 0
            while self._vwaiters and woken < n:
                if k._wake(self._vwaiters.pop(0)):
                    woken += 1

    def notify_all(self) -> None:
        self.notify(len(self._vwaiters))


class _VirtualThread(threading.Thread):
    """A participant: it first runs when its starter waits; ``join`` waits through the clock."""

    def __init__(self, clock: VirtualClock, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._clock = clock
        self._vtarget = target
        self._first = _Waiter(self)
        self._done = False
        self._joiners: list[_Waiter] = []

    def start(self) -> None:
        k = self._clock
        with k._k:
            self._first.state = "ready"
            k._ready.append(self._first)
        super().start()

    def run(self) -> None:
        k = self._clock
        with k._k:
            k._await(self._first)
        try:
            self._vtarget()
        finally:
            with k._k:
                self._done = True
                for w in self._joiners:
                    k._wake(w)
                k._runner = None
                k._dispatch()

    def join(self, timeout: float | None = None) -> None:
        k = self._clock
        with k._k:
            if not self._done:
                w = k._block(None)
                self._joiners.append(w)
                k._await(w)
        super().join(timeout)  # it has ended its target: only the real thread's exit is left

    def is_alive(self) -> bool:
        return self._started.is_set() and not self._done


__all__ = ["VirtualClock", "VirtualDeadlock", "REAL_TIME_GUARD_S"]
