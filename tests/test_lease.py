"""One writer per output.dir (``Lease`` + fenced ``Store``), on a local directory and on S3
(moto's server on 127.0.0.1, with S3's atomic conditional writes: ``moto_s3_atomic``).

Races use two real processes that start each round together; a fault hook in them delays the
lease write of a racer that has already decided to write (a slow network), which is where a
check-then-write protocol lets both win.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from mgd_ray.pipeline import store as store_mod
from mgd_ray.pipeline.store import Lease, LeaseHeld, LeaseLost, Store
from tests.s3_fixture import moto_s3_atomic  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "lease-tests"


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    if request.param == "local":
        return SimpleNamespace(kind="local", url=str(tmp_path / "out"), opts={})
    s3 = request.getfixturevalue("moto_s3_atomic")
    s3.create_bucket(BUCKET)
    return SimpleNamespace(kind="s3", url=f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}", opts=s3.storage_options)


def foreign(store: Store, epoch: int, ttl: float, **extra):
    """The lease of a driver on another host (written as it would have written it)."""
    store.write_json({"owner": "gone", "host": "elsewhere", "pid": 1, "started": "-", "ttl": ttl,
                      "epoch": epoch, "seq": 3, "heartbeat": time.time(), **extra}, Lease.NAME)


def expire(where, stores: list[Store], ttl: float):
    """Let the leases in ``stores`` (written with ``ttl``) go stale by the store's clock."""
    if where.kind == "local":
        old = time.time() - ttl - 100
        for s in stores:
            os.utime(s.path(Lease.NAME), (old, old))
    else:
        time.sleep(ttl + 1.6)   # S3 stamps Date and Last-Modified to the second


# ---- two processes racing ------------------------------------------------------------------
RACER = r'''
import json, os, random, sys, time
from mgd_ray.pipeline import store as st

url, ttl = sys.argv[1], float(sys.argv[2])
opts = json.loads(os.environ["LEASE_TEST_OPTS"])
wrote = [0]

def delayed(orig):
    def write(self, *a, **k):
        wrote[0] += 1                                   # this racer saw no live lease and writes ...
        if DELAY[0]:
            time.sleep(random.uniform(0, DELAY[0]))     # ... and its write lands late
        return orig(self, *a, **k)
    return write

DELAY = [0.0]
for cls in (st._LocalLeaseIO, st._S3LeaseIO):
    for name in ("create", "replace"):
        setattr(cls, name, delayed(getattr(cls, name)))
print("ready", flush=True)
for line in sys.stdin:
    _, r, DELAY[0] = line.split()
    DELAY[0], wrote[0] = float(DELAY[0]), 0
    lease = st.Lease(st.Store(f"{url}/r{int(r):03d}", opts), ttl=ttl)
    try:
        epoch, won = lease.acquire(), True
    except st.LeaseHeld:
        epoch, won = None, False
    print(json.dumps({"r": int(r), "won": won, "epoch": epoch, "owner": lease.me["owner"], "wrote": wrote[0]}),
          flush=True)
'''


def race(tmp_path: Path, where, delays: list[float]) -> list[list[dict]]:
    """Two racer processes; round r: both are told to acquire ``{url}/r{r}`` at the same moment."""
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "LEASE_TEST_OPTS": json.dumps(where.opts)}
    errs = [open(tmp_path / f"racer{i}.err", "w+") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), where.url, "600"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=errs[i], text=True, env=env, cwd=ROOT)
             for i in range(2)]

    def answer(i):
        line = procs[i].stdout.readline()
        if not line:
            errs[i].seek(0)
            raise AssertionError(f"racer {i} died:\n{errs[i].read()[-3000:]}")
        return line

    try:
        assert [answer(i).strip() for i in range(2)] == ["ready", "ready"]
        rounds = []
        for r, d in enumerate(delays):
            for p in procs:                     # both are waiting on this line: they start together
                p.stdin.write(f"go {r} {d}\n")
                p.stdin.flush()
            rounds.append([json.loads(answer(i)) for i in range(2)])
        return rounds
    finally:
        for p in procs:
            try:
                p.stdin.close()
                p.wait(timeout=30)
            except Exception:
                p.kill()
        for e in errs:
            e.close()


def check_one_winner_each_round(where, rounds, epoch: int):
    both_wrote = 0
    for res in rounds:
        r = res[0]["r"]
        winners = [x for x in res if x["won"]]
        assert len(winners) == 1, f"round {r}: {len(winners)} winners: {res}"
        assert winners[0]["epoch"] == epoch, res
        rec = Store(f"{where.url}/r{r:03d}", where.opts).read_json(Lease.NAME)
        assert rec["owner"] == winners[0]["owner"] and rec["epoch"] == epoch, (res, rec)
        both_wrote += all(x["wrote"] >= 1 for x in res)
    # the fault happened: in most rounds both racers decided the lease was theirs to write
    assert both_wrote >= len(rounds) // 2, f"only {both_wrote}/{len(rounds)} rounds had both racers writing"


DELAYS = [0.0] * 12 + [0.3] * 12


def test_two_processes_racing_to_acquire_exactly_one_wins(where, tmp_path):
    check_one_winner_each_round(where, race(tmp_path, where, DELAYS), epoch=1)


def test_two_newcomers_racing_to_take_over_a_stale_lease_exactly_one_wins(where, tmp_path):
    stores = [Store(f"{where.url}/r{r:03d}", where.opts) for r in range(len(DELAYS))]
    for s in stores:
        foreign(s, epoch=7, ttl=1.0)
    expire(where, stores, 1.0)
    check_one_winner_each_round(where, race(tmp_path, where, DELAYS), epoch=8)


# ---- fencing -------------------------------------------------------------------------------
def table():
    return pa.table({"x": [1, 2, 3]})


def test_a_fenced_store_refuses_every_commit_once_its_lease_was_taken_over(where):
    base = Store(where.url, where.opts)
    base.makedirs()
    a = Lease(base, ttl=1.0)        # no heartbeat thread: a driver that froze (GC pause, lost network)
    ea = a.acquire()
    driver, worker = a.fenced(), Store(where.url, where.opts, fence=ea)   # a Ray worker rebuilds it so
    worker = pickle.loads(pickle.dumps(worker))
    driver.write_json({"n": 1}, "before", "d.json")
    worker.write_table(table(), "before", "w.parquet")
    expire(where, [base], 1.0)
    b = Lease(Store(where.url, where.opts), ttl=600)
    assert b.acquire() == ea + 1
    for s, who in ((driver, "driver"), (worker, "worker")):
        for commit in (lambda: s.write_json({"n": 2}, "after", f"{who}.json"),
                       lambda: s.write_bytes(b"x", "after", f"{who}.bin"),
                       lambda: s.write_table(table(), "after", f"{who}.parquet"),
                       lambda: s.rm("before", "d.json")):
            with pytest.raises(LeaseLost, match=rf"epoch {ea}\) is at epoch {ea + 1}"):
                commit()
    assert base.ls("after") == [] and base.exists("before", "d.json") and base.exists("before", "w.parquet")
    if where.kind == "local":   # no temporary file left behind either
        assert not os.path.exists(base.path("after")) or os.listdir(base.path("after")) == []
    fb = b.fenced()
    fb.write_json({"n": 3}, "after", "b.json")
    assert base.read_json("after", "b.json") == {"n": 3}
    assert a.heartbeat() is False and a.lost and "taken over" in a.lost_reason
    assert base.read_json(Lease.NAME)["owner"] == b.me["owner"]   # the loser's heartbeat changed nothing


def test_the_heartbeat_notices_the_take_over_and_the_driver_stops_at_once(where, monkeypatch):
    base = Store(where.url, where.opts)
    base.makedirs()
    told = []
    with Lease(base, ttl=1.0, on_lost=told.append) as a:
        driver = a.fenced()
        time.sleep(1.6 if where.kind == "local" else 2.6)   # longer than the ttl: the heartbeat keeps it live
        assert a.stale() is None
        driver.write_json({"n": 1}, "before.json")
        # the heartbeat stalls inside its next write (a network hang) until we let it go
        gate, stalled = threading.Event(), threading.Event()
        orig = a._io.replace

        def hang(data, token):
            stalled.set()
            gate.wait(30)
            return orig(data, token)
        monkeypatch.setattr(a._io, "replace", hang)
        assert stalled.wait(5)
        time.sleep(1.3 if where.kind == "local" else 2.6)
        b = Lease(Store(where.url, where.opts), ttl=600)
        assert b.acquire() == a.epoch + 1
        assert not a.lost and not told            # the driver has not noticed yet
        gate.set()
        deadline = time.time() + 10
        while not a.lost and time.time() < deadline:
            time.sleep(0.02)
        assert a.lost and told and "taken over" in a.lost_reason and f"epoch {b.epoch}" in a.lost_reason
        reads = []
        io = driver.lease_io()
        monkeypatch.setattr(io, "read", lambda *x: reads.append(1))
        with pytest.raises(LeaseLost, match="taken over"):
            driver.write_json({"n": 2}, "after.json")
        assert reads == [], "the driver's store should refuse from the heartbeat's verdict, without a read"
        assert not base.exists("after.json")
    rec = base.read_json(Lease.NAME)               # leaving the block did not release b's lease
    assert rec["owner"] == b.me["owner"] and not rec.get("released") and b.stale() is None


def test_expiry_goes_by_the_stores_clock_not_by_the_holders_or_the_readers(where, monkeypatch):
    base = Store(where.url, where.opts)
    base.makedirs()
    ttl = 1.0 if where.kind == "s3" else 600.0
    foreign(base, epoch=4, ttl=ttl, heartbeat=time.time() - 10**6)   # the holder's clock is far behind

    def clock(offset):
        return SimpleNamespace(time=lambda: time.time() + offset, strftime=time.strftime, gmtime=time.gmtime,
                               sleep=time.sleep, monotonic=time.monotonic)
    monkeypatch.setattr(store_mod, "time", clock(+86400))            # and the reader's a day ahead
    with pytest.raises(LeaseHeld, match="in use by another driver"):
        Lease(base, ttl=ttl).acquire()
    expire(where, [base], ttl)
    monkeypatch.setattr(store_mod, "time", clock(-86400))            # a day behind: it is stale all the same
    assert Lease(base, ttl=ttl).acquire() == 5


def test_the_epoch_keeps_counting_across_releases(where):
    base = Store(where.url, where.opts)
    base.makedirs()
    with Lease(base) as a:
        first = a.fenced()
        first.write_json({"n": 1}, "a.json")
    assert base.read_json(Lease.NAME)["released"] is True and a.epoch == 1
    with pytest.raises(LeaseLost, match="released"):
        first.write_json({"n": 2}, "a.json")                  # the driver stopped holding it
    with Lease(base) as b:
        assert b.epoch == 2
        with pytest.raises(LeaseLost, match=r"epoch 1\) is at epoch 2"):   # a worker left from the first run
            Store(where.url, where.opts, fence=1).write_json({"n": 3}, "a.json")
        Store(where.url, where.opts, fence=2).write_json({"n": 4}, "a.json")
    assert base.read_json("a.json") == {"n": 4}


def test_s3_store_honours_conditional_writes(moto_s3_atomic):
    moto_s3_atomic.create_bucket(BUCKET)
    io = Store(f"s3://{BUCKET}/verify", moto_s3_atomic.storage_options).lease_io()
    assert isinstance(io, store_mod._S3LeaseIO) and io.verify() is True
    assert io.create(b'{"a": 1}') is not None and io.create(b'{"a": 2}') is None
    seen = io.read()
    assert seen.record == {"a": 1} and 0 <= seen.age < 5
    assert io.replace(b'{"a": 3}', '"' + "0" * 32 + '"') is None
    assert io.replace(b'{"a": 3}', seen.token) is not None and io.read().record == {"a": 3}
    assert io.replace(b'{"a": 4}', seen.token) is None    # the version it replaced is gone


def test_filesystems_without_conditional_writes_still_get_the_lease_and_the_fence():
    base = Store(f"memory://lease-{uuid.uuid4().hex[:8]}/out")   # no compare-and-swap: check, then write
    a = Lease(base, ttl=600)
    assert isinstance(a._io, store_mod._PlainLeaseIO) and a.acquire() == 1
    with pytest.raises(LeaseHeld):
        Lease(base).acquire()
    fa = a.fenced()
    fa.write_json({"n": 1}, "a.json")
    a.release()
    b = Lease(base)
    assert b.acquire() == 2
    with pytest.raises(LeaseLost):
        fa.write_json({"n": 2}, "a.json")
    assert base.read_json("a.json") == {"n": 1}
