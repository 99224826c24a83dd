"""The evaluation's real test split: decoded once per job by a Ray Data pipeline, cached as Parquet
under output.dir (``eval/_testset/``), keyed by what shapes it, reused by reruns, equal to the
one-task decode it replaces, discarded with ``--fresh evaluate``."""

import io

import numpy as np
import pytest

from mgd_ray.config import job_from_dict
from mgd_ray.data import open_source
from mgd_ray.pipeline.store import Store
from mgd_ray.pipeline import testset as ts
from mgd_ray.pipeline.testset import COMPLETE, prepare_testset, read_testset

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root, per_class=6, classes=("a", "b", "c"), corrupt=0):
    """An imagefolder of RGB PNGs of different sizes (so the resize/crop matters)."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                h, w = 10 + (i % 3) * 3, 9 + (i % 4) * 4
                (d / f"{i:03d}.png").write_bytes(_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
            for i in range(corrupt if split == "test" and k == 0 else 0):
                (d / f"bad{i}.png").write_bytes(b"not a png")
    return root


def _job(out, root, size, **data):
    return job_from_dict({"data": {"source": "imagefolder", "root": str(root), **data},
                          "evaluate": {"image_size": size}, "output": {"dir": str(out)}})


def _direct(job):
    """Today's one-task decode (runner._load_eval_set of the whole test split)."""
    from mgd_ray.pipeline.runner import _load_eval_set
    return _load_eval_set(job.model_dump(mode="json"), "test", None, job.evaluate.image_size)


def _cache_files(out):
    base = out / "eval" / "_testset"
    return {str(p.relative_to(base)): p.stat().st_mtime_ns for p in base.rglob("*") if p.is_file()}


def test_cache_written_once_keyed_and_equal_to_direct_decode(ray_cluster, tmp_path):
    root = _folder(tmp_path / "imgs", per_class=7)
    out = tmp_path / "out"
    store = Store(str(out))
    job8 = _job(out, root, 8, test_limit_per_class=5)
    src = open_source(job8.data)

    first = prepare_testset(job8, store, src)
    assert not first["reused"] and first["rows"] == 15 and first["shape"] == [8, 8, 3]
    assert (out / "eval" / "_testset" / first["name"] / COMPLETE).is_file()
    imgs, labels = read_testset(store, first["name"])
    ref_imgs, ref_labels = _direct(job8)
    assert imgs.dtype == np.uint8 and imgs.shape == (15, 8, 8, 3)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(imgs, ref_imgs)                 # same pixels as the one-task decode

    # rerun (a new source object, as a new driver would open): reused, nothing rewritten
    before = _cache_files(out)
    again = prepare_testset(job8, store, open_source(job8.data))
    assert again["reused"] and again["name"] == first["name"] and _cache_files(out) == before
    np.testing.assert_array_equal(read_testset(store, again["name"])[0], imgs)

    # another image size -> another key, another cache of that size; the old one is gone
    job12 = _job(out, root, 12, test_limit_per_class=5)
    other = prepare_testset(job12, store, open_source(job12.data))
    assert not other["reused"] and other["name"] != first["name"] and other["shape"] == [12, 12, 3]
    assert not (out / "eval" / "_testset" / first["name"]).exists()
    imgs12, _ = read_testset(store, other["name"])
    np.testing.assert_array_equal(imgs12, _direct(job12)[0])

    # the key follows what shapes the pixels (limit, classes, files), not the output dir
    key = ts.testset_key(job12, open_source(job12.data))
    assert ts.testset_name(key) == other["name"]
    for changed in (_job(out, root, 12, test_limit_per_class=4), _job(out, root, 12, classes=["a", "c"],
                                                                       test_limit_per_class=5)):
        assert ts.testset_name(ts.testset_key(changed, open_source(changed.data))) != other["name"]
    (root / "test" / "b" / "000.png").write_bytes(_png(np.zeros((11, 11, 3), np.uint8)))   # a file rewritten
    assert ts.testset_name(ts.testset_key(job12, open_source(job12.data))) != other["name"]

    # --fresh evaluate discards it with eval/
    from mgd_ray.pipeline.stage import EVALUATE
    EVALUATE.discard(store)
    assert not (out / "eval" / "_testset").exists()


def test_in_memory_source_native_and_resized(ray_cluster, tmp_path):
    out = tmp_path / "out"
    store = Store(str(out))
    for size in (None, 6):
        job = job_from_dict({"data": {"source": "sklearn-digits", "test_limit_per_class": 9},
                             "evaluate": {"image_size": size}, "output": {"dir": str(out)}})
        rec = prepare_testset(job, store, open_source(job.data))
        imgs, labels = read_testset(store, rec["name"])
        ref_imgs, ref_labels = _direct(job)
        assert imgs.shape == (90, size or 8, size or 8, 1)
        np.testing.assert_array_equal(labels, ref_labels)
        np.testing.assert_array_equal(imgs, ref_imgs)


def test_unreadable_test_images_skipped_and_bounded(ray_cluster, tmp_path):
    from mgd_ray.data import DataError
    root = _folder(tmp_path / "imgs", per_class=3, corrupt=2)
    out = tmp_path / "out"
    job = _job(out, root, 8, max_failures=2)
    rec = prepare_testset(job, Store(str(out)), open_source(job.data))
    assert rec["rows"] == 9 and rec["failures"] == 2 and all("bad" in f[0] for f in rec["failed"])
    assert not [p for p in (out / "eval" / "_testset").iterdir() if "failures" in p.name]
    strict = _job(tmp_path / "out2", root, 8, max_failures=1)
    with pytest.raises(DataError, match="max_failures"):
        prepare_testset(strict, Store(str(tmp_path / "out2")), open_source(strict.data))
    assert not (tmp_path / "out2" / "eval" / "_testset").exists() or not any(
        (p / COMPLETE).exists() for p in (tmp_path / "out2" / "eval" / "_testset").iterdir())
    assert ts.DIR == ("eval", "_testset")


def test_cache_on_s3_output(ray_cluster, tmp_path, moto_s3):
    """output.dir on S3 (moto's server on loopback): the Ray Data write and the read-back go through the
    store's filesystem; the marker is the commit."""
    bucket = moto_s3.create_bucket("mgd-testset")
    url = f"s3://{bucket}/runs/t"
    job = job_from_dict({"data": {"source": "sklearn-digits", "test_limit_per_class": 4},
                         "evaluate": {"image_size": 6},
                         "output": {"dir": url, "storage_options": moto_s3.storage_options}})
    store = Store(url, moto_s3.storage_options)
    rec = prepare_testset(job, store, open_source(job.data))
    assert not rec["reused"] and store.exists(*ts.DIR, rec["name"], COMPLETE)
    imgs, labels = read_testset(store, rec["name"])
    ref_imgs, ref_labels = _direct(job)
    np.testing.assert_array_equal(imgs, ref_imgs)
    np.testing.assert_array_equal(labels, ref_labels)
    assert prepare_testset(job, store, open_source(job.data))["reused"]
