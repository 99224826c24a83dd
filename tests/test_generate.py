"""The generate stage (issue 20 items 3-4, issue 23 item 4, issue 22 item 1): a thin actor over a
pure generation pipeline, placement that cannot hang, the coreset engine from Ray's grant, the
same weights everywhere, done-ness by the settings hash in the shard footer, class latents read
once per class, and the real-image methods as Ray tasks over their chosen ids.

The placement test on an autoscaling cluster whose GPU type is capped below generate.num_actors
is in test_autoscaling.py (its own cluster, by PID)."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mgd_ray.config import job_from_dict
from mgd_ray.pipeline.driver import run_job
from mgd_ray.pipeline.settings import SHARD_KEY
from mgd_ray.pipeline.store import Store
from tests.test_pipeline import GEN, shard_rows, twin_dict

pytestmark = [pytest.mark.timeout(900)]
SEEDS = [0, 1, 2]


# ---- pure: no Ray ----------------------------------------------------------------------------
def test_engine_follows_the_grant_not_what_the_process_sees(monkeypatch):
    from mgd_ray.method import coreset as cs
    monkeypatch.setattr(cs, "_faiss_gpu", lambda: True)          # a faiss-gpu build that sees the node's GPU
    assert cs.resolve_engine("auto", gpus=0) == "numpy"           # ... but this task was granted none
    assert cs.resolve_engine("auto", gpus=1) == "faiss"
    assert cs.resolve_engine("auto") == "faiss"                   # outside a scheduler: what the process sees
    assert cs.resolve_engine("numpy", gpus=1) == "numpy" and cs.resolve_engine("faiss", gpus=0) == "faiss"
    monkeypatch.setattr(cs, "_faiss_gpu", lambda: False)
    assert cs.resolve_engine("auto", gpus=1) == "numpy"           # granted a GPU, but faiss-cpu


def test_pad_crop_is_derived_from_preprocess_and_native_size():
    from mgd_ray.pipeline.generation import Crop, pad_crop
    assert pad_crop("pad", 32, (28, 28)) == Crop(2, 2, 28, 28)    # Fashion-MNIST in the prior's 32 x 32
    assert pad_crop("pad", 8, (8, 8)) is None and pad_crop("center-crop", 32, (28, 28)) is None
    imgs = np.arange(2 * 1 * 32 * 32).reshape(2, 1, 32, 32)
    assert np.array_equal(Crop(2, 2, 28, 28)(imgs), imgs[:, :, 2:30, 2:30])


def test_class_latents_read_once_per_class_in_group_order():
    """The units of 3 seeds x 10 classes, in the order group_units gives them: every class is read
    once (the seeds of a class are adjacent). In make_units' seed-major order the same cache
    (4 classes kept) reads every class once per seed."""
    from mgd_ray.pipeline.generator import ClassLatents
    from mgd_ray.pipeline.units import group_units, make_units
    units = make_units(SEEDS, range(10), [str(i) for i in range(10)], ipc=2, per_unit=2)

    def reads(groups):
        cache = ClassLatents(lambda lab: (np.arange(3), np.zeros((3, 4))), keep=4)
        for grp in groups:
            labels = {u.label for u in grp}
            cache.acquire(labels)
            cache.release(labels)
        return dict(cache.reads)

    assert reads(group_units(units, 2)) == {c: 1 for c in range(10)}
    assert reads(group_units(units, 5)) == {c: 1 for c in range(10)}              # groups of several classes
    assert reads([[u] for u in units]) == {c: 3 for c in range(10)}               # seed-major: once per seed
    # a class stays while a group in flight holds it, however many others pass through
    cache = ClassLatents(lambda lab: (np.arange(1), np.zeros((1, 1))), keep=0)
    cache.acquire({0})
    for c in range(1, 6):
        cache.acquire({c})
        cache.release({c})
    cache.acquire({0})
    assert cache.reads[0] == 1 and all(cache.reads[c] == 1 for c in range(1, 6))


def test_real_images_decode_only_the_chosen_ids(monkeypatch):
    from mgd_ray.config import DataConfig
    from mgd_ray.data import open_source
    from mgd_ray.pipeline.generator import real_images
    src = open_source(DataConfig(source="sklearn-digits"))
    full = src.arrays("train")
    loaded = []
    real_load = src._load
    monkeypatch.setattr(src, "_load", lambda split, pos: (loaded.append(len(pos)), real_load(split, pos))[1])
    ids = np.asarray([full["id"][i] for i in (500, 3, 1200, 41)])
    imgs = real_images(src, ids)
    assert loaded == [4]                                           # 4 images decoded, not a class
    pos = {int(i): k for k, i in enumerate(full["id"])}
    assert np.array_equal(imgs, np.stack([full["image"][pos[int(i)]] for i in ids]))


def test_generation_pipeline_is_pure_and_batch_independent():
    """The pipeline a notebook calls: models + labels + seeds + targets -> uint8; the DiT batch
    size changes no pixel; a crop cuts the decoded image."""
    import torch

    from mgd_ray.method import GuidanceParams
    from mgd_ray.models import describe, tiny_models
    from mgd_ray.pipeline.generation import Crop, GenerationPipeline, SamplerSpec
    torch.manual_seed(0)
    dit, vae = tiny_models(num_classes=10, image_channels=1, image_size=8)
    info = describe(dit, vae)
    spec = SamplerSpec(steps=3, cfg_scale=2.0, variance_type="learned_range")
    params = GuidanceParams(lam_mode=0.1, manifold_scale=0.0, t_stop=0, warm=0)
    rng = np.random.default_rng(0)
    labels, seeds = [1, 2, 3], [11, 12, 13]
    targets = rng.normal(size=(3, info.latent_dim)).astype(np.float32)
    one = GenerationPipeline(dit, vae, info, sampler=spec, guidance=params, batch_size=1)(labels, seeds, targets)
    three = GenerationPipeline(dit, vae, info, sampler=spec, guidance=params, batch_size=3)(labels, seeds, targets)
    assert one.dtype == np.uint8 and one.shape == (3, 8, 8, 1)
    assert np.abs(one.astype(int) - three.astype(int)).max() <= 1
    plain = GenerationPipeline(dit, vae, info, sampler=spec, batch_size=3)(labels, seeds)
    assert not np.array_equal(plain, three)                        # the targets pull the images
    cut = GenerationPipeline(dit, vae, info, sampler=spec, batch_size=3, crop=Crop(1, 2, 6, 5))(labels, seeds)
    assert cut.shape == (3, 6, 5, 1) and np.array_equal(cut, plain[:, 1:7, 2:7])


# ---- on the session's local Ray ---------------------------------------------------------------
@pytest.fixture(scope="module")
def base(ray_cluster, tiny_prior, tmp_path_factory) -> tuple[Path, dict]:
    """Encode + coreset + generate of the twin with 3 generation seeds on one actor."""
    out = tmp_path_factory.mktemp("gen") / "out"
    d = twin_dict(out, tiny_prior, evaluate={"enabled": False}, generate={"seeds": SEEDS, "batch_size": 2})
    m = run_job(job_from_dict(d), GEN)
    assert m["counts"]["units_committed"] == 30, m
    return out, d


def test_actor_reads_each_class_latents_once(base):
    """3 seeds x 10 classes on one actor: 10 class reads, not 30 (units ordered class by class)."""
    out, _ = base
    gen = json.loads((out / "manifest.json").read_text())["generate"]
    assert gen["latent_reads"] == 10 and gen["classes_read"] == 10, gen
    assert gen["actors"]["asked"] == 1 and gen["actors"]["started"] == 1


def _units_for(job, out):
    from mgd_ray.data import open_source
    from mgd_ray.pipeline.generate import attach_targets
    from mgd_ray.pipeline.units import make_units
    src = open_source(job.data)
    units = make_units(job.generate.seeds, range(10), src.classes.names, job.generate.ipc, job.generate.targets_per_unit)
    attach_targets(units, pq.read_table(out / "coreset" / "targets.parquet", columns=["gen_seed", "label", "index"]))
    return src, units


def _job_on_base(base, tmp_path, **sections):
    """A job on a copy of the base run's latents and coreset (``sections`` override the base's)."""
    src_out, d = base
    out = tmp_path / "out"
    for sub in ("latents", "coreset"):
        shutil.copytree(src_out / sub, out / sub)
    job = job_from_dict({**d, "output": {"dir": str(out)}, **sections})
    return (job, out, *_units_for(job, out))


def _settings_hash(out: Path) -> str:
    return json.loads((out / "shards" / "_SETTINGS.json").read_text())["hash"]


def test_done_by_settings_hash_not_by_name(base, tmp_path):
    """A shard under the right name but without this job's hash in its footer is not done: the
    todo list and the actor's own skip check both regenerate it; shards with the hash are kept."""
    from mgd_ray.models import load_generator
    from mgd_ray.pipeline.generate import run_generate
    from mgd_ray.pipeline.generator import GeneratorWorker
    from mgd_ray.pipeline.settings import shard_committed
    src_out, d = base
    out = tmp_path / "out"
    shutil.copytree(src_out, out)
    job = job_from_dict({**d, "output": {"dir": str(out)}})
    store, want = Store(str(out)), _settings_hash(src_out)
    src, units = _units_for(job, out)
    stale, kept = units[4], units[5]
    t = pq.read_table(out / "shards" / stale.shard)
    good_bytes = t.column("image").to_pylist()
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, SHARD_KEY.encode(): b"0123456789abcdef"}),
                   out / "shards" / stale.shard)
    assert not shard_committed(store, stale.shard, want) and shard_committed(store, kept.shard, want)
    kept_mtime = (out / "shards" / kept.shard).stat().st_mtime_ns

    info = load_generator(job.model.generator)[2]
    r = run_generate(job, store, units, want, source=src, info=info)
    assert r["ran"] == 1 and r["images"] == stale.count and r["failed"] == 0
    assert shard_committed(store, stale.shard, want)
    assert pq.read_table(out / "shards" / stale.shard).column("image").to_pylist() == good_bytes   # same bytes again
    assert (out / "shards" / kept.shard).stat().st_mtime_ns == kept_mtime

    # the actor's skip check (in-process, no actor): the wrong-hash shard is made again, the other skipped
    pq.write_table(t.replace_schema_metadata({b"x": b"y"}), out / "shards" / stale.shard)
    from mgd_ray.pipeline.generate import generation_inputs
    w = GeneratorWorker(job.model_dump(mode="json"), 1, want, **generation_inputs(job, src, info))
    res = w.run_units([stale, kept])
    assert res["skipped"] == 1 and res["images"] == stale.count and shard_committed(store, stale.shard, want)


def test_weights_mismatch_refuses_naming_node_and_hashes(base, tmp_path):
    from mgd_ray.models import load_generator
    from mgd_ray.pipeline.generate import run_generate
    from mgd_ray.pipeline.generator import WeightsMismatch
    job, out, src, units = _job_on_base(base, tmp_path)
    info = load_generator(job.model.generator)[2]
    driver_saw = dataclasses.replace(info, transformer_sha256="00000000deadbeef")
    with pytest.raises(WeightsMismatch) as e:
        run_generate(job, Store(str(out)), units, "h", source=src, info=driver_saw)
    msg = str(e.value)
    assert "node " in msg and "host " in msg and "expected sha256 00000000deadbeef" in msg
    assert f"found {info.transformer_sha256}" in msg and "vae" not in msg.split("(")[1].split(";")[0]
    assert not (out / "shards").exists() or not list((out / "shards").glob("*.parquet"))   # nothing generated


def test_no_actor_can_start_fails_naming_the_ask(base, tmp_path):
    """Every actor asks for a GPU the local cluster does not have: after start_timeout_s the stage
    fails saying what it asked for and what the cluster has, and leaves no actor behind."""
    import time

    import ray

    from mgd_ray.models import load_generator
    from mgd_ray.pipeline.generate import PlacementError, run_generate
    job, out, src, units = _job_on_base(base, tmp_path, generate={**base[1]["generate"], "num_gpus": 1,
                                                                   "num_actors": 2, "start_timeout_s": 3})
    t0 = time.time()
    with pytest.raises(PlacementError) as e:
        run_generate(job, Store(str(out)), units, "h", source=src, info=load_generator(job.model.generator)[2])
    assert time.time() - t0 < 60
    msg = str(e.value)
    assert "within 3s" in msg and "0.5 CPU + 1 GPU" in msg and "'CPU': 4.0" in msg and "in total" in msg

    def alive():
        return [a for a in ray._private.state.actors().values()
                if a.get("ActorClassName", "").endswith("GeneratorWorker")
                and a.get("State") in ("ALIVE", "PENDING_CREATION", "RESTARTING")]
    deadline = time.time() + 30
    while alive() and time.time() < deadline:
        time.sleep(0.5)
    assert not alive()


def test_real_image_method_runs_as_tasks_over_chosen_ids(base, tmp_path):
    """random-real: no generator actor, no model; each image is the source image its target chose."""
    import ray

    from mgd_ray.data import open_source
    src_out, d = base
    out = tmp_path / "out"
    shutil.copytree(src_out / "latents", out / "latents")
    job = job_from_dict({**d, "method": "random-real", "output": {"dir": str(out)}})
    before = {a["ActorID"] for a in ray._private.state.actors().values()}
    m = run_job(job, GEN)
    new = [a for a in ray._private.state.actors().values() if a["ActorID"] not in before]
    assert not [a for a in new if a.get("ActorClassName", "").endswith("GeneratorWorker")], new
    assert m["counts"]["units_committed"] == 30 and m["generate"]["dit_calls"] == 0 and m["generate"]["tasks"] >= 1
    targets = {r["target_id"]: r["source_id"] for r in
               pq.read_table(out / "coreset" / "targets.parquet", columns=["target_id", "source_id"]).to_pylist()}
    full = open_source(job.data).arrays("train")
    pos = {int(i): k for k, i in enumerate(full["id"])}
    from mgd_ray.pipeline.units import decode_png
    rows = shard_rows(out)
    assert len(rows) == 60 and len({r["sample_id"] for r in rows}) == 60
    for r in rows:
        want = full["image"][pos[targets[r["target_id"]]]]
        assert np.array_equal(decode_png(r["image"]), want if want.ndim == 3 else want[:, :, None])
    assert {r["class_name"] for r in rows} == {str(i) for i in range(10)}


def test_coreset_task_engine_from_grant(base, tmp_path, monkeypatch):
    """A real coreset task granted no GPU, on a process whose environment names a GPU
    (CUDA_VISIBLE_DEVICES=0, as on a GPU node): numpy, and CUDA_VISIBLE_DEVICES empty while it
    runs. A faiss-gpu stand-in reports a GPU whenever CUDA_VISIBLE_DEVICES names one."""
    import ray

    src_out, d = base
    out = tmp_path / "out"
    shutil.copytree(src_out / "latents", out / "latents")
    jd = job_from_dict({**d, "output": {"dir": str(out)}}).model_dump(mode="json")

    def probe(jd):
        import mgd_ray.method.coreset as cs
        import mgd_ray.pipeline.workers as st
        from mgd_ray.pipeline.runner import _coreset_task
        cs._faiss_gpu = lambda: bool(os.environ.get("CUDA_VISIBLE_DEVICES"))    # faiss-gpu, as a process sees it
        seen, build = [], st.build_class_targets

        def spy(*a, **k):
            seen.append((os.environ.get("CUDA_VISIBLE_DEVICES"), cs._faiss_gpu(), k.get("engine")))
            return build(*a, **k)
        st.build_class_targets = spy
        try:
            before = (os.environ.get("CUDA_VISIBLE_DEVICES"), cs.resolve_engine("auto"))
            rec = _coreset_task(jd, [0, 1], [0], 1)
            return before, seen, rec, os.environ.get("CUDA_VISIBLE_DEVICES")
        finally:
            st.build_class_targets = build

    task = ray.remote(probe).options(num_cpus=0.5, num_gpus=0,
                                     runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": "0"}})
    before, seen, rec, after = ray.get(task.remote(jd))
    assert before == ("0", "faiss")                     # the process "sees" a GPU: the old rule picked faiss
    assert seen and all(s == ("", False, "numpy") for s in seen), seen
    assert rec["engine"] == "numpy" and rec["targets"] == 4
    assert after == "0"                                  # restored for whatever runs next in the worker
    assert (out / "coreset" / "parts" / "c00000-s000.parquet").is_file()


def test_next_group_reads_while_the_current_one_generates(base, tmp_path, monkeypatch):
    """Two calls in flight on one worker (the actor runs with max_concurrency=PER_ACTOR): the
    second group reads its targets and class latents while the first is generating, and the
    generations themselves never overlap (one GPU). CPU proxies: reads and generation sleep."""
    import threading
    import time

    import mgd_ray.pipeline.generator as gm
    from mgd_ray.models import load_generator
    from mgd_ray.pipeline.generate import PER_ACTOR, generation_inputs
    job, out, src, units = _job_on_base(base, tmp_path)
    w = gm.GeneratorWorker(job.model_dump(mode="json"), 1, "h",
                           **generation_inputs(job, src, load_generator(job.model.generator)[2]))
    spans = {"read": [], "gen": []}
    real_read, real_pipe = gm.read_targets, w.pipeline

    def slow_read(*a, **k):
        t = time.monotonic()
        time.sleep(0.6)
        r = real_read(*a, **k)
        spans["read"].append((t, time.monotonic()))
        return r

    class SlowPipe:
        def __getattr__(self, name):
            return getattr(real_pipe, name)

        def __call__(self, *a, **k):
            t = time.monotonic()
            time.sleep(1.0)
            r = real_pipe(*a, **k)
            spans["gen"].append((t, time.monotonic()))
            return r

    monkeypatch.setattr(gm, "read_targets", slow_read)
    w.pipeline = SlowPipe()
    assert PER_ACTOR == 2
    first = threading.Thread(target=w.run_units, args=([units[0]],))
    first.start()
    time.sleep(0.8)                                    # the first group is generating now
    w.run_units([units[1]])
    first.join()
    (g1, g2), (_, r2) = sorted(spans["gen"]), sorted(spans["read"])
    assert r2[0] < g1[1], (spans, "the second group's read started only after the first generation")
    assert g2[0] >= g1[1] - 1e-3, "two generations ran at once"
    assert all((out / "shards" / u.shard).is_file() for u in units[:2])
