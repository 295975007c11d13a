"""Real-time model scheduling: which windows the model works on, and which fall back, so a live scan stays live.

A model gadget hands every item it wants the model to reconstruct (a KGMgT
window, an SGF-MRI target) to a :class:`RealtimeScheduler` and gets back,
for each, exactly one call of either ``deliver(payload, result)`` (the model
ran in time) or ``fallback(payload, reason)`` (it did not; the gadget sends
its best classical image, flagged). The scheduler knows nothing of MRI: it
runs the gadget's ``run(payloads) -> results`` on its own thread and
decides, before every batch, what that batch is.

With a real-time bound (``max_lag_s`` > 0) every item has a deadline,
``released + max_lag_s``, counted from when the item was released by the
gadget, *including* any time it then waits for something else (coil maps):
the scanner sees an image of every frame within the bound, whatever the
model does. Before each batch (:func:`plan`):

- items that cannot be finished by their deadline, even if started now,
  fall back now (not at their deadline: their image leaves earlier);
- while the model keeps up (every queued item would be on time served in
  release order), items run in release order, as many in one batch as end
  before the oldest one's deadline (at most ``max_batch``);
- when it does not keep up, the batch is the newest items that fit together
  before the oldest deadline among them: the model works on what the
  operator is looking at now, never on a queue that only grows; older
  items wait for a later batch while they still can be on time;
- when no item can make its deadline by the estimate, the newest runs
  anyway (a probe): the estimate is a measurement, and only running the
  model can correct it. There is no state in which the model is not tried.

The estimate is the model's measured time per item, updated after every
batch (:class:`gadgets.service_time.ServiceTime`), so it follows a slow first call, a machine that
gets busier or quieter, and other scans taking turns on the same model.
A deadline watch sends the fallback of any item whose result is not out by
its deadline (the model's result, if it comes later, is dropped).

Without a bound (``max_lag_s`` = 0: gated cine, where every frame arrives
at the end of the breath-hold and all should get the model) items run in
release order, batched, and at most ``max_pending`` wait before
:meth:`RealtimeScheduler.submit` blocks the caller.

Deadlines start counting once the model is ready (``prepare`` returned):
a process that loads its model per scan (Gadgetron's execute mode) would
otherwise fall back on every window released during the load.

Time and waiting come from a :class:`Timebase` (the clock, the condition the
threads wait on, the threads themselves): the wall clock and real threads in
production (:data:`WALL_CLOCK`); a virtual clock in the tests, so that the
same sequence of events happens whatever the machine's load.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from .service_time import ServiceTime

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Timebase(Protocol):
    """Where the scheduler's time and waiting come from.

    Every wait of the scheduler is ``condition.wait([seconds])`` on a
    condition made here (seconds of this timebase), and its threads, which
    it starts and joins, are made here: so a test can run the real scheduler
    on a virtual clock that moves only when every thread waits
    (``tests/virtual_clock.py``) and see the same events whatever the load.
    """

    def now(self) -> float: ...

    def condition(self) -> threading.Condition: ...

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread: ...


class WallClock:
    """The production timebase: ``time.monotonic``, ``threading`` conditions, daemon threads."""

    def now(self) -> float:
        return time.monotonic()

    def condition(self) -> threading.Condition:
        return threading.Condition()

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        return threading.Thread(target=target, name=name, daemon=True)


WALL_CLOCK = WallClock()

@dataclass(eq=False)
class Job:
    """One item the gadget wants the model to reconstruct."""

    payload: Any
    released: float
    deadline: float | None          # None: no real-time bound
    seq: int
    runnable: bool = True           # False while it waits for something the gadget must supply
    state: str = "waiting"          # waiting -> queued -> running -> done
    delivered: bool = False
    waiting_for: str = "its inputs"  # what a non-runnable job waits for (fallback reasons name it)


@dataclass
class Plan:
    batch: list[Job]
    stale: list[Job] = field(default_factory=list)
    probe: bool = False


def plan(queued: Sequence[Job], now: float, estimate: ServiceTime, max_batch: int,
         due: Callable[[Job], float | None] | None = None) -> Plan:
    """What to run now among ``queued`` (runnable jobs not started), and which are stale.

    Pure (no clock, no threads), so the policy is tested on its own; see
    the module docstring. ``due(job)`` gives a job's effective deadline
    (default ``job.deadline``; None = no bound).
    """
    due = due or (lambda j: j.deadline)
    jobs = sorted(queued, key=lambda j: (j.released, j.seq))
    timed = [j for j in jobs if due(j) is not None]
    if not timed:  # no bound: release order, batched
        return Plan(jobs[:max_batch])
    untimed = [j for j in jobs if due(j) is None]
    if untimed:  # never mixed in one scheduler; served first, in order, if it happens
        return Plan(untimed[:max_batch])
    one = estimate.batch_s(1)
    max_batch = min(max_batch, max(2, 2 * estimate.largest))
    if one is None:
        # nothing measured yet: one item, the cheapest measurement; the oldest that still has at least
        # half the time the newest has (one about to expire would most likely be wasted)
        most = max(due(j) - now for j in timed)
        if most <= 0:  # every deadline has passed: as with no feasible job below, probe the newest
            return Plan([timed[-1]], timed[:-1], probe=True)
        return Plan([next(j for j in timed if due(j) - now >= 0.5 * most)], probe=True)
    feasible = [j for j in timed if now + one <= due(j)]
    stale = [j for j in timed if now + one > due(j)]
    if not feasible:  # the estimate says nothing can be on time: try the newest anyway, and re-measure
        return Plan([timed[-1]], stale[:-1], probe=True)
    chunks = _in_order(feasible, now, estimate, max_batch, due)
    if chunks is not None:  # keeping up: in release order, as many as end before the oldest's deadline
        return Plan(feasible[:chunks[0]], stale)
    # not keeping up: the newest first, older ones with it while the batch still ends before their deadline;
    # the others wait for the next plan (dropped then if hopeless: a batch size never run is only a guess)
    batch = [feasible[-1]]
    for j in reversed(feasible[:-1]):
        if len(batch) >= max_batch or now + estimate.batch_s(len(batch) + 1) > due(j):
            break
        batch.insert(0, j)
    return Plan(batch, stale)


def _in_order(jobs: list[Job], now: float, estimate: ServiceTime, max_batch: int,
              due: Callable[[Job], float | None]) -> list[int] | None:
    """Batch sizes that serve ``jobs`` oldest first, each batch as large as ends before its oldest's deadline,
    if every job is then on time; else None."""
    sizes, t, i = [], now, 0
    while i < len(jobs):
        n = 1
        while n < max_batch and i + n < len(jobs) and t + estimate.batch_s(n + 1) <= due(jobs[i]):
            n += 1
        t += estimate.batch_s(n)
        if any(t > due(j) for j in jobs[i:i + n]):
            return None
        sizes.append(n)
        i += n
    return sizes


class RealtimeScheduler:
    """Runs a gadget's model calls beside its frame path under a real-time bound (module docstring).

    ``run(payloads) -> results`` (one result per payload, in order; it
    should turn model failures into results itself), ``deliver(payload,
    result)``, ``fallback(payload, reason)``: each payload gets exactly one
    of the last two, possibly from another thread than the one that
    submitted it. ``prepare()`` runs first on the scheduler's thread (model
    load, model info), so the caller never waits for it. ``clock`` is the
    :class:`Timebase` (the wall clock unless a test gives a virtual one).
    """

    def __init__(self, run: Callable[[list[Any]], list[Any]], deliver: Callable[[Any, Any], None],
                 fallback: Callable[[Any, str], None], *, max_lag_s: float = 0.0, max_batch: int = 8,
                 max_pending: int = 64, prepare: Callable[[], None] | None = None, clock: Timebase = WALL_CLOCK,
                 name: str = "model", describe: Callable[[], str] | None = None,
                 queue_wait: Callable[[], float] | None = None, last_wait: Callable[[], float] | None = None) -> None:
        self._run, self._deliver, self._fallback = run, deliver, fallback
        self.max_lag_s = max(0.0, float(max_lag_s))
        self.max_batch = max(1, int(max_batch))
        self.max_pending = max(1, int(max_pending))
        self.clock: Clock = clock.now
        self.name = name
        self._describe = describe or (lambda: name)
        self.estimate = ServiceTime()
        self.stats: Counter = Counter()  # batches, model, fallback, stale, deadline, late, probes, max_batch
        self.error: BaseException | None = None
        self._cond = clock.condition()
        self._jobs: list[Job] = []            # not yet delivered, release order
        self._deadlines: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._ready_at: float | None = None
        self._closing = False
        self._prepare = prepare
        # a model shared with other scans: how long a call would wait for their turns now, and how long the
        # last one did (the estimate is of the model itself; the plan adds the wait)
        self._queue_wait = queue_wait or (lambda: 0.0)
        self._last_wait = last_wait or (lambda: 0.0)
        self.thread = clock.thread(self._work, f"{name}-model")
        self.watcher = clock.thread(self._watch, f"{name}-deadlines")
        self.thread.start()
        if self.max_lag_s:
            self.watcher.start()

    # ------------------------------------------------------------------ the gadget's side
    def submit(self, payload: Any, *, released: float | None = None, runnable: bool = True,
               waiting_for: str = "its inputs") -> Job:
        """Hand over one item; its deadline counts from ``released`` (default now).

        Without a bound, blocks while ``max_pending`` items wait (back-pressure
        on a burst replayed as fast as possible).
        """
        now = self.clock()
        released = now if released is None else released
        with self._cond:
            if not self.max_lag_s:
                while len(self._jobs) >= self.max_pending and not self._closing:
                    self._cond.wait()
            job = Job(payload, released, released + self.max_lag_s if self.max_lag_s else None, next(self._seq),
                      runnable=runnable, state="queued" if runnable else "waiting", waiting_for=waiting_for)
            self._jobs.append(job)
            if job.deadline is not None:
                heapq.heappush(self._deadlines, (job.deadline, job.seq, job))
            self._cond.notify_all()
        return job

    def make_runnable(self, *jobs: Job) -> None:
        """What ``jobs`` waited for has come: they may run now (those not already past their deadline).

        Several at once (a slice's coil maps arriving) are handed over together,
        so the next plan sees all of them, not the first alone.
        """
        with self._cond:
            for job in jobs:
                if not (job.delivered or job.runnable):
                    job.runnable, job.state = True, "queued"
                    log.debug("%s job %d released %.3f runnable at %.3f", self.name, job.seq, job.released,
                              self.clock())
            self._cond.notify_all()

    def give_up(self, job: Job, reason: str) -> None:
        """The gadget knows this item cannot get the model (no coil maps, bad k-space): fall back now."""
        self._settle(job, fallback=reason, counter="given_up")

    def finish(self) -> None:
        """No more items: let the queued ones run (or reach their deadlines), then stop the threads."""
        with self._cond:
            self._closing = True
            stuck = [j for j in self._jobs if not j.runnable]
            self._cond.notify_all()
        for job in stuck:  # the gadget should have resolved these; it is the end of the stream either way
            self._settle(job, fallback=f"stream ended while waiting for {job.waiting_for}", counter="given_up")
        self.thread.join()
        if self.watcher.is_alive():
            with self._cond:
                self._cond.notify_all()
            self.watcher.join()
        if self.error is not None:
            raise RuntimeError(f"{self.name} model worker failed: {self.error}") from self.error

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs)

    # ------------------------------------------------------------------ delivery (exactly once)
    def _settle(self, job: Job, *, result: Any = None, fallback: str | None = None, counter: str = "") -> bool:
        with self._cond:
            if job.delivered:
                return False
            job.delivered, job.state = True, "done"
            try:
                self._jobs.remove(job)
            except ValueError:
                pass
            self.stats[counter or ("fallback" if fallback is not None else "model")] += 1
            self._cond.notify_all()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s job %d released %.3f: %s", self.name, job.seq, job.released,
                      "model" if fallback is None else f"fallback ({counter}): {fallback}")
        if fallback is not None:
            self._fallback(job.payload, fallback)
        else:
            self._deliver(job.payload, result)
        return True

    def _due(self, job: Job) -> float | None:
        if job.deadline is None:
            return None
        # deadlines count once the model is ready (module docstring)
        return max(job.deadline, (self._ready_at or 0.0) + self.max_lag_s)

    # ------------------------------------------------------------------ the model thread
    def _work(self) -> None:
        try:
            if self._prepare is not None:
                self._prepare()
        except Exception:
            log.exception("%s model not ready", self.name)
        finally:
            with self._cond:
                self._ready_at = self.clock()
                self._cond.notify_all()
        while True:
            with self._cond:
                while True:
                    queued = [j for j in self._jobs if j.runnable and j.state == "queued"]
                    if queued:
                        break
                    if self._closing and not self._jobs:
                        return
                    self._cond.wait()
                now = self.clock()
                try:
                    start = now + max(0.0, self._queue_wait())
                except Exception:  # a diagnostic, never a reason to stop
                    start = now
                p = plan(queued, start, self.estimate, self.max_batch, self._due)
                for j in p.batch:
                    j.state = "running"
                stale = list(p.stale)
                per = self.estimate.per_item_s
            for j in stale:
                self._settle(j, fallback=self._stale_reason(per), counter="stale")
            if p.probe:
                self.stats["probes"] += 1
            self._execute(p.batch)

    def _execute(self, batch: list[Job]) -> None:
        started = self.clock()
        try:
            results = self._run([j.payload for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # never lose an item: each gets its flagged fallback
            log.exception("%s batch failed", self.name)
            self.error = self.error or exc
            for j in batch:
                self._settle(j, fallback=f"{type(exc).__name__}: {exc}", counter="failed")
            return
        took = self.clock() - started
        try:
            waited = min(took, max(0.0, self._last_wait()))
        except Exception:
            waited = 0.0
        self.estimate.observe(len(batch), took - waited)
        self.stats["batches"] += 1
        self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
        for j, r in zip(batch, results):
            if not self._settle(j, result=r):
                self.stats["late"] += 1  # its deadline passed while it ran: the fallback already left
        log.debug("%s batch of %d in %.0f ms (estimate %.0f ms an item)", self.name, len(batch), took * 1000,
                  (self.estimate.per_item_s or 0) * 1000)

    def _stale_reason(self, per_item_s: float | None) -> str:
        model = f"{per_item_s * 1000:.0f} ms an image" if per_item_s is not None else "not measured yet"
        return (f"model busy with newer windows: this one could not be done within max_lag_ms "
                f"({self.max_lag_s * 1000:.0f} ms; model {model})")

    # ------------------------------------------------------------------ the deadline watch
    def _watch(self) -> None:
        while True:
            with self._cond:
                while self._ready_at is None:  # set once prepare() has returned or failed, even at the end of the stream
                    self._cond.wait()
                while self._deadlines and self._deadlines[0][2].delivered:
                    heapq.heappop(self._deadlines)
                if not self._deadlines:
                    if self._closing and not self._jobs:
                        return
                    self._cond.wait()
                    continue
                _, _, job = self._deadlines[0]
                left = self._due(job) - self.clock()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._deadlines)
                state = job.state
            self._settle(job, fallback=self._deadline_reason(job, state), counter="deadline")

    def _deadline_reason(self, job: Job, state: str) -> str:
        lag = f"max_lag_ms ({self.max_lag_s * 1000:.0f} ms"
        if state == "waiting":
            return f"still waiting for {job.waiting_for} at {lag} after its window)"
        if state == "running":
            return f"model image late: not within {lag}; still running on {self._describe()})"
        return f"model busy: no turn within {lag}; {self._describe()})"


__all__ = ["RealtimeScheduler", "Job", "Plan", "plan", "Timebase", "WallClock", "WALL_CLOCK"]
