"""Progress lines (rows done, rate, ETA) from the pure helper and from a background poller."""

import logging
import threading
import time

from mgd_ray.pipeline.progress import Progress, fmt_seconds, polled


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Lines(logging.Handler):
    """Collects the mgd_ray logger's messages (it may not propagate to the root logger)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.got = []

    def emit(self, record):
        self.got.append(record.getMessage())

    def __enter__(self):
        self.lg = logging.getLogger("mgd_ray")
        self.level = self.lg.level
        self.lg.setLevel(logging.INFO)
        self.lg.addHandler(self)
        return self.got

    def __exit__(self, *exc):
        self.lg.removeHandler(self)
        self.lg.setLevel(self.level)


def test_progress_rate_eta_and_throttle():
    with Lines() as got:
        clk = Clock()
        p = Progress("encode", 1000, "images", every=5.0, clock=clk)
        clk.t += 2
        assert not p.update(100)            # within 5 s of the start line: quiet
        clk.t += 3
        assert p.update(250)                # 5 s: 50 images/s, 750 left -> 15 s
        clk.t += 1
        assert not p.update(300)            # throttled
        clk.t += 5
        assert p.update(600)                # 11 s: 54.5/s, 400 left -> 7 s
        clk.t += 0.5
        assert p.update(1000)               # finishing always logs, once
        assert not p.update(1000)
    assert got[0] == "encode: 250/1000 images (25%), 50 images/s, elapsed 5s, ETA 15s"
    assert got[1] == "encode: 600/1000 images (60%), 54.5 images/s, elapsed 11s, ETA 7s"
    assert got[2].startswith("encode: 1000/1000 images (100%)") and got[2].endswith("ETA 0s")
    assert len(got) == 3


def test_fmt_seconds():
    assert [fmt_seconds(x) for x in (0, 59.4, 61, 3725, float("nan"))] == ["0s", "59s", "1m01s", "1h02m", "?"]


def test_polled_logs_from_a_background_thread_until_the_body_ends():
    done = {"n": 0}
    bad = {"calls": 0}

    def count():
        bad["calls"] += 1
        if bad["calls"] == 1:
            raise ConnectionError("transient")  # a failing count is retried, never raised
        return done["n"]
    with Lines() as got:
        with polled(Progress("evaluate", 4, "trials", every=0.0), count, poll=0.01):
            for k in range(1, 5):
                done["n"] = k
                time.sleep(0.3)
        n_threads = sum(t.name == "progress-evaluate" for t in threading.enumerate())
    assert n_threads == 0
    assert any(g.startswith("evaluate: 4/4 trials (100%)") for g in got), got
    assert all("/4 trials" in g for g in got)
