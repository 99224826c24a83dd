"""Pure pipeline pieces: unit naming, shard schema, atomic store writes, redaction, plan."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from mgd_ray.config import job_from_dict
from mgd_ray.pipeline.store import Store, redact
from mgd_ray.pipeline.units import decode_png, make_units, png_bytes, sample_id, shard_table, to_uint8


def test_units_cover_every_target_once_with_stable_names():
    units = make_units([0, 1], range(3), ["a", "b", "c"], ipc=5, per_unit=2)
    assert len(units) == 2 * 3 * 3
    seen = [(u.gen_seed, u.label, j) for u in units for j in range(u.start, u.start + u.count)]
    assert len(seen) == len(set(seen)) == 2 * 3 * 5
    assert units[0].shard == "s000-c00000-t00000.parquet" and units[2].name == "s000-c00000-t00004"
    assert len({u.shard for u in units}) == len(units)
    assert make_units([0], range(2), ["x", "y"], 2, 2, gen_labels=[7, 9])[1].model_label == 9


def test_png_roundtrip_and_uint8():
    x = np.linspace(-1, 1, 2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    u = to_uint8(x)
    assert u.shape == (2, 4, 4, 1) and u.min() == 0 and u.max() == 255
    assert np.array_equal(decode_png(png_bytes(u[1])), u[1])
    assert png_bytes(u[0]) == png_bytes(u[0].copy())  # deterministic bytes
    rgb = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(png_bytes(rgb)), rgb)


def test_shard_table_schema(tmp_path):
    rows = [dict(sample_id=sample_id(0, 1, j), label=1, class_name="b", target_id="t", seed=2**62 + j, gen_seed=0,
                 method="manifoldgd", image=b"png", height=8, width=8, channels=1) for j in range(3)]
    st = Store(str(tmp_path))
    st.write_table(shard_table(rows, ["a", "b"]), "shards", "x.parquet")
    t = pq.read_table(tmp_path / "shards" / "x.parquet")
    assert t.schema.field("seed").type == "int64" and t.schema.field("label").type == "int64"
    assert t.column("image").to_pylist()[0] == {"bytes": b"png", "path": None}
    assert t.column("sample_id").to_pylist() == ["s0-c1-i0", "s0-c1-i1", "s0-c1-i2"]


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    st = Store(str(tmp_path))
    st.write_bytes(b"old", "a.bin")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        st.write_bytes(b"new", "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"old"  # the committed file is intact
    assert st.ls(suffix=".bin") == ["a.bin"]            # temp files are never listed


def test_redact_credentials():
    cfg = {"output": {"storage_options": {"key": "AKIA", "secret": "s3cr3t", "endpoint_url": "http://x"}},
           "data": {"root": "s3://b", "storage_options": {"token": "t"}}}
    r = redact(cfg)
    assert r["output"]["storage_options"] == {"key": "***", "secret": "***", "endpoint_url": "http://x"}
    assert r["data"]["storage_options"]["token"] == "***" and r["data"]["root"] == "s3://b"
    assert "s3cr3t" not in str(r)


def test_dry_run_plan_digits(tiny_prior):
    from mgd_ray.pipeline.plan import dry_run_plan
    job = job_from_dict({"data": {"source": "sklearn-digits", "limit_per_class": 12},
                         "model": {"generator": str(tiny_prior)}, "sampler": {"steps": 4, "cfg_scale": 2.0}, "guidance": {"t_stop": 1},
                         "generate": {"ipc": 3, "seeds": [0, 1], "targets_per_unit": 2}})
    p = dry_run_plan(job, ["encode", "coreset", "generate", "evaluate"])
    assert p["classes"] == 10 and p["images_to_encode"] == 120
    assert p["images_to_generate"] == 60 and p["work_units"] == 2 * 10 * 2
    assert p["dit_forward_passes"] == 60 * 4 * 2
    # 40 units of 2 + 1 targets packed into DiT batches of at most 16 images (the default): 4 x 15
    assert p["dit_batches_per_step"] == 4 and p["dit_forward_batched_calls"] == 4 * 4
    assert p["dit_batch_images"] == {"min": 15, "max": 15, "mean": 15.0}
    st = p["estimate"]["stages"]                 # the estimate ran (a failed one has no stages)
    assert st["generate_dit"]["forward_passes"] == 480 and st["generate_dit"]["seconds_per_forward_per_image"] > 0
    assert p["estimate"]["total_device_hours"] == pytest.approx(
        sum(s.get("device_hours", 0) for s in st.values()), abs=0.01)


def test_arrays_at_reads_only_the_chosen_rows():
    from mgd_ray.data import open_source
    from mgd_ray.pipeline.evaluate import random_real_subset
    src = open_source({"source": "sklearn-digits"})
    full = src.arrays("train")
    idx = random_real_subset(full["label"], 3, seed=1)
    sub = src.arrays_at("train", idx)
    assert len(idx) == 30 and np.array_equal(sub["id"], full["id"][idx])
    assert np.array_equal(sub["image"], full["image"][idx]) and np.bincount(sub["label"]).tolist() == [3] * 10
    assert not np.array_equal(idx, random_real_subset(full["label"], 3, seed=2))


def test_relative_output_dir_becomes_absolute(tmp_path, monkeypatch):
    from mgd_ray.distill import absolute_output
    monkeypatch.chdir(tmp_path)
    j = absolute_output(job_from_dict({"output": {"dir": "out/digits"}}))
    assert j.output.dir == str(tmp_path / "out" / "digits")
    assert absolute_output(job_from_dict({"output": {"dir": "s3://b/p"}})).output.dir == "s3://b/p"


def test_real_features_are_cached_beside_the_latents(tmp_path):
    from pathlib import Path

    import mgd_ray
    from mgd_ray.data import open_source
    from mgd_ray.eval.classifier import load_classifier
    from mgd_ray.pipeline.metrics import _real_features
    d = Path(mgd_ray.__file__).parent / "priors" / "digits" / "classifier"
    clf, store = load_classifier(d), Store(str(tmp_path))
    source = open_source(job_from_dict({"data": {"limit_per_class": 3}}).data)
    f = _real_features(store, d, clf, source)
    cached = list((tmp_path / "latents").glob("_real_features_*.npy"))
    assert f.shape[0] == 30 and len(cached) == 1
    np.save(cached[0], np.full_like(f, 7.0))          # the second call must read the file, not recompute
    assert (_real_features(store, d, clf, source) == 7.0).all()


def test_log_lines_follow_the_current_stdout(monkeypatch):
    import io
    import logging
    import sys

    from mgd_ray.distill import setup_logging
    setup_logging()
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    logging.getLogger("mgd_ray").info("hello from the test")
    assert "hello from the test" in buf.getvalue()


def test_units_of_several_classes_share_a_dit_batch():
    from mgd_ray.pipeline.units import dit_batch_sizes, group_units, make_units
    units = make_units([0], range(10), [str(i) for i in range(10)], ipc=10, per_unit=10)
    groups = group_units(units, 64)
    assert [len(g) for g in groups] == [6, 4]                 # 60 + 40 images, classes mixed
    assert dit_batch_sizes(units, 64) == [60, 40]
    # a unit bigger than a batch is its own group, cut into batches; the last slice of a class is smaller
    units = make_units([0, 1], range(2), ["a", "b"], ipc=5, per_unit=3)   # counts 3, 2 per class
    assert [[u.count for u in g] for g in group_units(units, 4)] == [[3], [2], [3], [2], [3], [2], [3], [2]]
    assert [[u.count for u in g] for g in group_units(units, 5)] == [[3, 2], [3, 2], [3, 2], [3, 2]]
    assert dit_batch_sizes(units, 2) == [2, 1, 2] * 4
    assert sum(dit_batch_sizes(units, 7)) == sum(u.count for u in units) == 20
