"""One model, many sessions: the in-process model's calls run one at a time, sessions taking turns.

Every session of a long-lived host (the embedded host, ``streamrecon
gadget-server``) builds its own inference backend, but the process holds one
copy of each model (:func:`gadgets.inference.cached_model`), and running it
from several sessions at once only makes every call slower (4 scans on 2
cores: 0.23 -> 0.85 s an image) while each call's deadline keeps running.
So each loaded model gets one :class:`ModelTurns`: a single thread that runs
its calls one after another, taking the sessions with work waiting in
round-robin order, so a session with a deep queue cannot starve one that
just started. The turns also say how long a call submitted now would
wait (:meth:`ModelTurns.expected_wait_s`) and how long the calling thread's
last call did wait (:meth:`ModelTurns.last_wait_s`), so the per-session
real-time scheduler (:mod:`gadgets.realtime_scheduler`) plans with the wait
for the other scans' turns and measures the model without it.

Running every call on one long-lived thread also keeps torch's per-thread
state (OpenMP teams, allocator caches) to one thread per model instead of
one per session: threads come and go with sessions, that state did not.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


@dataclass(eq=False)
class _Call:
    fn: Callable[[], Any]
    session: Hashable
    items: int
    queued: float = 0.0
    started: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Turn:
    """One call as it ran, for diagnostics and tests."""

    session: Hashable
    items: int
    started: float
    ended: float
    waiting: tuple  # sessions that had calls waiting when this one started


class ModelTurns:
    """Runs one model's calls on one thread, one at a time, sessions in round-robin order."""

    def __init__(self, name: str, history: int = 512) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._queues: OrderedDict[Hashable, deque[_Call]] = OrderedDict()
        self._thread: threading.Thread | None = None
        self.turns: deque[Turn] = deque(maxlen=history)
        self.running = 0      # calls running now (never above 1: tests check it)
        self.most_running = 0
        self._current: _Call | None = None
        self._item_s: float | None = None  # model time per item, smoothed over the calls of every session
        self._local = threading.local()

    def call(self, session: Hashable, fn: Callable[[], Any], items: int = 1) -> Any:
        """Run ``fn()`` in ``session``'s next turn and return what it returns (or raise what it raises)."""
        c = _Call(fn, session, items, queued=time.monotonic())
        with self._cond:
            self._queues.setdefault(session, deque()).append(c)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name=f"{self.name}-turns", daemon=True)
                self._thread.start()
            self._cond.notify()
        c.done.wait()
        self._local.waited = max(0.0, c.started - c.queued)
        if c.error is not None:
            raise c.error
        return c.result

    def last_wait_s(self) -> float:
        """How long this thread's last call waited for its turn."""
        return getattr(self._local, "waited", 0.0)

    def expected_wait_s(self, session: Hashable) -> float:
        """How long a call of ``session`` submitted now would wait: the call running, then one turn of each other
        session with calls waiting (round robin), by the model's measured time per item."""
        with self._cond:
            if self._item_s is None:
                return 0.0
            wait = 0.0
            if self._current is not None:
                wait += max(0.0, self._current.items * self._item_s - (time.monotonic() - self._current.started))
            ahead = [q[0].items for s, q in self._queues.items() if s != session and q]
            mine = self._queues.get(session)
            wait += self._item_s * (sum(ahead) + sum(c.items for c in mine or ()))
            return wait

    def waiting(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def _next(self) -> tuple[_Call, tuple]:
        with self._cond:
            while not self._queues:
                self._cond.wait()
            waiting = tuple(self._queues)
            session, q = next(iter(self._queues.items()))
            c = q.popleft()
            if q:
                self._queues.move_to_end(session)  # its next call waits behind every other session's
            else:
                del self._queues[session]
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            c.started = time.monotonic()
            self._current = c
            return c, waiting

    def _serve(self) -> None:
        while True:
            c, waiting = self._next()
            try:
                c.result = c.fn()
            except BaseException as exc:  # handed to the caller
                c.error = exc
            finally:
                ended = time.monotonic()
                with self._cond:
                    self.running -= 1
                    self._current = None
                    per = (ended - c.started) / max(1, c.items)
                    self._item_s = per if self._item_s is None else 0.7 * self._item_s + 0.3 * per
                self.turns.append(Turn(c.session, c.items, c.started, ended, waiting))
                c.done.set()


_TURNS: dict[Hashable, ModelTurns] = {}
_TURNS_LOCK = threading.Lock()


def turns_for(key: Hashable, name: str = "model") -> ModelTurns:
    """The process's one :class:`ModelTurns` for the model identified by ``key``."""
    with _TURNS_LOCK:
        t = _TURNS.get(key)
        if t is None:
            t = _TURNS[key] = ModelTurns(name)
        return t


__all__ = ["ModelTurns", "Turn", "turns_for"]
