"""Runs you can trust (issue 9): settings-keyed resume, honest exit codes, the lease on
output.dir, actor loss in the generator pool, damaged shards, and the fault matrix (driver killed
in each stage, S3 endpoint restarted during shard writes). Each fault test injects the fault, then
reruns, then checks every unit exactly once and committed files untouched (bytes and mtime)."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from mgd_ray.config import job_from_dict
from mgd_ray.pipeline.driver import run_job
from mgd_ray.pipeline.settings import SHARD_KEY, SettingsChanged
from mgd_ray.pipeline.stage import BY_NAME
from mgd_ray.pipeline.store import Lease, LeaseHeld, Store
from tests.test_pipeline import GEN, _wait_for_orphaned_actors, shard_rows, twin_dict

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.timeout(900)]


def snapshot(out: Path, *dirs: str) -> dict:
    """{relative path: (mtime_ns, bytes)} of the committed files under ``dirs``."""
    snap = {}
    for d in dirs:
        for f in sorted((out / d).rglob("*")):
            if f.is_file() and ".tmp-" not in f.name:
                snap[str(f.relative_to(out))] = (f.stat().st_mtime_ns, f.read_bytes())
    return snap


def assert_untouched(before: dict, after: dict):
    for name, v in before.items():
        assert name in after, f"committed file {name} disappeared"
        assert after[name] == v, f"committed file {name} was rewritten by the rerun"


def assert_each_unit_once(out: Path, n_images: int):
    ids = [r["sample_id"] for r in shard_rows(out)]
    assert len(ids) == len(set(ids)) == n_images


def cli(args: list[str], env_extra: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "mgd_ray.distill", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ray_env() -> dict:
    import ray
    return {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def write_job(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def encoded(ray_cluster, tiny_prior, tmp_path_factory) -> Path:
    """One finished encode + coreset + generate of the twin (evaluation off). Tests copy from it:
    placement settings (actors, retries, batch size, fault injection) are not part of the key."""
    out = tmp_path_factory.mktemp("base") / "out"
    run_job(job_from_dict(twin_dict(out, tiny_prior, evaluate={"enabled": False})), GEN)
    return out


def copy_base(base: Path, dest: Path, with_shards: bool = False) -> Path:
    for d in ("latents", "coreset", *(["shards"] if with_shards else [])):
        shutil.copytree(base / d, dest / d)
    return dest


# ---- the lease (no Ray) --------------------------------------------------------------------
def test_lease_refuses_a_live_driver_and_takes_over_a_stale_one(tmp_path):
    store = Store(str(tmp_path / "out"))
    store.makedirs()
    with Lease(store):
        with pytest.raises(LeaseHeld, match="in use by another driver"):
            Lease(store).acquire()
    assert store.read_json(Lease.NAME).get("released") is True  # released on exit (kept: the epoch counts on)
    # a driver on this host whose process is gone: taken over at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.write_json({"owner": "x", "host": Lease(store).me["host"], "pid": dead.pid, "heartbeat": time.time(),
                      "ttl": 600}, Lease.NAME)
    lease = Lease(store)
    lease.acquire()
    assert store.read_json(Lease.NAME)["owner"] == lease.me["owner"]
    lease.release()
    # a driver on another host: live while its heartbeat is fresh, stale after its ttl
    store.write_json({"owner": "y", "host": "elsewhere", "pid": 1, "heartbeat": time.time(), "ttl": 600}, Lease.NAME)
    with pytest.raises(LeaseHeld):
        Lease(store).acquire()
    old = time.time() - 700   # expiry goes by the store's clock: the file's mtime, not the record's heartbeat
    os.utime(store.path(Lease.NAME), (old, old))
    Lease(store).acquire()


def test_lease_heartbeat_keeps_it_live(tmp_path):
    store = Store(str(tmp_path / "out"))
    store.makedirs()
    with Lease(store, ttl=0.8) as lease:
        time.sleep(1.5)   # longer than the ttl: only the heartbeat keeps it live
        cur = store.read_json(Lease.NAME)
        assert cur["owner"] == lease.me["owner"] and Lease(store).stale(cur) is None


# ---- settings keys (no Ray) ----------------------------------------------------------------
def test_evaluation_key_names_trial_settings_and_ignores_placement(tmp_path):
    from types import SimpleNamespace

    from mgd_ray.pipeline.stage import BY_NAME, check_settings, discard_from, stage_keys
    info = SimpleNamespace(transformer_sha256="t", vae_sha256="v")
    store = Store(str(tmp_path / "out"))
    base = job_from_dict({"evaluate": {"students": ["convnet3"], "epochs": 5}})
    for stage, key in stage_keys(base, info).items():
        BY_NAME[stage].record_key(store, key)
    # cpus_per_worker 0.75: one thread, as the default 0.5 (on a CPU the thread count is in the key)
    placement = job_from_dict({"evaluate": {"students": ["convnet3"], "epochs": 5, "num_workers": 4,
                                            "cpus_per_worker": 0.75}, "generate": {"num_actors": 8, "batch_size": 64},
                               "encode": {"batch_size": 7, "max_actors": 9}, "model": {"device": "cpu"}})
    check_settings(store, stage_keys(placement, info))  # placement only: accepted
    more = job_from_dict({"evaluate": {"students": ["convnet3", "resnet18"], "train_seeds": 5, "epochs": 5}})
    check_settings(store, stage_keys(more, info))   # a student or train seed added: new trials, the rest kept
    other = job_from_dict({"evaluate": {"students": ["convnet3", "resnet18"], "epochs": 6}})
    with pytest.raises(SettingsChanged) as e:
        check_settings(store, stage_keys(other, info))
    msg = str(e.value)
    assert "evaluate: protocols.hard-label.epochs: 5 -> 6" in msg and "--fresh evaluate" in msg
    assert "students" not in msg
    assert "generate:" not in msg   # earlier stages unchanged: only the evaluation is named
    assert discard_from(store, "evaluate") == ["eval"]
    check_settings(store, stage_keys(other, info))


# ---- exit codes (CLI) ----------------------------------------------------------------------
def test_exit_code_2_for_a_bad_job_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampler: {steps: 0}\n")
    r = cli([str(bad)])
    assert r.returncode == 2 and "sampler -> steps" in r.stderr and "Traceback" not in r.stderr
    r = cli([str(bad), "--fresh", "everything"])
    assert r.returncode == 2


def test_settings_change_refuses_then_fresh(encoded, tiny_prior, tmp_path):
    """Issue 9 §1, measured: cfg_scale 2 -> 4 and lam_mode 0.1 -> 0.5 reused all old images."""
    out = copy_base(encoded, tmp_path / "out", with_shards=True)
    (out / "config.yaml").write_text("from the first run\n")
    hashes = {pq.read_metadata(f).metadata[SHARD_KEY.encode()] for f in (out / "shards").glob("*.parquet")}
    assert len(hashes) == 1   # every shard's footer records the settings that made it
    before = snapshot(out, "latents", "coreset", "shards")
    config = (out / "config.yaml").read_bytes()
    changed = twin_dict(out, tiny_prior, evaluate={"enabled": False}, sampler={"steps": 4, "cfg_scale": 4.0},
                        guidance={"t_stop": 1, "warm": 1, "lam_mode": 0.5})
    job_file = write_job(tmp_path / "changed.yaml", changed)
    r = cli([str(job_file), "--stages", "encode,coreset,generate"], ray_env())
    assert r.returncode == 2, r.stderr[-2000:]
    assert "sampler.cfg_scale: 2.0 -> 4.0" in r.stderr and "guidance.lam_mode: 0.1 -> 0.5" in r.stderr
    assert "--fresh generate" in r.stderr and "new output.dir" in r.stderr
    assert_untouched(before, snapshot(out, "latents", "coreset", "shards"))
    assert (out / "config.yaml").read_bytes() == config  # the refused run changed nothing
    # --fresh evaluate with an unnoticed generate change: refused BEFORE anything is discarded
    (out / "eval").mkdir()
    (out / "eval" / "t.json").write_text("{}")
    (out / "results.json").write_text("{}")
    r = cli([str(job_file), "--fresh", "evaluate"], ray_env())
    assert r.returncode == 2 and "--fresh generate" in r.stderr and "nothing was discarded" in r.stderr, r.stderr
    assert (out / "eval" / "t.json").is_file() and (out / "results.json").is_file()
    assert_untouched(before, snapshot(out, "latents", "coreset", "shards"))
    # placement settings are not part of the key: 2 actors, batch 4 reuse everything
    same = twin_dict(out, tiny_prior, evaluate={"enabled": False}, generate={"num_actors": 2, "batch_size": 4})
    assert run_job(job_from_dict(same), GEN)["generate"]["ran"] == 0
    # --fresh generate: the latents and coreset stay, the shards are made again with the new settings
    m = run_job(job_from_dict(changed), GEN, fresh="generate")
    assert m["generate"]["ran"] == 10 and m["counts"]["units_committed"] == 10
    after = snapshot(out, "latents", "coreset", "shards")
    assert_untouched({k: v for k, v in before.items() if not k.startswith("shards")}, after)
    assert all(after[k][1] != v[1] for k, v in before.items() if k.startswith("shards/s"))
    # a shard truncated after the run: detected from its footer, only that unit is made again
    victim = sorted((out / "shards").glob("*.parquet"))[3]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    keep = {k: v for k, v in snapshot(out, "shards").items() if not k.endswith(victim.name)}
    m = run_job(job_from_dict(changed), GEN)
    assert m["generate"]["ran"] == 1 and victim.read_bytes() == good
    assert_untouched(keep, snapshot(out, "shards"))
    assert_each_unit_once(out, 20)


def test_fault_inject_spec():
    from mgd_ray.pipeline.generator import parse_fault
    assert parse_fault(None) is None
    assert parse_fault("unit=s000-c00002-t00000") == {"unit": "s000-c00002-t00000", "after_commits": 0, "at": "start"}
    assert parse_fault("after_commits=2:at=commit") == {"unit": None, "after_commits": 2, "at": "commit"}
    for bad in ("unit", "after=2", "at=end", "after_commits=x"):
        with pytest.raises(ValueError):
            parse_fault(bad)


def fault_marker(out: Path) -> dict:
    """The one fault the generator hook injected (``generator.maybe_fault``): the unit, the pid,
    and the shards that actor had committed before it was killed."""
    marks = list((out / "_faults").glob("*.txt"))
    assert len(marks) == 1, f"expected exactly one injected fault, found {marks}"
    return json.loads(marks[0].read_text())


def test_dead_actor_gets_no_more_work(encoded, tiny_prior, tmp_path):
    """Issue 12 §4f: one of two actors dies with no restarts left; before, every group later sent
    to it failed at once. Now only the groups it held fail and the rest run on live actors. The
    fault fires mid-unit (images made, shard not written) in the first actor that has committed
    two shards: what it committed before is kept, by the first run and by the rerun."""
    out = copy_base(encoded, tmp_path / "out")
    d = twin_dict(out, tiny_prior, evaluate={"enabled": False},
                  generate={"num_actors": 2, "max_retries": 0, "fault_inject": "after_commits=2:at=commit"})
    m = run_job(job_from_dict(d), GEN)
    fault = fault_marker(out)
    assert len(fault["committed_before"]) >= 2 and fault["unit"] + ".parquet" not in fault["committed_before"]
    failed = json.loads((out / "failed_units.json").read_text())
    names = [f["unit"] for f in failed]
    assert fault["unit"] in names and len(names) <= 2, names   # only what the dead actor held
    assert m["counts"]["units_committed"] == 10 - len(names)
    assert m["status"] == "partial" and not m["requested_done"] and "rerun the same command" in m["reason"]
    before = snapshot(out, "shards")
    assert {f"shards/{s}" for s in fault["committed_before"]} <= set(before)   # the dead actor's commits stayed
    m = run_job(job_from_dict(d), GEN)   # the rerun runs only the missing units
    assert m["generate"]["ran"] == len(names) and m["counts"]["units_committed"] == 10
    assert not (out / "failed_units.json").exists()
    assert_untouched(before, snapshot(out, "shards"))
    assert_each_unit_once(out, 20)


def test_all_actors_dead_exit_1_then_rerun(encoded, tiny_prior, tmp_path):
    """One actor, max_retries 0, killed mid-unit in its third unit after committing the first:
    no traceback, status partial with a reason, exit 1, failed_units.json; `--stages encode` exits
    0; the rerun runs only the missing units and keeps every shard committed before the kill."""
    out = copy_base(encoded, tmp_path / "out")
    unit = "s000-c00002-t00000"
    d = twin_dict(out, tiny_prior, evaluate={"enabled": False},
                  generate={"num_actors": 1, "max_retries": 0,
                            "fault_inject": f"unit={unit}:after_commits=1:at=commit"})
    job_file = write_job(tmp_path / "job.yaml", d)
    r = cli([str(job_file), "--stages", "encode"], ray_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["status"] == "partial"
    # evaluation disabled and no shards yet: `--stages evaluate` did not do what was asked -> exit 1
    r = cli([str(job_file), "--stages", "evaluate"], ray_env())
    man = json.loads((out / "manifest.json").read_text())
    assert r.returncode == 1 and man["status"] == "partial" and not man["requested_done"], r.stderr[-2000:]
    r = cli([str(job_file)], ray_env())
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "rerun the same command" in r.stderr.splitlines()[-1]
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "partial" and "failed" in man["reason"]
    fault = fault_marker(out)
    assert fault["unit"] == unit and "s000-c00000-t00000.parquet" in fault["committed_before"], fault
    failed = [f["unit"] for f in json.loads((out / "failed_units.json").read_text())]
    assert unit in failed and man["counts"]["units_committed"] == 10 - len(failed)
    before = snapshot(out, "shards")
    assert {f"shards/{s}" for s in fault["committed_before"]} <= set(before)
    r = cli([str(job_file)], ray_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and man["generate"]["ran"] == len(failed)
    assert_untouched(before, snapshot(out, "shards"))
    assert_each_unit_once(out, 20)


# ---- the fault matrix: the driver SIGKILLed after some of the stage's work is committed ---------
def matrix_job(out: Path, prior, stage: str) -> dict:
    """The twin (the ``encoded`` fixture's settings for every stage before the one under test),
    its stage under test slow enough that the kill lands after some of its work is committed and
    before its end: coreset one task per class (``latents_per_task: 1``) of 4 CPUs, so one at a
    time, of 100 restarts; generate 20 one-image units of 25 steps; evaluate 6 trials (3 train
    seeds x method and random-real) of 5 epochs on one Train worker."""
    d = twin_dict(out, prior, evaluate={"enabled": stage == "evaluate", "epochs": 5, "train_seeds": 3, "n_evals": 2})
    if stage == "encode":
        d["encode"]["batch_size"] = 4
    if stage == "coreset":
        d["coreset"] = {"latents_per_task": 1, "num_cpus": 4, "n_restarts": 100, "niter": 100}
    if stage == "generate":
        d = twin_dict(out, prior, evaluate={"enabled": False}, generate={"targets_per_unit": 1, "batch_size": 1},
                      sampler={"steps": 25}, guidance={"t_stop": 12})
    return d


# what must be committed before the kill, per stage (relative globs), and how many there are in all
IN_STAGE = {"encode": ("latents/_SETTINGS.json", None), "coreset": ("coreset/parts/c*.parquet", 10),
            "generate": ("shards/s*.parquet", 20), "evaluate": ("eval/hard-label/*-t[0-9]*.json", 6)}


def files(out: Path, pattern: str) -> dict:
    """{relative path: (mtime_ns, bytes)} of the committed files matching ``pattern``."""
    return {str(f.relative_to(out)): (f.stat().st_mtime_ns, f.read_bytes()) for f in sorted(out.glob(pattern))
            if ".tmp-" not in f.name}


def settled(out: Path, pattern: str, quiet: float = 1.0, timeout: float = 30.0) -> dict:
    """The files matching ``pattern`` once no new one has appeared for ``quiet`` s (the killed
    driver's Ray workers are torn down asynchronously)."""
    last, since, deadline = None, time.time(), time.time() + timeout
    while time.time() < deadline:
        cur = sorted(out.glob(pattern))
        if cur != last:
            last, since = cur, time.time()
        elif time.time() - since >= quiet:
            break
        time.sleep(0.1)
    return files(out, pattern)


@pytest.mark.parametrize("stage", ["encode", "coreset", "generate", "evaluate"])
def test_driver_killed_in_each_stage(encoded, tiny_prior, tmp_path, stage, monkeypatch):
    """The driver's process group SIGKILLed once the stage has committed some of its work (coreset
    parts, shards, trials): exit -9, the manifest says ``running`` in that stage (SIGKILL leaves no
    final status), and the rerun builds only what is missing, keeps what was committed (bytes and
    mtime) and completes. Encode commits nothing before its end (Ray Data writes the latents in one
    go; a half-written encode is discarded): it is killed once it has recorded its key, and the
    rerun's latents hold every train row exactly once."""
    out = tmp_path / "out"
    if stage != "encode":   # the finished stages before the one under test, from the shared fixture
        copy_base(encoded, out, with_shards=stage == "evaluate")
        if stage == "coreset":
            shutil.rmtree(out / "coreset")
    d = matrix_job(out, tiny_prior, stage)
    job_file = write_job(tmp_path / "job.yaml", d)
    before_stage = snapshot(out, "latents", "coreset", "shards")   # finished stages: never touched
    pattern, total = IN_STAGE[stage]
    log = open(tmp_path / "driver.log", "wb")
    p = subprocess.Popen([sys.executable, "-m", "mgd_ray.distill", str(job_file)], cwd=ROOT,
                         env={**os.environ, **ray_env()}, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    want = 2 if total else 1
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and len(list(out.glob(pattern))) < want:
        time.sleep(0.02)
    if stage == "generate":   # a second driver on the same output.dir refuses while the first runs
        with monkeypatch.context() as m, pytest.raises(LeaseHeld, match="in use by another driver"):
            # its preflight in this process (not the isolated child's few seconds of imports), so it
            # reaches the lease while the first driver is still generating
            m.setenv("MGD_RAY_IN_PROCESS", "1")
            run_job(job_from_dict(d))
    alive = p.poll() is None
    os.killpg(p.pid, signal.SIGKILL)
    rc = p.wait()
    log.close()
    tail = (tmp_path / "driver.log").read_text()[-3000:]
    assert alive and rc == -signal.SIGKILL, f"the driver ended before the kill (rc {rc}); its log ends:\n{tail}"
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "running" and man["stage"] == stage, (man["status"], man.get("stage"), tail)
    _wait_for_orphaned_actors()   # an actor (generator, Train worker) may still commit what it was running
    hit = settled(out, pattern)
    assert len(hit) >= want, f"the kill did not land after a commit of the {stage} stage: {sorted(hit)}"
    if total:
        assert len(hit) < total, f"the {stage} stage had finished before the kill: nothing tested"
    assert not (out / BY_NAME[stage].dir / "_COMPLETE.json").exists() and not (out / "results.json").exists()
    m = run_job(job_from_dict(d))
    assert m["status"] == "complete" and m["runs"] == 2, m.get("reason")
    assert_untouched(before_stage, snapshot(out, "latents", "coreset", "shards"))
    if stage == "encode":   # Ray Data's half-written latents were discarded: every train row once
        ids = pq.read_table(out / "latents", columns=["id"]).column("id").to_pylist()
        assert len(ids) == len(set(ids)) == m["encode"]["rows"] == 120
    elif stage == "coreset":
        # only the missing classes were built; the kept parts keep their bytes and mtime, and their
        # rows are in targets.parquet as written
        assert m["coreset"]["classes_built"] == 10 - len(hit), (m["coreset"], sorted(hit))
        assert_untouched(hit, files(out, pattern))
        merged = pq.read_table(out / "coreset" / "targets.parquet")
        for name, (_, data) in hit.items():
            part = pq.read_table(io.BytesIO(data))
            mine = merged.filter(pc.equal(merged.column("label"), part.column("label")[0])).select(part.column_names)
            assert mine.equals(part), f"{name} was changed by the rerun"
    else:                      # committed shards / trials keep their bytes and mtime; the rest ran once
        assert_untouched(hit, files(out, pattern))
        if stage == "generate":
            assert m["generate"]["ran"] == 20 - len(hit)
        else:
            assert len(files(out, pattern)) == 6 and m["evaluate"]["trials"] == 6
            assert json.loads((out / "results.json").read_text())["protocols"][0]["results"]
    assert_each_unit_once(out, 20)


def test_s3_endpoint_restarted_during_shard_writes(encoded, tiny_prior, tmp_path, moto_s3):
    """moto's server stopped once some shards are in the bucket, and kept down until the driver
    reports a failed unit (its actor's shard write could not reach the endpoint), then started
    again: the run ends ``partial`` with those units in failed_units.json, no half-written object
    is ever listed under shards/, and the rerun runs exactly the failed units without touching
    the committed objects."""
    import logging

    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer
    from tests.test_job_submit import _free_ports
    (port,) = _free_ports(1)
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    ep = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="flaky")
    url = "s3://flaky/run"
    so = {"key": "testing", "secret": "testing", "endpoint_url": ep}
    fs = s3fs.S3FileSystem(**so)
    for d in ("latents", "coreset"):   # the finished encode and coreset of the shared fixture
        for f in sorted((encoded / d).rglob("*")):
            if f.is_file():
                fs.pipe_file(f"flaky/run/{f.relative_to(encoded)}", f.read_bytes())
    # 20 one-image units of 25 steps on one actor: most are still to run when the server stops
    d = twin_dict(url, tiny_prior, evaluate={"enabled": False}, generate={"targets_per_unit": 1, "batch_size": 1},
                  sampler={"steps": 25}, guidance={"t_stop": 12}, output={"dir": url, "storage_options": so})
    outage: dict = {}
    down = threading.Event()

    def listing() -> dict:
        objs = s3.list_objects_v2(Bucket="flaky", Prefix="run/shards/").get("Contents", [])
        return {o["Key"]: (o["LastModified"], o["ETag"]) for o in objs if o["Key"].endswith(".parquet")}

    def stop_when_shards_land():
        deadline = time.time() + 300
        while time.time() < deadline and len(listing()) < 2:
            time.sleep(0.05)
        outage["at"] = len(listing())
        srv.stop()                    # moto keeps its state in this process: a restarted server has the objects
        srv._server.server_close()    # stop() leaves the socket bound: close it (connections are refused)
        down.set()

    class RestartOnFailure(logging.Handler):
        """Runs in the driver's thread when it logs a failed unit: the outage hit a write."""

        def emit(self, record):
            nonlocal srv
            if down.is_set() and "failed" in record.getMessage() and "restarted" not in outage:
                outage["failure"] = record.getMessage()
                srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
                srv.start()
                outage["restarted"] = time.time()

    handler = RestartOnFailure()
    logging.getLogger("mgd_ray").addHandler(handler)
    t = threading.Thread(target=stop_when_shards_land, daemon=True)
    t.start()
    try:
        m1 = run_job(job_from_dict(d))
        t.join()
        logging.getLogger("mgd_ray").removeHandler(handler)
        assert outage.get("at", 0) >= 2 and "restarted" in outage, outage   # the outage hit a shard write
        first = listing()
        for key in first:             # every listed shard is whole: its footer reads
            pq.read_metadata(fs.open(f"flaky/{key}", "rb"))
        failed = [f["unit"] for f in json.loads(fs.cat_file("flaky/run/failed_units.json"))]
        assert m1["status"] == "partial" and m1["generate"]["failed"] == len(failed) >= 1, m1.get("reason")
        assert len(first) == 20 - len(failed) == m1["counts"]["units_committed"]
        assert not {f"run/shards/{u}.parquet" for u in failed} & set(first)
        m2 = run_job(job_from_dict(d))
        assert m2["status"] == "complete" and m2["generate"]["ran"] == len(failed)
        assert not fs.exists("flaky/run/failed_units.json")
        after = listing()
        assert len(after) == 20 and all(after[k] == v for k, v in first.items()), "a committed object was rewritten"
        ids = [r for k in after for r in pq.read_table(fs.open(f"flaky/{k}", "rb")).column("sample_id").to_pylist()]
        assert len(ids) == len(set(ids)) == 20
    finally:
        logging.getLogger("mgd_ray").removeHandler(handler)
        srv.stop()
        srv._server.server_close()


# ---- readable logs --------------------------------------------------------------------------
def normalise(line: str) -> str:
    """A log line without its time stamps and process ids (those differ between repeats)."""
    import re
    line = re.sub(r"\d{4}-\d\d-\d\d[ T][\d:.,]+", "", line)
    line = re.sub(r"\b\d\d:\d\d:\d\d\b", "", line)
    return re.sub(r"pid=\d+|ip=[\d.]+", "", line).strip()


@pytest.mark.slow
def test_demo_log_has_no_line_repeated_more_than_3_times(tiny_prior, tmp_path):
    """The twin of the demo with its own local Ray (as `make demo`), evaluation included: once 80
    PlacementGroupCleaner warnings (no State API without a dashboard) and a NumPy "not writable"
    warning from every Train worker."""
    from collections import Counter
    d = twin_dict(tmp_path / "out", tiny_prior, evaluate={"epochs": 1})
    job_file = write_job(tmp_path / "job.yaml", d)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-m", "mgd_ray.distill", str(job_file)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=800)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "not writable" not in log and "Failed to query Ray Train Controller" not in log
    # no Ray Train PreemptionWatcher on a one-node local Ray: its creation logged a core_worker.cc ERROR
    assert "'PreemptionWatcher'" not in log, [x for x in log.splitlines() if "core_worker" in x]
    counts = Counter(normalise(x) for x in log.splitlines() if normalise(x))
    worst = counts.most_common(3)
    assert worst[0][1] <= 3, worst
