"""The distributed pipeline on a real local Ray: the tiny twin of jobs/digits.yaml end to end,
determinism across actor counts and batch sizes, resume after a killed driver, an actor that
dies mid-unit, corrupt inputs, and s3:// output on moto's server (loopback)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from mgd_ray.config import job_from_dict
from mgd_ray.pipeline.driver import run_job

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
GEN = ["encode", "coreset", "generate"]


def twin_dict(out, prior, **extra) -> dict:
    d = {"name": "twin", "method": "manifoldgd",
         "data": {"source": "sklearn-digits", "limit_per_class": 12, "test_limit_per_class": 5},
         "encode": {"preprocess": "none", "min_actors": 1, "max_actors": 1, "batch_size": 64},
         "model": {"generator": str(prior)},
         "sampler": {"steps": 4, "cfg_scale": 2.0},
         "guidance": {"t_stop": 1, "warm": 1},  # 4 steps: the guidance acts on t = 3, 2
         "generate": {"ipc": 2, "targets_per_unit": 2, "num_actors": 1, "seeds": [0], "batch_size": 2,
                      "num_cpus": 0.5},
         "evaluate": {"epochs": 2, "train_seeds": 1, "num_workers": 1, "flip": False},
         "output": {"dir": str(out)}}
    for k, v in extra.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return d


def shard_rows(out: Path) -> list[dict]:
    rows = []
    for f in sorted((out / "shards").glob("*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def _arrays_in(obj) -> list:
    """numpy arrays / torch tensors anywhere in a nested config."""
    import torch
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
    return [a for v in items for a in _arrays_in(v)]


def test_twin_end_to_end(ray_cluster, tiny_prior, tmp_path, monkeypatch):
    import ray

    from mgd_ray.pipeline import runner
    configs = []
    real_remote = ray.remote

    class _Recorded:                 # what the driver hands the task that fits the TorchTrainer
        def __init__(self, fn):
            self.fn, self.opts = fn, {}

        def options(self, **kw):
            self.opts = kw
            return self

        def remote(self, cfg, *a):
            configs.append(cfg)
            return real_remote(self.fn).options(**self.opts).remote(cfg, *a)

    monkeypatch.setattr(ray, "remote", lambda *a, **k: _Recorded(a[0]) if a and a[0] is runner._fit_task
                        else real_remote(*a, **k))
    out = tmp_path / "out"
    job = job_from_dict(twin_dict(out, tiny_prior))
    m = run_job(job)
    assert m["status"] == "complete"
    # evaluation pixels went by reference (ObjectRefs), none inside the Train config ...
    assert len(configs) == 1 and not _arrays_in(configs[0])
    assert isinstance(configs[0]["test"], ray.ObjectRef) and len(configs[0]["baseline_sets"]) == 1
    # the real test split was decoded once (Ray Data) into a cache under output.dir, read back from it
    caches = list((out / "eval" / "_testset").glob("test-*/_COMPLETE.json"))
    assert len(caches) == 1 and json.loads(caches[0].read_text())["rows"] == 50
    # ... and the trials are those of the same arrays passed by value (same accuracy)
    from mgd_ray.data import open_source
    from mgd_ray.pipeline.evaluate import run_trials
    src = open_source(job.data)
    test = src.arrays("test", image_size=job.evaluate.image_size, mode="center-crop")
    base = ray.get(configs[0]["baseline_sets"]["0"])
    shutil.copytree(out, tmp_path / "again", ignore=shutil.ignore_patterns("eval"))
    again = job_from_dict(twin_dict(tmp_path / "again", tiny_prior))
    cfg = dict(configs[0], job=again.model_dump(mode="json"), test=(test["image"], test["label"]),
               baseline_sets={"0": (np.array(base[0]), np.array(base[1]))})
    from mgd_ray.pipeline import evaluate as evaluate_mod
    progress = []   # each trial reports its epochs to its own progress file
    real_writer = evaluate_mod.progress_writer
    monkeypatch.setattr(evaluate_mod, "progress_writer", lambda store, trial: (
        lambda done, total: (progress.append((trial["name"], done, total)), real_writer(store, trial)(done, total))))
    for rec in run_trials(cfg):
        old = json.loads((out / "eval" / "hard-label" / f"{rec['name']}.json").read_text())
        assert json.loads(json.dumps(rec["history"])) == old["history"], rec["name"]
        assert [d for n, d, _ in progress if n == rec["name"]] == list(range(1, rec["epochs"] + 1))
    assert (tmp_path / "again" / "eval" / "_progress").is_dir()
    assert not (out / "eval" / "_progress").exists()   # the job's evaluate stage removes them at the end
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and man["counts"]["images"] == 20
    assert man["model"]["null_label"] == 10 and man["model"]["transformer_sha256"] != "unknown"
    assert man["classes"] == [str(i) for i in range(10)] and man["git_commit"]
    for stage in ("encode", "coreset", "generate", "evaluate"):
        assert stage in man["timings"]
    # shards: plain pyarrow, the documented columns, one row per image, PNG bytes
    rows = shard_rows(out)
    assert len(rows) == 20 and len({r["sample_id"] for r in rows}) == 20
    assert {r["label"] for r in rows} == set(range(10))
    from PIL import Image
    import io
    for r in rows:
        assert r["class_name"] == str(r["label"]) and r["method"] == "manifoldgd"
        im = np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])))
        assert im.shape == (8, 8) and im.dtype == np.uint8
    # coreset targets carry the tree
    t = pq.read_table(out / "coreset" / "targets.parquet").to_pylist()
    assert len(t) == 20 and all(len(x["member_ids"]) == x["size"] > 0 for x in t)
    assert all(len(x["target"]) == 4 * 4 * 4 for x in t)
    # results: hard-label protocol, method and random-real baseline
    doc = json.loads((out / "results.json").read_text())
    assert [p["name"] for p in doc["protocols"]] == ["hard-label"]
    res = doc["protocols"][0]
    assert res["protocol"] == "hard-label"
    for kind in ("manifoldgd", "random-real"):
        cell = res["results"][kind]["convnet3"]
        assert len(cell["runs"]) == 1 and 0.0 <= cell["final_acc_mean"] <= 1.0
    assert "gain_over_random_real" in res["results"]["manifoldgd"]["convnet3"]
    assert (out / "preview" / "all_classes.png").is_file()
    assert (out / "config.yaml").is_file()
    page = (out / "report.html").read_text()  # the job's report page (tests/test_outputs.py checks its sections)
    assert "<section id=results>" in page and page.count("<tr data-label=") == 10 and "random-real" in page
    # status and export read the files only
    from mgd_ray.pipeline.report import export_imagefolder, status_text
    txt = status_text(str(out))
    assert "status: complete" in txt and "random-real" in txt
    n = export_imagefolder(str(out), str(tmp_path / "exp"))
    assert n == 20 and len(list((tmp_path / "exp" / "3").glob("*.png"))) == 2
    # rerun: everything is reused, nothing regenerated
    mtimes = {f.name: f.stat().st_mtime_ns for f in (out / "shards").glob("*.parquet")}
    m2 = run_job(job_from_dict(twin_dict(out, tiny_prior)))
    assert m2["status"] == "complete" and m2["generate"]["ran"] == 0
    assert mtimes == {f.name: f.stat().st_mtime_ns for f in (out / "shards").glob("*.parquet")}


def test_coreset_fans_out_by_class_and_targets_stay_off_the_driver(ray_cluster, tiny_prior, tmp_path, monkeypatch):
    """A 0-CPU head before scale-up still gets one coreset task per class (latents_per_task=1),
    and no table with the target vectors passes through the driver: not when the coreset is
    built, not when it is reused (resume); the generator actors read their own targets."""
    import ray

    from mgd_ray.pipeline.store import Store
    out = tmp_path / "out"
    d = twin_dict(out, tiny_prior, coreset={"latents_per_task": 1}, evaluate={"enabled": False})
    run_job(job_from_dict(d), ["encode"])
    seen = []
    read, write = Store.read_table, Store.write_table

    def spy_read(self, *parts, **kw):
        t = read(self, *parts, **kw)
        seen.append(("read", parts, t.column_names))
        return t

    def spy_write(self, table, *parts):
        seen.append(("write", parts, table.column_names))
        return write(self, table, *parts)

    monkeypatch.setattr(Store, "read_table", spy_read)          # the driver's process only
    monkeypatch.setattr(Store, "write_table", spy_write)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0.0, "memory": 1e9})   # a 0-CPU head
    m = run_job(job_from_dict(d), GEN)
    assert m["coreset"]["tasks"] == 10 and m["coreset"]["classes_per_task"] == 1
    assert m["coreset"]["engine"] == ["numpy"]                    # engine: auto on a machine without a GPU
    assert m["coreset"]["targets"] == 20 and m["counts"]["units_committed"] == 10
    # one part per (class, generation seed), kept after the merge (an added seed reuses them)
    assert sorted(p.name for p in (out / "coreset" / "parts").glob("*.parquet")) == \
        [f"c{k:05d}-s000.parquet" for k in range(10)]
    for f in (out / "shards").glob("*.parquet"):
        os.remove(f)
    m2 = run_job(job_from_dict(d), GEN)                          # targets reused, units regenerated
    assert m2["generate"]["ran"] == 10 and m2["coreset"]["tasks"] == 10
    assert any(op == "read" and parts[-1] == "targets.parquet" for op, parts, _ in seen)
    assert not [s for s in seen if "target" in s[2]], seen


def test_deterministic_across_actors_and_batch_sizes(ray_cluster, tiny_prior, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ja = job_from_dict(twin_dict(a, tiny_prior, generate={"num_actors": 1, "batch_size": 1}))
    ma = run_job(ja, GEN)
    shutil.copytree(a / "latents", b / "latents")  # also proves the latent cache is reused
    # batch 4 = two units (two classes) per DiT batch, on 2 actors
    jb = job_from_dict(twin_dict(b, tiny_prior, generate={"num_actors": 2, "batch_size": 4}))
    mb = run_job(jb, GEN)
    # the runner makes exactly the DiT batches the dry-run plan counts (one function decides both)
    from mgd_ray.pipeline.plan import dry_run_plan
    assert ma["generate"]["dit_calls"] == dry_run_plan(ja, GEN)["dit_batches_per_step"] == 20
    assert mb["generate"]["dit_calls"] == dry_run_plan(jb, GEN)["dit_batches_per_step"] == 5
    assert mb["encode"]["seconds"] == json.loads((a / "latents" / "_COMPLETE.json").read_text())["seconds"]
    ra = {r["sample_id"]: r["image"]["bytes"] for r in shard_rows(a)}
    rb = {r["sample_id"]: r["image"]["bytes"] for r in shard_rows(b)}
    assert ra.keys() == rb.keys() and len(ra) == 20
    assert all(ra[k] == rb[k] for k in ra), "image bytes differ between 1 actor/batch 1 and 2 actors/batch 4"
    assert len(set(ra.values())) == 20  # and the images are not all the same


def _wait_for_orphaned_actors(timeout=60.0):
    """Ray tears down a dead driver's actors asynchronously (one may still commit the unit it
    was running); wait until no actor of another job is alive (GCS table, no dashboard needed)."""
    import ray
    me = ray.get_runtime_context().get_job_id()
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [a for a in ray._private.state.actors().values()
                 if a.get("State") in ("ALIVE", "PENDING_CREATION", "RESTARTING") and a.get("JobID") != me
                 and not a.get("IsDetached")]
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"actors of the killed driver still alive after {timeout}s: {alive}")


def test_resume_after_killed_driver(ray_cluster, tiny_prior, tmp_path):
    import ray
    out = tmp_path / "out"
    d = twin_dict(out, tiny_prior, generate={"ipc": 4, "targets_per_unit": 1, "batch_size": 1},
                  sampler={"steps": 25}, guidance={"t_stop": 12}, evaluate={"enabled": False})
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(d))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    p = subprocess.Popen([sys.executable, "-m", "mgd_ray.distill", str(job_file)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shards = out / "shards"
    deadline = time.time() + 600
    while time.time() < deadline and len(list(shards.glob("*.parquet"))) < 3 and p.poll() is None:
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    _wait_for_orphaned_actors()  # an actor may still commit the unit it was running
    before = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in shards.glob("*.parquet")}
    assert 3 <= len(before) < 40, f"driver was not stopped mid-generation ({len(before)} shards)"
    m = run_job(job_from_dict(d))
    assert m["status"] == "complete" and m["generate"]["ran"] == 40 - len(before)
    after = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in shards.glob("*.parquet")}
    assert len(after) == 40
    for name, v in before.items():
        assert after[name] == v, f"committed shard {name} was touched by the rerun"
    ids = [r["sample_id"] for r in shard_rows(out)]
    assert len(ids) == len(set(ids)) == 40


def test_orphans_of_a_killed_driver_cannot_commit(ray_cluster, tiny_prior, tmp_path):
    """Issue 22 §1, without waiting for the dead driver's actors. Driver A is SIGKILLed mid-generate;
    driver B starts at once with other settings and --fresh generate. While B holds the lease, a
    worker of A (the real GeneratorWorker, built from A's job with A's lease epoch, as A's actors
    were) is asked to run a unit: its first commit (the node record, before the shard) is refused
with LeaseLost, so it never writes the shard. A's own orphaned actors,
    if Ray has not reaped them yet, are fenced the same way. At the end every shard carries B's
    settings hash and every unit is there once."""
    import ray

    from mgd_ray.pipeline.generate import attach_targets
    from mgd_ray.pipeline.generator import GeneratorWorker
    from mgd_ray.pipeline.settings import SHARD_KEY
    from mgd_ray.pipeline.workers import TARGET_INDEX_COLUMNS
    from mgd_ray.pipeline.store import LeaseLost, Store
    from mgd_ray.pipeline.units import make_units
    out = tmp_path / "out"
    d = twin_dict(out, tiny_prior, generate={"ipc": 4, "targets_per_unit": 1, "batch_size": 1, "num_actors": 2},
                  sampler={"steps": 25}, guidance={"t_stop": 12}, evaluate={"enabled": False})
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}

    def driver(job: dict, name: str, *args) -> subprocess.Popen:
        f = tmp_path / f"{name}.yaml"
        f.write_text(yaml.safe_dump(job))
        return subprocess.Popen([sys.executable, "-m", "mgd_ray.distill", str(f), *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    shards = out / "shards"
    a = driver(d, "a")
    deadline = time.time() + 600
    while time.time() < deadline and len(list(shards.glob("*.parquet"))) < 3 and a.poll() is None:
        time.sleep(0.1)
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    lease_a = json.loads((out / "_lease.json").read_text())
    hash_a = pq.read_metadata(next(shards.glob("*.parquet"))).metadata[SHARD_KEY.encode()].decode()
    changed = twin_dict(out, tiny_prior, generate={"ipc": 4, "targets_per_unit": 1, "batch_size": 1},
                        sampler={"steps": 25, "cfg_scale": 3.0}, guidance={"t_stop": 12}, evaluate={"enabled": False})
    b = driver(changed, "b", "--fresh", "generate")
    while time.time() < deadline and b.poll() is None:   # until B holds the lease (a higher epoch)
        cur = json.loads((out / "_lease.json").read_text()) if (out / "_lease.json").is_file() else {}
        if cur.get("epoch", 0) > lease_a["epoch"] and not cur.get("released"):
            break
        time.sleep(0.05)
    assert b.poll() is None, "driver B ended before the orphan could try"
    # a worker of A, as A built its actors: A's job with A's epoch, A's settings hash
    job_a = job_from_dict(d, [f"output.lease_epoch={lease_a['epoch']}"])
    units = make_units([0], range(10), [str(i) for i in range(10)], 4, 1)[-1:]   # the last unit: B reaches it last
    attach_targets(units, Store(str(out)).read_table("coreset", "targets.parquet", columns=TARGET_INDEX_COLUMNS))
    orphan = GeneratorWorker(job_a.model_dump(mode="json"), 1, hash_a, class_names=[str(i) for i in range(10)])
    with pytest.raises(LeaseLost):
        orphan.run_units(units)
    assert b.wait(timeout=600) == 0
    want = json.loads((shards / "_SETTINGS.json").read_text())["hash"]
    footers = {f.name: pq.read_metadata(f).metadata[SHARD_KEY.encode()].decode() for f in shards.glob("*.parquet")}
    assert want != hash_a and len(footers) == 40
    assert set(footers.values()) == {want}, "a shard of the killed driver's settings survived"
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    ids = [r["sample_id"] for r in shard_rows(out)]
    assert len(ids) == len(set(ids)) == 40


def test_actor_killed_mid_unit_is_replaced(ray_cluster, tiny_prior, tmp_path):
    out = tmp_path / "out"
    unit = "s000-c00003-t00000"
    spec = f"unit={unit}:after_commits=1:at=commit"    # mid-unit, after the actor committed some shards
    m = run_job(job_from_dict(twin_dict(out, tiny_prior, generate={"fault_inject": spec, "max_retries": 2})), GEN)
    marker = out / "_faults" / f"{unit}.txt"
    fault = json.loads(marker.read_text())             # the actor really died in that unit, mid-unit
    assert fault["unit"] == unit and fault["at"] == "commit" and fault["committed_before"], fault
    for s in fault["committed_before"]:                # its restart did not rewrite what it had committed
        assert (out / "shards" / s).stat().st_mtime_ns <= marker.stat().st_mtime_ns, s
    assert m["counts"]["units_committed"] == 10
    ids = [r["sample_id"] for r in shard_rows(out)]
    assert len(ids) == len(set(ids)) == 20
    assert sum(r["label"] == 3 for r in shard_rows(out)) == 2


def _imagefolder(root: Path, n=6, corrupt=1):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("0", "1"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(d / f"{i}.png")
    for i in range(corrupt):
        (root / "train" / "1" / f"bad{i}.png").write_bytes(b"not a png")


def test_corrupt_images_listed_and_limit(ray_cluster, tiny_prior, tmp_path):
    _imagefolder(tmp_path / "data", corrupt=1)
    data = {"source": "imagefolder", "root": str(tmp_path / "data"), "limit_per_class": None,
            "test_limit_per_class": None, "classes": ["0", "1"]}
    m = run_job(job_from_dict(twin_dict(tmp_path / "ok", tiny_prior, data=data,
                                        encode={"preprocess": "center-crop"})), ["encode"])
    t = pq.read_table(tmp_path / "ok" / "failures.parquet").to_pylist()
    assert len(t) == 1 and t[0]["path"].endswith("bad0.png") and t[0]["split"] == "train"
    assert m["encode"]["rows"] >= 12
    from mgd_ray.data import DataError
    with pytest.raises(DataError, match="max_failures"):
        run_job(job_from_dict(twin_dict(tmp_path / "strict", tiny_prior, data={**data, "max_failures": 0},
                                        encode={"preprocess": "center-crop"})), ["encode"])
    assert (tmp_path / "strict" / "failures.parquet").is_file()


def test_s3_output(ray_cluster, tiny_prior, tmp_path, moto_s3):
    so = moto_s3.storage_options
    bucket = moto_s3.create_bucket("mgd-out")
    url = f"s3://{bucket}/runs/twin"
    m = run_job(job_from_dict(twin_dict(url, tiny_prior, output={"dir": url, "storage_options": so})), GEN)
    assert m["counts"]["units_committed"] == 10
    assert m["encode"]["rows"] == 120 and m["coreset"]["classes_per_task"] == 1666   # the latents' rows, counted
    import s3fs
    fs = s3fs.S3FileSystem(**so)
    files = [f for f in fs.ls(f"{bucket}/runs/twin/shards") if f.endswith(".parquet")]
    assert len(files) == 10
    t = pq.read_table(files[0], filesystem=fs)
    assert t.num_rows == 2 and "image" in t.column_names
    man = json.loads(fs.cat(f"{bucket}/runs/twin/manifest.json"))
    assert man["config"]["output"]["storage_options"].get("secret", "***") == "***"  # never the credential
