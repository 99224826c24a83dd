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
        assert not p.update(100)            # within 5 s of the start line: quiet (the rate's origin)
        clk.t += 3
        assert p.update(250)                # 150 in 3 s since the first count: 50/s, 750 left -> 15 s
        clk.t += 1
        assert not p.update(300)            # throttled
        clk.t += 5
        assert p.update(600)                # 500 in 9 s: 55.6/s, 400 left -> 7 s
        clk.t += 0.5
        assert p.update(1000)               # finishing always logs, once: 1000 in 11.5 s
        clk.t += 10
        assert not p.update(1000)           # nothing after the final line
    assert got[0] == "encode: 250/1000 images (25%), 50 images/s, elapsed 5s, ETA 15s"
    assert got[1] == "encode: 600/1000 images (60%), 55.6 images/s, elapsed 11s, ETA 7s"
    assert got[2] == "encode: 1000/1000 images (100%), 87 images/s, elapsed 12s, ETA 0s"
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
        clk.t += 10
        assert p.update(0.25)               # the first count: no rate from it alone
        clk.t += 20
        assert p.update(1.5)                # 1.25 trials in 20 s since the first count
        clk.t += 30
        assert p.update(3)
    assert got == ["evaluate: 0.25/3 trials (8%), 0.025 trials/s, elapsed 10s, ETA ?",
                   "evaluate: 1.5/3 trials (50%), 0.0625 trials/s, elapsed 30s, ETA 24s",
                   "evaluate: 3/3 trials (100%), 0.05 trials/s, elapsed 1m00s, ETA 0s"]


def _plain_average_eta(done, total, elapsed):
    """The ETA the helper printed before it ignored the start-up: total average since the start."""
    return fmt_seconds((total - done) / (done / elapsed))


def test_eta_ignores_the_start_up_and_the_first_token_count():
    """The digits demo's evaluate (4 trials of 300 epochs on 2 Train workers, lines every 10 s):
    ~20 s of start-up, then each worker writes its trial's first epoch (1 of 300 epochs on each of
    two trials: 2/300 trials) and the next progress writes come 15 s later with 146 and 147 epochs
    done. An average since the start printed ETA 3h19m, 4h59m, then 2m04s in 20 s; the
    helper prints ? until there is a rate after the first count, then about a minute, which is
    what is left (each worker did 0.49 trials in those 20 s and has 1.51 to go: ~62 s)."""
    counts = [(20, 2 / 300), (30, 2 / 300), (40, (146 + 147) / 300)]
    assert [_plain_average_eta(d, 4, t) for t, d in counts] == ["3h19m", "4h59m", "2m04s"]  # the jump, replayed
    with Lines() as got:
        clk = Clock()
        p = Progress("evaluate", 4, "trials", every=10.0, clock=clk)
        for t, d in counts:
            clk.t = 100.0 + t
            assert p.update(d)
    etas = [g.split("ETA ")[1] for g in got]
    assert etas[:2] == ["?", "?"], got
    assert etas[2] == "1m02s", got                       # (4 - 0.977) / ((0.977 - 0.0067) / 20 s)
    assert got[2].startswith("evaluate: 0.98/4 trials (24%), 0.0485 trials/s"), got


def test_eta_waits_for_a_share_of_the_work_after_the_first_count():
    """Two workers' first-epoch writes seen on successive polls (1/300, then 2/300 trials) are
    progress, but far too little to extrapolate from: no ETA until 1 % of the total is done after
    the first count; then the ETA is the rate since that count."""
    counts = [(25, 1 / 300), (30, 2 / 300), (35, 2 / 300), (45, 0.6)]
    assert [_plain_average_eta(d, 4, t) for t, d in counts[:3]] == ["8h19m", "4h59m", "5h49m"]
    with Lines() as got:
        clk = Clock()
        p = Progress("evaluate", 4, "trials", every=0.0, clock=clk)
        for t, d in counts:
            clk.t = 100.0 + t
            p.update(d)
    etas = [g.split("ETA ")[1] for g in got]
    assert etas[:3] == ["?", "?", "?"], got
    assert etas[3] == "1m54s", got                        # (4 - 0.6) / ((0.6 - 1/300) / 20 s) = 114 s


def test_eta_grows_while_the_count_stalls():
    """The rate runs to now, not to the last change: a stage that stops moving shows an ETA that
    grows instead of a stale one."""
    with Lines() as got:
        clk = Clock()
        p = Progress("generate", 100, "images", every=0.0, clock=clk)
        for dt, d in [(30, 10), (10, 30), (40, 30)]:
            clk.t += dt
            p.update(d)
    assert [g.split("ETA ")[1] for g in got] == ["?", "35s", "2m55s"], got


def test_trial_progress_files(tmp_path):
    """Workers write eval/_progress/<trial>.json throttled (first epoch, then every ``every`` s,
    never the last epoch); the driver counts committed trials as 1 and training ones by epochs."""
    from mgd_ray.pipeline.evaluate import progress_writer, trials_progress
    from mgd_ray.pipeline.store import Store
    store = Store(str(tmp_path))
    clk = Clock()
    a, b, c = ({"name": n, "protocol": "hard-label"} for n in "abc")
    on_epoch = progress_writer(store, a, every=10.0, clock=clk)
    on_epoch(1, 4)                                   # first epoch: written
    assert store.read_json("eval", "_progress", "hard-label", "a.json") == {"epoch": 1, "epochs": 4}
    clk.t += 5
    on_epoch(2, 4)                                   # 5 s later: throttled
    assert store.read_json("eval", "_progress", "hard-label", "a.json")["epoch"] == 1
    clk.t += 6
    on_epoch(3, 4)
    assert store.read_json("eval", "_progress", "hard-label", "a.json")["epoch"] == 3
    clk.t += 60
    on_epoch(4, 4)                                   # the last epoch: the trial record says it
    assert store.read_json("eval", "_progress", "hard-label", "a.json")["epoch"] == 3
    assert trials_progress(store, [a, b, c]) == 0.75   # b, c: not started
    store.write_json({"final_acc": 0.5}, "eval", "hard-label", "b.json")
    store.write_bytes(b"{not json", "eval", "_progress", "hard-label", "c.json")  # torn read: skipped, not fatal
    assert trials_progress(store, [a, b, c]) == 1.75
    assert trials_progress(store, [b]) == 1.0         # only the trials asked about
    # another protocol's trial of the same name is not this one's
    assert trials_progress(store, [{"name": "b", "protocol": "soft-label"}]) == 0.0


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
    ev = [float(m) for m in re.findall(r"evaluate \[hard-label\]: ([\d.]+)/2 trials", log)]   # its protocol named
    gen = [int(m) for m in re.findall(r"generate: (\d+)/20 images", log)]
    assert enc and enc[-1] == 120 and enc == sorted(enc), log   # the counter holds every row at the end
    assert ev and max(ev) >= 1 and ev == sorted(ev), log
    assert gen and gen[-1] == 20, log
    assert (out / "report.html").is_file() and (out / "results.json").is_file()
