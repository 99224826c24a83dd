"""Evaluation data path (issue "Launch-ready", item 4): what holding pixels as uint8 and decoding the
real test split once per job (Ray Data, cached under output.dir) save, measured.

    python -m benchmarks.eval_data [--images 6000] [--png-size 48] [--eval-size 32] [--runs 3]

1. Test-split preparation, seconds until the Train workers could map it (an ObjectRef in the
   object store, ``ray.get`` done), on
   - an imagefolder of ``--images`` random RGB PNGs (``--png-size`` px, 10 classes) generated in a
     temp dir, fitted to ``--eval-size`` (resize + centre crop), and
   - the Fashion-MNIST test split (10,000 images) at /usr/share/datasets/fashion-mnist, if present;
   three ways: ``one task`` (the runner's way before: ``_load_eval_set`` decodes the whole split in one
   Ray task), ``Ray Data, first run`` (``prepare_testset``: parallel decode + Parquet write under
   output.dir, then the read-back task) and ``cached`` (a rerun: the committed cache read back).
   Each is run ``--runs`` times, interleaved; the table gives the fastest and the median.
2. Host memory of the sets a trial holds, float32 (the way before: ``to_float_images`` of the
   student's train set) vs uint8 (now): bytes of the held tensors, and the RSS growth of holding them.
3. Training seconds per epoch (ConvNet-3, 1 thread, Fashion-MNIST IPC 50 train set) given a float32
   train set vs the uint8 one, and the seconds of one evaluation pass, uint8 vs float32 test set.

On this box (CPU) the training device is the host, so there the only memory change is the train
set's; on a GPU both sets now sit on the device as uint8 and each batch is made float there.
Writes ``benchmarks/reports/eval_data.{json,md}``.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import machine, md_table, write_report

FASHION = "/usr/share/datasets/fashion-mnist"


def make_imagefolder(root: Path, n: int, px: int, classes: int = 10, seed: int = 0) -> Path:
    """``n`` test images (and a few train ones: the source lists train for its classes) as PNGs."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, count in (("train", classes), ("test", n)):
        for i in range(count):
            d = root / split / f"c{i % classes}"
            d.mkdir(parents=True, exist_ok=True)
            # smooth-ish content (not pure noise: PNG sizes closer to real images)
            base = rng.integers(0, 256, (px // 4, px // 4, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(base).resize((px, px + 8), Image.BILINEAR))
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            (d / f"{i:06d}.png").write_bytes(buf.getvalue())
    return root


def time_prep(job, runs: int, small_blocks: bool = True) -> list[dict]:
    """The ways of making the test split ready, ``runs`` times each, interleaved. ``small_blocks``: also
    the Ray Data pipeline cut as the encode read path cuts it (256-row blocks, 0.25-CPU tasks)."""
    import ray

    from mgd_ray.data import open_source
    from mgd_ray.pipeline.runner import _load_eval_set
    from mgd_ray.pipeline.store import Store
    from mgd_ray.pipeline.testset import DIR, load_testset, prepare_testset

    jd = job.model_dump(mode="json")
    store = Store(job.output.dir)
    one = ray.remote(_load_eval_set).options(num_cpus=0.5)        # the runner's options (cpus_per_worker 0.5)
    load = ray.remote(load_testset).options(num_cpus=0.5)
    from mgd_ray.pipeline import testset as ts
    times: dict[str, list[float]] = {"one task": [], "Ray Data, first run": [], "cached": []}
    shipped = (ts.ROWS_PER_TASK, ts.NUM_CPUS, ts.BATCH)
    if small_blocks:
        times["Ray Data, 256-row blocks of 0.25 CPU"] = []
    shapes = {}
    for _ in range(runs):
        t0 = time.perf_counter()
        imgs, labels = ray.get(one.remote(jd, "test", None, job.evaluate.image_size))
        times["one task"].append(time.perf_counter() - t0)
        shapes["one task"] = imgs.shape
        ref = (imgs, labels)

        store.rm(*DIR)                                                  # a job's first evaluation
        t0 = time.perf_counter()
        rec = prepare_testset(job, store, open_source(job.data))        # the driver opens its source
        imgs, labels = ray.get(load.remote(jd, rec["name"]))
        times["Ray Data, first run"].append(time.perf_counter() - t0)
        assert not rec["reused"] and np.array_equal(imgs, ref[0]) and np.array_equal(labels, ref[1])

        t0 = time.perf_counter()
        rec = prepare_testset(job, store, open_source(job.data))
        imgs, labels = ray.get(load.remote(jd, rec["name"]))
        times["cached"].append(time.perf_counter() - t0)
        assert rec["reused"] and np.array_equal(imgs, ref[0])
        shapes["cache"] = imgs.shape
        if small_blocks:
            store.rm(*DIR)
            ts.ROWS_PER_TASK, ts.NUM_CPUS, ts.BATCH = 256, 0.25, 64
            try:
                t0 = time.perf_counter()
                rec = prepare_testset(job, store, open_source(job.data))
                imgs, labels = ray.get(load.remote(jd, rec["name"]))
                times["Ray Data, 256-row blocks of 0.25 CPU"].append(time.perf_counter() - t0)
            finally:
                ts.ROWS_PER_TASK, ts.NUM_CPUS, ts.BATCH = shipped
            assert np.array_equal(imgs, ref[0])
        del imgs, labels, ref
    base = min(times["one task"])
    return [{"way": k, "images": int(shapes["one task"][0]), "shape": "x".join(map(str, shapes["one task"][1:])),
             "fastest_s": round(min(v), 3), "median_s": round(statistics.median(v), 3),
             "vs_one_task": round(base / min(v), 2), "all_s": [round(x, 3) for x in v]} for k, v in times.items()]


_MEM_CHILD = r"""
import json, sys
import numpy as np
from benchmarks import current_rss_mb
arr = np.load(sys.argv[1])                        # the uint8 set as a trial has it (decoded / mapped)
import torch
from mgd_ray.eval.train import to_float_images
from mgd_ray.pipeline.evaluate import _uint8_tensor
r0 = current_rss_mb()
t = to_float_images(arr) if sys.argv[2] == "float32" else _uint8_tensor(arr)
print(json.dumps({"rss_growth_MB": current_rss_mb() - r0, "bytes": t.element_size() * t.nelement(),
                  "shape": list(t.shape)}))
"""


def held_memory(train_u8: np.ndarray, test_u8: np.ndarray, tmp: Path) -> list[dict]:
    """What a trial holds beside the uint8 arrays it was given, the way before (a float32 copy) vs now
    (a view): bytes of the held tensor, and the RSS growth of making it, each in a fresh process."""
    import subprocess
    import sys

    from benchmarks import REPO
    rows = []
    sets = (("train set (IPC 50, 10 classes)", train_u8, "float32 (before this change)"),
            ("test set", test_u8, "float32 (an earlier version; uint8 already before this change)"))
    for what, arr, before in sets:
        path = tmp / f"{len(arr)}.npy"
        np.save(path, np.ascontiguousarray(arr))
        for form, label in (("float32", before), ("uint8", "uint8 (now)")):
            out = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(path), form], cwd=REPO, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            r = __import__("json").loads(out)
            rows.append({"set": what, "held as": label, "shape": "x".join(map(str, r["shape"])),
                         "MB": round(r["bytes"] / 2**20, 2), "rss_growth_MB": round(r["rss_growth_MB"], 1)})
    # the shapes the pipeline is for, by arithmetic (bytes = N x H x W x C x bytes per value)
    for what, n, px, c in (("ImageNet val (50,000 at 224 px)", 50000, 224, 3),
                           ("ImageNet-1K train set, IPC 50 (50,000 at 224 px)", 50000, 224, 3),
                           ("ImageNet-1K train set, IPC 10", 10000, 224, 3)):
        for form, b in (("float32", 4), ("uint8", 1)):
            rows.append({"set": what, "held as": form, "shape": f"{n}x{px}x{px}x{c}",
                         "MB": round(n * px * px * c * b / 2**20, 1), "rss_growth_MB": "computed"})
    return rows


def epoch_times(train_u8, train_y, test_u8, test_y, epochs: int, runs: int, eval_images: int) -> list[dict]:
    """Training seconds per epoch (no evaluation inside: ``images_per_s`` counts the training batches
    only) given the train set as float32 (before) or uint8 (now); and the seconds of one evaluation of
    ``eval_images`` test images given as uint8 (now, and before on a CPU) or float32 up front."""
    import torch

    from mgd_ray.eval.train import TrainConfig, evaluate, to_float_images, train_and_evaluate
    from mgd_ray.eval.students import build_student
    from mgd_ray.pipeline.evaluate import _uint8_tensor

    torch.set_num_threads(1)
    xt, yt = _uint8_tensor(test_u8[:64]), torch.as_tensor(test_y[:64]).long()     # the one final eval: small
    ytr = torch.as_tensor(train_y).long()
    cfg = TrainConfig(student="convnet3", epochs=epochs, n_evals=1, seed=0, num_threads=1, flip=False)
    ways = {"train: float32 set (before)": lambda: to_float_images(train_u8),
            "train: uint8 set (now)": lambda: _uint8_tensor(train_u8)}
    out: dict[str, list[float]] = {k: [] for k in ways}
    hist = {}
    for _ in range(runs):
        for k, make in ways.items():
            r = train_and_evaluate(make(), ytr, xt, yt, 10, cfg)
            out[k].append(len(train_u8) / r["images_per_s"])
            hist[k] = r["history"]
    assert len(set(map(str, hist.values()))) == 1, hist          # the same run either way
    rows = [{"what": k, "images": len(train_u8), "fastest_s": round(min(v), 3),
             "median_s": round(statistics.median(v), 3)} for k, v in out.items()]
    model = build_student("convnet3", test_u8.shape[-1], 10, test_u8.shape[1])
    xe, ye = test_u8[:eval_images], torch.as_tensor(test_y[:eval_images]).long()
    evs = {"evaluate: uint8 test set, float per batch (now; before on a CPU)": lambda: _uint8_tensor(xe),
           "evaluate: float32 test set up front": lambda: to_float_images(xe)}
    res: dict[str, list[float]] = {k: [] for k in evs}
    for _ in range(runs):
        for k, make in evs.items():
            x = make()
            t0 = time.perf_counter()
            evaluate(model, x, ye, 512, "cpu")
            res[k].append(time.perf_counter() - t0)
    rows += [{"what": k, "images": len(xe), "fastest_s": round(min(v), 3), "median_s": round(statistics.median(v), 3)}
             for k, v in res.items()]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--png-size", type=int, default=48)
    ap.add_argument("--eval-size", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--only-prep", action="store_true", help="just the test-split preparation (no report)")
    ap.add_argument("--name", default="eval_data")
    a = ap.parse_args(argv)

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import ray.data

    from mgd_ray.config import job_from_dict
    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="mgd-evaldata-"))
    # a private local Ray as the driver starts one on this box: at least 4 logical CPUs
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp / "ray"))
    ray.data.DataContext.get_current().enable_progress_bars = False

    t0 = time.perf_counter()
    make_imagefolder(tmp / "imgs", a.images, a.png_size)
    gen_s = time.perf_counter() - t0
    prep = []
    job = job_from_dict({"data": {"source": "imagefolder", "root": str(tmp / "imgs")},
                         "evaluate": {"image_size": a.eval_size}, "output": {"dir": str(tmp / "out-if")}})
    for r in time_prep(job, a.runs):
        prep.append({"source": f"imagefolder, {a.png_size}x{a.png_size + 8} PNG -> {a.eval_size} px", **r})
    have_fashion = Path(FASHION).is_dir()
    if have_fashion:
        job = job_from_dict({"data": {"source": "fashion-mnist", "root": FASHION},
                             "output": {"dir": str(tmp / "out-fm")}})
        for r in time_prep(job, a.runs, small_blocks=False):
            prep.append({"source": "fashion-mnist test, native 28 px", **r})
    print(md_table(prep, ["source", "way", "images", "shape", "fastest_s", "median_s", "vs_one_task"]))
    if a.only_prep:
        ray.shutdown()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        return

    from mgd_ray.data import open_source
    from mgd_ray.pipeline.evaluate import random_real_subset
    if have_fashion:
        src = open_source({"source": "fashion-mnist", "root": FASHION})
        test = src.arrays("test")
        _, _, lab = src.select("train")
        train = src.arrays_at("train", random_real_subset(lab, 50, 0))
    else:                                                  # digits stand in (small, but the same code)
        src = open_source({"source": "sklearn-digits"})
        test, train = src.arrays("test"), src.arrays("train")
    mem = held_memory(train["image"], test["image"], tmp)
    print(md_table(mem, ["set", "held as", "shape", "MB", "rss_growth_MB"]))
    ep = epoch_times(train["image"], train["label"], test["image"], test["label"], a.epochs, a.runs, a.eval_images)
    print(md_table(ep, ["what", "images", "fastest_s", "median_s"]))
    ray.shutdown()

    data = {"machine": info, "args": vars(a), "png_generation_s": round(gen_s, 1), "test_split_prep": prep,
            "held_memory": mem, "epoch_time": ep, "fashion_mnist": have_fashion}
    md = [f"# Evaluation data path: uint8 pixels, the test split decoded once ({info['date']})", "",
          f"`python -m benchmarks.eval_data --images {a.images} --png-size {a.png_size} --eval-size {a.eval_size} "
          f"--runs {a.runs} --epochs {a.epochs} --eval-images {a.eval_images}` on {info['cpu_count']} CPU cores "
          f"(load average at start "
          f"{info['loadavg_at_start']}; a shared box: times are noisy). A local Ray with "
          f"{max(4, os.cpu_count() or 1)} logical CPUs, as the driver starts one here.", "",
          "## Preparing the real test split", "",
          "Seconds from nothing to the decoded test split in the object store (`ray.get` done), as the "
          "evaluate stage's Train workers get it. `one task`: the runner's way before this change "
          "(`_load_eval_set`, one Ray task of 0.5 CPU decodes the whole split, every run of the stage). "
          "`Ray Data, first run`: `pipeline.testset.prepare_testset` as shipped (decode + fit in parallel "
          "`map_batches` tasks of 1 CPU and 2,000 images, each writing its Parquet file under "
          "`output.dir/eval/_testset/`) then the read-back task. `cached`: a rerun or resumed evaluation (the "
          "committed cache read back). `256-row blocks of 0.25 CPU`: the same pipeline cut as the encode "
          "stage's read path is (the first version of this change), for comparison. All give identical arrays "
          f"(checked). Fastest and median of {a.runs} interleaved runs; `vs_one_task` = one task's fastest / "
          "this way's fastest (> 1 is faster).", "",
          md_table(prep, ["source", "way", "images", "shape", "fastest_s", "median_s", "vs_one_task"]), "",
          "## Memory of the held sets", "",
          "What a trial holds on its training device (on this CPU box: the host). Before, the student's train "
          "set was made float32 on the host (`to_float_images`) and moved whole to the device; now it stays "
          "uint8 (on a CPU: the decoded array itself, or the object store's buffer for a baseline set) and "
          "each batch is made float on the device. The test set was already held as uint8 on the host "
          "(converted per batch on the host and copied to the device as float per batch); now it is moved to "
          "the device once, as uint8. "
          "`MB`: bytes of the tensor the trial holds; `rss_growth_MB`: the RSS growth of making it from the "
          "uint8 array, measured in a fresh process each (uint8: a view of the array, nothing new). The uint8 "
          "array itself is held either way (for the test set: once per node, in the object store). ImageNet "
          "rows are arithmetic.", "",
          md_table(mem, ["set", "held as", "shape", "MB", "rss_growth_MB"]), "",
          "## Per-epoch and evaluation time", "",
          f"ConvNet-3 (protocol width), 1 thread. `train`: seconds of one epoch's training batches over the "
          f"IPC 50 train set ({a.epochs} epochs per run, evaluation excluded; same seeds, identical accuracy "
          f"either way, checked). `evaluate`: one pass over the first {a.eval_images} test images, batches of "
          "512. On a CPU the test path did not change (it was already uint8, float per batch); the float32 row "
          "is the older way, for reference.", "",
          md_table(ep, ["what", "images", "fastest_s", "median_s"])]
    write_report(a.name, data, "\n".join(md))
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
