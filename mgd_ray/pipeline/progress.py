"""Progress lines for long stages: ``<stage>: done/total <unit>, rate, ETA``, every few seconds.

``Progress.update(done)`` is called by a loop that sees the work finish (generate's ``ray.wait``
loop); ``polled(progress, count)`` covers stages whose driver call blocks (a Ray Data write, a
Ray Train ``fit()``): a background thread calls ``count()`` and logs while the body runs.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

log = logging.getLogger("mgd_ray")


def fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):  # nan / inf: no rate yet
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _num(x: float) -> str:
    """3 -> "3", 1.3745 -> "1.37" (a stage counted in fractions: trials by epochs done)"""
    return str(x) if isinstance(x, int) else f"{x:.2f}".rstrip("0").rstrip(".")


class Progress:
    """Logs ``<stage>: done/total <unit> (pct), rate <unit>/s, ETA`` at most every ``every``
    seconds, and always when ``done`` reaches ``total``; nothing after that line.

    The rate behind the ETA is measured from the first observation with progress (``done > 0``),
    not from the start: the time before it is start-up (actors loading models, a Train worker
    group forming), and the first count is often a token (a trial's first epoch of 300), so an
    average from the start extrapolates the start-up into an ETA of hours that drops to minutes
    two lines later (tests/test_progress.py replays such counts). Until ``min_share`` of the
    total has been done after that first observation the ETA is ``?`` and the rate shown is the
    plain average since the start; after it both are the rate since the first observation. The
    final line shows the stage's average rate since the start.
    """

    def __init__(self, stage: str, total: int, unit: str, every: float = 5.0, clock=time.monotonic,
                 min_share: float = 0.01):
        self.stage, self.total, self.unit, self.every, self.clock = stage, int(total), unit, every, clock
        self.min_share = min_share
        self.t0 = clock()
        self.last = None       # time of the last line
        self.logged_done = -1  # ``done`` of the last line
        self.first = None      # (time, done) of the first observation with done > 0
        self._lock = threading.Lock()

    def observe(self, done: float, now: float | None = None):
        """Record an observation (``update`` does; a caller that counts more often than it logs
        may call it between lines)."""
        if self.first is None and done > 0:
            self.first = (self.clock() if now is None else now, done)

    def rate(self, done: float, now: float | None = None) -> float:
        """Units per second since the first observation with progress; nan until ``min_share`` of
        the total has been done after it (too little to extrapolate from)."""
        now = self.clock() if now is None else now
        if self.first is None:
            return float("nan")
        t1, d1 = self.first
        if now <= t1 or done - d1 <= 0 or done - d1 < self.min_share * self.total:
            return float("nan")
        return (done - d1) / (now - t1)

    def line(self, done: float, extra: str = "") -> str:
        now = self.clock()
        el = max(now - self.t0, 1e-9)
        rate = self.rate(done, now)
        finished = done >= self.total
        shown = done / el if finished or rate != rate else rate
        eta = "0s" if finished else fmt_seconds((self.total - done) / rate if rate == rate else float("nan"))
        pct = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        return (f"{self.stage}: {_num(done)}/{self.total} {self.unit}{pct}, {shown:.3g} {self.unit}/s, "
                f"elapsed {fmt_seconds(el)}, ETA {eta}{extra}")

    def update(self, done: float, extra: str = "") -> bool:
        """Log a line when ``every`` seconds passed since the last line (or the start), or the work
        just finished.
        Returns whether a line was logged."""
        with self._lock:
            now = self.clock()
            self.observe(done, now)
            if self.logged_done >= self.total:
                return False  # the final line is out
            since = now - (self.t0 if self.last is None else self.last)  # first line: after the start line
            if done < self.total and since < self.every:
                return False
            log.info(self.line(done, extra))
            self.last, self.logged_done = now, done
            return True


@contextmanager
def polled(progress: Progress, count, poll: float = 1.0):
    """While the body runs, a daemon thread calls ``count()`` every ``poll`` seconds and feeds
    ``progress.update``; a failing ``count`` is logged at debug level and retried. When the body
    returns, one last count is logged, so a stage shorter than ``poll`` still shows its total."""
    stop = threading.Event()

    def tick():
        try:
            progress.update(count())
        except Exception as e:  # noqa: BLE001  (progress must never break the stage)
            log.debug("%s: progress count failed: %s", progress.stage, e)

    def run():
        while not stop.wait(poll):
            tick()

    th = threading.Thread(target=run, name=f"progress-{progress.stage}", daemon=True)
    th.start()
    try:
        yield progress
    finally:
        stop.set()
        th.join(timeout=10)
    tick()  # only when the body succeeded: a failed stage has no final line
