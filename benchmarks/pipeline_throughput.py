"""Pipeline throughput benchmark (issue: the distributed pipeline).

    python -m benchmarks.pipeline_throughput [--images 20000] [--prior fashion-mnist] [--gen-images 40]
    python -m benchmarks.pipeline_throughput --images 60000 --encode-only   # the full train split

1. Encode: the Ray Data stage (read -> encoder actor pool, 2 CPUs) vs a plain single-process
   torch loop (2 threads) over the same Fashion-MNIST images with the same VAE. Ratio.
2. Generate: images/s with 1 and with 2 generator actors (1 CPU each) on the same units.
3. Peak RSS per actor (polled from /proc while each stage runs).
Prints a table and writes ``reports/pipeline_throughput.{json,md}``. Timings are wall-clock
on a shared machine: compare the ratios, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path


from benchmarks import REPORTS



class RSSPoller:
    """Peak RSS (MB) of processes whose command line contains ``pattern``, polled every 0.2 s."""

    def __init__(self, pattern: str):
        self.pattern, self.peak, self._stop = pattern, {}, threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="ignore")
                    if self.pattern not in cmd:
                        continue
                    for line in open(f"/proc/{pid}/status"):
                        if line.startswith("VmRSS:"):
                            mb = int(line.split()[1]) / 1024
                            self.peak[pid] = max(self.peak.get(pid, 0), mb)
                except OSError:
                    pass
            time.sleep(0.2)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self.t.join()

    @property
    def max_mb(self) -> float:
        return round(max(self.peak.values()), 1) if self.peak else float("nan")


def plain_encode(job, images) -> float:
    import torch

    from mgd_ray.data import preprocess
    from mgd_ray.models import encode_latents, load_generator
    torch.set_num_threads(2)
    _, vae, info = load_generator(job.model.generator)
    t0 = time.time()
    with torch.no_grad():
        for i in range(0, len(images), job.encode.batch_size):
            x = preprocess(images[i:i + job.encode.batch_size], info.image_size, channels=1, mode="pad")
            encode_latents(vae, torch.from_numpy(x), info.scaling_factor)
    return time.time() - t0


def measure_generate(base, tmp, src) -> dict:
    """images/s with 1 and with 2 generator actors on the same units (the encode's latents)."""
    from mgd_ray.config import job_from_dict
    from mgd_ray.pipeline import generate
    from mgd_ray.pipeline.workers import TARGET_INDEX_COLUMNS, merge_target_parts, write_class_targets
    from mgd_ray.pipeline.store import Store
    from mgd_ray.models import load_generator
    from mgd_ray.pipeline.units import make_units
    gen = {}
    for actors in (1, 2):
        out = tmp / f"gen{actors}"
        shutil.copytree(tmp / "enc" / "latents", out / "latents")
        j = job_from_dict(base, [f"output.dir={out}", f"generate.num_actors={actors}"])
        st = Store(str(out))
        write_class_targets(j, st, list(range(10)), [0])
        merge_target_parts(st, list(range(10)), [0])
        units = make_units([0], range(10), src.classes.names, j.generate.ipc, j.generate.targets_per_unit)
        generate.attach_targets(units, st.read_table("coreset", "targets.parquet", columns=TARGET_INDEX_COLUMNS))
        with RSSPoller("GeneratorWorker") as poll:
            r = generate.run_generate(j, st, units, source=src, info=load_generator(j.model.generator, j.model.vae)[2])
        gen[actors] = {"images": r["images"], "seconds": r["seconds"], "img_s": r["images_per_s"],
                       "actor_peak_rss_mb": poll.max_mb}
    return gen


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--prior", default="fashion-mnist")
    ap.add_argument("--gen-images", type=int, default=40, help="images generated per actor-count setting")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--encode-only", action="store_true", help="skip the generate part (report: pipeline_encode.*)")
    a = ap.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from mgd_ray.config import job_from_dict
    from mgd_ray.data import open_source
    from mgd_ray.pipeline.driver import setup_logging
    from mgd_ray.pipeline import runner
    from mgd_ray.pipeline.store import Store
    setup_logging()
    per_class = a.images // 10
    tmp = Path(tempfile.mkdtemp(prefix="mgd-bench-"))
    base = {"name": "bench", "data": {"source": "fashion-mnist", "limit_per_class": per_class},
            "encode": {"preprocess": "pad", "batch_size": 500, "min_actors": 2, "max_actors": 2, "num_cpus": 1},
            "model": {"generator": f"prior:{a.prior}"}, "ray": {"num_cpus": 2},
            "sampler": {"steps": a.steps, "cfg_scale": 2.0}, "guidance": {"t_stop": a.steps // 2},
            "generate": {"ipc": max(1, a.gen_images // 10), "targets_per_unit": max(1, a.gen_images // 10),
                         "batch_size": 16, "num_cpus": 1},
            "output": {"dir": str(tmp / "enc")}}
    job = job_from_dict(base)
    src = open_source(job.data)
    imgs = src.arrays("train")["image"]
    n = len(imgs)
    rep = {"images": n, "prior": a.prior, "cpus": os.cpu_count(), "steps": a.steps}

    t_plain = plain_encode(job, imgs)
    rep["encode_plain_seconds"] = round(t_plain, 2)
    rep["encode_plain_img_s"] = round(n / t_plain, 1)

    ray = runner.init_ray(job)
    store = Store(job.output.dir)
    from mgd_ray.models import load_generator
    info = load_generator(job.model.generator)[2]
    import ray.data
    written = []                                  # the encode dataset, for its per-operator stats
    write_parquet = ray.data.Dataset.write_parquet

    def capture(self, *a, **kw):
        written.append(self)
        return write_parquet(self, *a, **kw)

    ray.data.Dataset.write_parquet = capture
    try:
        with RSSPoller("MapWorker") as poll:
            t0 = time.time()
            runner.run_encode(job, store, src, info.image_size)
            t_ray = time.time() - t0
    finally:
        ray.data.Dataset.write_parquet = write_parquet
    rep["encode_ray_data_stats"] = written[0].stats() if written else ""
    rep["encode_ray_seconds"] = round(t_ray, 2)
    rep["encode_ray_img_s"] = round(n / t_ray, 1)
    rep["encode_ratio_ray_over_plain"] = round(t_plain / t_ray, 3)
    rep["encoder_actor_peak_rss_mb"] = poll.max_mb

    gen = {} if a.encode_only else measure_generate(base, tmp, src)
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)

    rows = [("encode, plain torch loop (1 process, 2 threads)", f"{rep['encode_plain_img_s']} img/s", "-"),
            ("encode, Ray Data actor pool (2 actors x 1 CPU)", f"{rep['encode_ray_img_s']} img/s",
             f"{rep['encoder_actor_peak_rss_mb']} MB"),
            ("encode ratio Ray / plain", f"{rep['encode_ratio_ray_over_plain']}", "")]
    if gen:
        rep["generate"] = gen
        rep["generate_speedup_2_over_1"] = round(gen[2]["img_s"] / gen[1]["img_s"], 3)
        rows += [("generate, 1 actor", f"{gen[1]['img_s']} img/s", f"{gen[1]['actor_peak_rss_mb']} MB"),
                 ("generate, 2 actors", f"{gen[2]['img_s']} img/s", f"{gen[2]['actor_peak_rss_mb']} MB"),
                 ("generate speed-up 2 / 1 actors", f"{rep['generate_speedup_2_over_1']}", "")]
    name = "pipeline_encode" if a.encode_only else "pipeline_throughput"
    cmd = f"python -m benchmarks.pipeline_throughput --images {a.images}" + (" --encode-only" if a.encode_only else "")
    md = [f"# Pipeline throughput{' (encode only)' if a.encode_only else ''}", "",
          f"`{cmd}` ({n} Fashion-MNIST images, prior `{a.prior}`"
          + ("" if a.encode_only else f", {a.steps} DDPM steps") + f", {os.cpu_count()} CPUs)", "",
          "| what | throughput | peak RSS per actor |", "|---|---|---|"]
    md += [f"| {w} | {t} | {m} |" for w, t, m in rows]
    md += ["", "Where the Ray encode's time goes (Ray Data's own per-operator statistics of that run):", "",
           "```", rep["encode_ray_data_stats"].strip(), "```"]
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"{name}.json").write_text(json.dumps(rep, indent=1))
    (REPORTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return rep


if __name__ == "__main__":
    main()
