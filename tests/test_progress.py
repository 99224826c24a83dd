"""Progress lines (rows done, rate, ETA) from the pure helper and from a background poller."""

import logging
import re
import threading
import time

import pytest

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
        clk.t += 10
        assert not p.update(1000)           # nothing after the final line
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


def test_polled_logs_the_total_when_the_body_is_shorter_than_one_poll():
    done = {"n": 0}
    with Lines() as got:
        with polled(Progress("encode", 120, "images", every=5.0), lambda: done["n"], poll=60.0):
            done["n"] = 120   # a stage that ends before the first poll
    assert got and got[-1].startswith("encode: 120/120 images (100%)"), got


def test_polled_logs_nothing_more_when_the_body_fails():
    with Lines() as got:
        with pytest.raises(RuntimeError):
            with polled(Progress("encode", 120, "images", every=0.0), lambda: 7, poll=60.0):
                raise RuntimeError("write failed")
    assert got == []


def test_fractional_progress_line():
    """Evaluate counts a training trial by its fraction of epochs: 1.5 of 3 trials."""
    with Lines() as got:
        clk = Clock()
        p = Progress("evaluate", 3, "trials", every=0.0, clock=clk)
        clk.t += 30
        assert p.update(1.5)
        assert p.update(3)
    assert got == ["evaluate: 1.5/3 trials (50%), 0.05 trials/s, elapsed 30s, ETA 30s",
                   "evaluate: 3/3 trials (100%), 0.1 trials/s, elapsed 30s, ETA 0s"]


def test_trial_progress_files(tmp_path):
    """Workers write eval/_progress/<trial>.json throttled (first epoch, then every ``every`` s,
    never the last epoch); the driver counts committed trials as 1 and training ones by epochs."""
    from mgd_ray.pipeline.evaluate import progress_writer, trials_progress
    from mgd_ray.pipeline.store import Store
    store = Store(str(tmp_path))
    clk = Clock()
    on_epoch = progress_writer(store, "a", every=10.0, clock=clk)
    on_epoch(1, 4)                                   # first epoch: written
    assert store.read_json("eval", "_progress", "a.json") == {"epoch": 1, "epochs": 4}
    clk.t += 5
    on_epoch(2, 4)                                   # 5 s later: throttled
    assert store.read_json("eval", "_progress", "a.json")["epoch"] == 1
    clk.t += 6
    on_epoch(3, 4)
    assert store.read_json("eval", "_progress", "a.json")["epoch"] == 3
    clk.t += 60
    on_epoch(4, 4)                                   # the last epoch: the trial record says it
    assert store.read_json("eval", "_progress", "a.json")["epoch"] == 3
    assert trials_progress(store, ["a", "b", "c"]) == 0.75   # b, c: not started
    store.write_json({"final_acc": 0.5}, "eval", "b.json")
    store.write_bytes(b"{not json", "eval", "_progress", "c.json")  # torn read: skipped, not fatal
    assert trials_progress(store, ["a", "b", "c"]) == 1.75
    assert trials_progress(store, ["b"]) == 1.0       # only the trials asked about


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_twin_job_logs_encode_and_evaluate_progress(ray_cluster, tiny_prior, tmp_path, monkeypatch, capsys):
    """The real stages feed the helper: encode's row counter and evaluate's committed trials
    (intervals shortened so the tiny twin shows lines); the job also ends with report.html."""
    from mgd_ray.config import job_from_dict
    from mgd_ray.pipeline.driver import run_job
    from mgd_ray.pipeline import runner
    from tests.test_pipeline import twin_dict
    monkeypatch.setattr(runner, "Progress", lambda *a, **k: Progress(*a, **{**k, "every": 0.0}))
    monkeypatch.setattr(runner, "polled", lambda p, count, poll=1.0: polled(p, count, poll=0.2))
    out = tmp_path / "out"
    run_job(job_from_dict(twin_dict(out, tiny_prior)))
    log = capsys.readouterr().out
    enc = [int(m) for m in re.findall(r"encode: (\d+)/120 images", log)]
    ev = [float(m) for m in re.findall(r"evaluate: ([\d.]+)/2 trials", log)]
    gen = [int(m) for m in re.findall(r"generate: (\d+)/20 images", log)]
    assert enc and enc[-1] == 120 and enc == sorted(enc), log   # the counter holds every row at the end
    assert ev and max(ev) >= 1 and ev == sorted(ev), log
    assert gen and gen[-1] == 20, log
    assert (out / "report.html").is_file() and (out / "results.json").is_file()
