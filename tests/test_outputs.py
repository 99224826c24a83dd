"""A job's outputs in the ecosystem: shards that the real ``datasets`` library loads as PIL images
and named labels while pandas / pyarrow / DuckDB read plain columns; ``export --format hf``; and
``report.html`` (parsed section by section against the files it came from, rebuilt from s3://,
rendered in headless chromium).

The job directory is built with the product's own writers (``shard_table``, ``summarise``,
``distribution_report``) from seeded random images, so no Ray is needed here; the Ray twin in
test_pipeline.py checks that a real job writes report.html too."""

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from mgd_ray.config import job_from_dict
from mgd_ray.pipeline.store import Store
from mgd_ray.pipeline.units import decode_png, make_units, png_bytes, sample_id, shard_table

CLASSES = ["T-shirt/top", "Trouser", "Pullover"]
SEEDS, IPC, PER_UNIT, TRAIN_SEEDS = [0, 1], 3, 2, 2
CHROMIUM = "/usr/bin/chromium"


class FakeSource:
    """Five 8x8 train images per class (ids 100 + row); ``arrays_at`` as the real sources."""

    class classes:
        names = CLASSES

    labels = np.repeat(np.arange(len(CLASSES)), 5)
    images = np.random.default_rng(5).integers(0, 256, (len(labels), 8, 8, 1), dtype=np.uint8)

    def select(self, split):
        assert split == "train"
        return np.arange(len(self.labels)), 100 + np.arange(len(self.labels)), self.labels

    def arrays_at(self, split, index, image_size=None, mode="center-crop"):
        assert split == "train" and image_size is None and mode == "pad"   # the job's encode geometry
        return {"id": 100 + np.asarray(index), "label": self.labels[index], "image": self.images[index]}


def _job(out):
    return job_from_dict({"name": "out-twin", "method": "manifoldgd",
                          "data": {"source": "fashion-mnist", "classes": CLASSES},
                          "generate": {"ipc": IPC, "seeds": SEEDS, "targets_per_unit": PER_UNIT},
                          "evaluate": {"train_seeds": TRAIN_SEEDS, "students": ["convnet3"]},
                          "output": {"dir": str(out)}})


def _write_job(out: Path):
    """A finished job's files: shards, manifest.json, config.yaml, results.json (eval + metrics)."""
    from mgd_ray.pipeline.driver import dump_job_redacted
    from mgd_ray.eval import distribution_report
    from mgd_ray.pipeline.evaluate import make_trials, results_document, summarise
    rng = np.random.default_rng(0)
    job = _job(out)
    st = Store(str(out))
    units = make_units(SEEDS, range(len(CLASSES)), CLASSES, IPC, PER_UNIT)
    for u in units:
        rows = []
        for j in range(u.start, u.start + u.count):
            img = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
            rows.append(dict(sample_id=sample_id(u.gen_seed, u.label, j), label=u.label, class_name=u.class_name,
                             target_id=f"s{u.gen_seed}-c{u.label}-j{j}", seed=1000 + j, gen_seed=u.gen_seed,
                             method="manifoldgd", image=png_bytes(img), height=8, width=8, channels=1))
        st.write_table(shard_table(rows, CLASSES), "shards", u.shard)
    st.write_bytes(dump_job_redacted(job).encode(), "config.yaml")
    from mgd_ray.pipeline.report_page import write_real_preview
    assert write_real_preview(st, job, FakeSource(), None)
    recs = [dict(t, final_acc=float(rng.uniform(0.4, 0.9)), best_acc=float(rng.uniform(0.5, 0.95)), epochs=5)
            for t in make_trials(job)]
    res = results_document(job, [summarise(job, recs)])
    f_real = rng.normal(size=(60, 6))
    sets = {str(s): distribution_report(f_real, rng.normal(size=(9, 6)) + 0.3 * s,
                                        pred_syn=np.array([0, 1, 2] * 3), labels_syn=np.repeat([0, 1, 2], 3),
                                        num_classes=3, seed=s) for s in SEEDS}
    keys = [k for k, v in sets["0"].items() if isinstance(v, float)]
    res["distribution"] = {"feature_space": "real-data classifier classifier (0.9066 test acc)", "sets": sets,
                           "mean": {k: float(np.mean([v[k] for v in sets.values()])) for k in keys}}
    st.write_json(json.loads(json.dumps(res, default=float)), "results.json")
    st.write_json({"name": job.name, "status": "complete", "config": job.model_dump(mode="json"),
                   "method": {"name": "manifoldgd", "coreset": {"k": 3}, "guidance": {"beta": 1.0},
                              "sampler": {"steps": 4}, "choices": {"projection": "paper Eq. 4"}},
                   "model": {"source": "prior:fashion-mnist", "transformer_sha256": "2308e623",
                             "vae_sha256": "4ec6f2af", "num_classes": 10, "image_size": 8},
                   "data": {"source": "fashion-mnist", "root": "/data/fm", "class_list": {"name": "fashion-mnist"},
                            "rows": {"train": 60, "test": 30}},
                   "classes": CLASSES, "git_commit": "abc1234", "runs": 1,
                   "started": "2026-12-02T09:00:00Z", "finished": "2026-12-02T09:05:00Z",
                   "timings": {"encode": 1.5, "coreset": 0.25, "generate": 12.0, "evaluate": 30.0, "metrics": 2.0,
                               "total_last_run": 46.0},
                   "encode": {"rows": 60, "seconds": 1.5, "images_per_s": 40.0},
                   "generate": {"units": len(units), "images": 18, "seconds": 12.0, "images_per_s": 1.5},
                   "counts": {"classes": 3, "ipc": IPC, "generation_seeds": 2, "units": len(units),
                              "units_committed": len(units), "images": 18}}, "manifest.json")
    return st


@pytest.fixture(scope="module")
def job_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("job") / "out"
    _write_job(out)
    return out


def _shard_files(out: Path) -> list[str]:
    return sorted(str(p) for p in (out / "shards").glob("*.parquet"))


def _shard_rows(out: Path) -> list[dict]:
    return [r for f in _shard_files(out) for r in pq.read_table(f).to_pylist()]


def _load_parquet(files, cache):
    datasets = pytest.importorskip("datasets", reason="datasets is in the dev extra")
    return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache))


# ---- shards in the ecosystem -------------------------------------------------------------------
def test_datasets_loads_pil_images_and_named_labels(job_out, tmp_path):
    import datasets
    from PIL import Image
    ds = _load_parquet(_shard_files(job_out), tmp_path / "hf")
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["label"], datasets.ClassLabel) and ds.features["label"].names == CLASSES
    by_id = {r["sample_id"]: r for r in _shard_rows(job_out)}
    assert len(ds) == len(by_id) == len(SEEDS) * len(CLASSES) * IPC
    for row in ds:
        ref = by_id[row["sample_id"]]
        assert isinstance(row["image"], Image.Image) and row["image"].size == (8, 8)
        assert np.array_equal(np.asarray(row["image"])[:, :, None], decode_png(ref["image"]))
        assert ds.features["label"].int2str(row["label"]) == ref["class_name"] == CLASSES[ref["label"]]
    # one shard alone (one class) still names every class
    one = _load_parquet(_shard_files(job_out)[-1:], tmp_path / "hf1")
    assert one.features["label"].names == CLASSES and set(one["label"]) == {len(CLASSES) - 1}


def test_pandas_pyarrow_duckdb_read_plain_columns(job_out):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is in the dev extra")
    import pandas as pd
    t = pq.read_table(_shard_files(job_out)[0])
    assert [str(t.schema.field(c).type) for c in ("sample_id", "label", "seed", "height")] == \
        ["string", "int64", "int64", "int32"]
    df = pd.read_parquet(_shard_files(job_out)[0])
    assert df["label"].dtype == np.int64 and df["class_name"].tolist() == [CLASSES[0]] * PER_UNIT
    assert set(df["image"].iloc[0]) == {"bytes", "path"} and df["image"].iloc[0]["path"] is None
    glob = str(job_out / "shards" / "*.parquet")
    got = duckdb.sql(f"SELECT class_name, count(*) AS n, min(gen_seed), max(gen_seed) FROM read_parquet('{glob}') "
                     f"GROUP BY class_name ORDER BY class_name").fetchall()
    assert got == sorted((c, IPC * len(SEEDS), 0, 1) for c in CLASSES)
    sid, png = duckdb.sql(f"SELECT sample_id, struct_extract(image, 'bytes') FROM read_parquet('{glob}') "
                          f"ORDER BY sample_id LIMIT 1").fetchall()[0]
    ref = {r["sample_id"]: r["image"]["bytes"] for r in _shard_rows(job_out)}
    assert bytes(png) == ref[sid] and decode_png(bytes(png)).shape == (8, 8, 1)


def test_product_readers_use_the_new_shards(job_out, tmp_path):
    from mgd_ray.pipeline.evaluate import load_shard_set
    from mgd_ray.pipeline.preview import class_grids
    from mgd_ray.pipeline.report import export_imagefolder
    st = Store(str(job_out))
    imgs, labels = load_shard_set(st, 1)
    assert imgs.shape == (len(CLASSES) * IPC, 8, 8, 1) and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    ref = {r["sample_id"]: decode_png(r["image"]) for r in _shard_rows(job_out) if r["gen_seed"] == 1}
    assert np.array_equal(imgs, np.stack([ref[k] for k in sorted(ref)]))
    (name, png), = list(class_grids(st, CLASSES, 0))
    g = decode_png(png)  # 3 x 3 cells of 8 px, 1 px padding, scaled x8
    assert name == "all_classes.png" and g.shape == ((3 * 9 + 1) * 8,) * 2 + (1,)
    first = {r["sample_id"]: decode_png(r["image"]) for r in _shard_rows(job_out)}[sample_id(0, 1, 2)]
    assert np.array_equal(g[(1 + 9) * 8:(1 + 9 + 8) * 8, (1 + 18) * 8:(1 + 18 + 8) * 8],
                          first.repeat(8, 0).repeat(8, 1))
    assert export_imagefolder(str(job_out), str(tmp_path / "exp")) == len(SEEDS) * len(CLASSES) * IPC
    r0 = _shard_rows(job_out)[0]
    assert (tmp_path / "exp" / "T-shirt_top" / f"{r0['sample_id']}.png").read_bytes() == r0["image"]["bytes"]


# ---- export --format hf ------------------------------------------------------------------------
def test_export_hf_dataset_dir_and_card(job_out, tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is in the dev extra")
    from typer.testing import CliRunner

    from mgd_ray.cli import app
    from mgd_ray.pipeline.report_page import paired_gains
    dest = tmp_path / "hf"
    r = CliRunner().invoke(app, ["export", str(job_out), str(dest), "--format", "hf"])
    assert r.exit_code == 0, r.output
    assert f"wrote {len(SEEDS) * len(CLASSES) * IPC} images" in r.output
    assert sorted(p.name for p in (dest / "data").iterdir()) == [Path(f).name for f in _shard_files(job_out)]
    card = (dest / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "mit" and "image-classification" in front["task_categories"]
    assert [c["config_name"] for c in front["configs"]] == ["seed0", "seed1"] and front["configs"][0]["default"]
    # the directory loads by config name: one distilled set per generation seed
    ds = datasets.load_dataset(str(dest), "seed1", split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == len(CLASSES) * IPC and set(ds["gen_seed"]) == {1}
    assert ds.features["label"].names == CLASSES
    # the card states the method, model identity, licence and the results from results.json
    res = json.loads((job_out / "results.json").read_text())["protocols"][0]
    cell = res["results"]["manifoldgd"]["convnet3"]
    g = paired_gains(res)[("manifoldgd", "convnet3")]
    assert f"| manifoldgd | convnet3 | {len(cell['runs'])} | {100 * cell['final_acc_mean']:.1f} ± " in card
    assert f"{100 * g['mean']:+.1f} ± {100 * g['std']:.1f} (n={TRAIN_SEEDS * len(SEEDS)})" in card
    for text in ("`manifoldgd`", "2308e623", "Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017", "fid",
                 "sampler:", "IPC 3"):
        assert text in card, text
    # a job with missing units is refused with the fix, and an unknown format is an error
    part = tmp_path / "partial"
    shutil.copytree(job_out, part)
    m = json.loads((part / "manifest.json").read_text())
    m["counts"]["units_committed"] -= 1
    (part / "manifest.json").write_text(json.dumps(m))
    r = CliRunner().invoke(app, ["export", str(part), str(tmp_path / "x"), "--format", "hf"])
    assert r.exit_code == 2 and "rerun the same distill command" in r.output and not (tmp_path / "x").exists()
    r = CliRunner().invoke(app, ["export", str(job_out), str(dest), "--format", "hf"])
    assert r.exit_code == 2 and "is not empty" in r.output
    r = CliRunner().invoke(app, ["export", str(job_out), str(tmp_path / "y"), "--format", "zip"])
    assert r.exit_code == 2 and "supported: imagefolder, hf" in r.output


# ---- report.html -------------------------------------------------------------------------------
class Page(HTMLParser):
    """sections[id] = {"tables": [[row cells]], "imgs": [(alt, src)], "rows": [data-label], "pre": str, "h1": str,
    "p": str, "real": [data-real], "real_imgs": {label: [(alt, src)]}}; "imgs" are those outside real rows."""

    def __init__(self):
        super().__init__()
        self.sections, self.cur, self.cell, self.row, self.tag = {}, None, None, None, []
        self.real_row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tag.append(tag)
        if tag == "section":
            self.cur = self.sections.setdefault(a["id"], {"tables": [], "imgs": [], "rows": [], "pre": "", "h1": "",
                                                          "p": "", "real": [], "real_imgs": {}})
        elif tag == "table":
            self.cur["tables"].append([])
        elif tag == "tr":
            self.row = []
            self.cur["tables"][-1].append(self.row)
            self.real_row = int(a["data-real"]) if "data-real" in a else None
            if "data-label" in a:
                self.cur["rows"].append(int(a["data-label"]))
            if self.real_row is not None:
                self.cur["real"].append(self.real_row)
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "img":
            if self.real_row is None:
                self.cur["imgs"].append((a["alt"], a["src"]))
            else:
                self.cur["real_imgs"].setdefault(self.real_row, []).append((a["alt"], a["src"]))

    def handle_endtag(self, tag):
        self.tag.pop()
        if tag in ("td", "th"):
            self.row.append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        elif self.tag and self.tag[-1] in ("pre", "h1", "p") and self.cur is not None:
            self.cur[self.tag[-1]] += data


def parse(html: str) -> dict:
    p = Page()
    p.feed(html)
    return p.sections


def test_report_sections_match_their_files(job_out):
    from mgd_ray.pipeline.report_page import write_report
    uri = write_report(str(job_out))
    assert uri == str(job_out / "report.html")
    html = (job_out / "report.html").read_text()
    assert "<script" not in html and "<link" not in html and "url(" not in html  # self-contained: nothing fetched
    s = parse(html)
    assert list(s) == ["summary", "preview", "results", "distribution", "timings", "config"]
    man = json.loads((job_out / "manifest.json").read_text())
    doc = json.loads((job_out / "results.json").read_text())
    res = doc["protocols"][0]
    # summary
    assert s["summary"]["h1"] == "out-twin"
    summ = dict(s["summary"]["tables"][0])
    assert summ["status"] == "complete" and summ["method"] == "manifoldgd" and summ["git commit"] == "abc1234"
    assert "2308e623" in summ["generator"] and summ["images per class (IPC)"] == str(IPC)
    # preview: a row per class, the first images of generation seed 0, bytes as in the shards
    assert s["preview"]["rows"] == [0, 1, 2]
    shard = {r["sample_id"]: r["image"]["bytes"] for r in _shard_rows(job_out)}
    want = [sample_id(0, c, j) for c in range(len(CLASSES)) for j in range(IPC)]
    assert [alt for alt, _ in s["preview"]["imgs"]] == want
    for alt, src in s["preview"]["imgs"]:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == shard[alt]
    # each class: its name (after its label: they differ here) on the distilled row, then a row of
    # real train images of the class from preview/real.parquet: the first of the random-real
    # baseline's subset for seed 0 (IPC of the 5 per class), the source's pixels
    grid = s["preview"]["tables"][0]
    assert [r[0] for r in grid] == [x for i, c in enumerate(CLASSES) for x in (f"{i} {c}", "")]
    assert [r[1] for r in grid] == ["distilled", "real"] * len(CLASSES)
    assert s["preview"]["real"] == [0, 1, 2]
    from mgd_ray.pipeline.evaluate import random_real_subset
    src = FakeSource()
    chosen = random_real_subset(src.labels, IPC, SEEDS[0])
    for label, c in enumerate(CLASSES):
        ids = [100 + i for i in chosen if src.labels[i] == label]
        got = s["preview"]["real_imgs"][label]
        assert [alt for alt, _ in got] == [f"real {c} (train id {i})" for i in ids]
        for (_, src_uri), i in zip(got, ids):
            assert np.array_equal(decode_png(base64.b64decode(src_uri.split(",", 1)[1])), src.images[i - 100])
    assert "real train images of the class" in s["preview"]["p"]
    # results: recomputed here from results.json's runs (gain paired on set and training seed)
    head, *rows = s["results"]["tables"][0]
    assert head == ["dataset", "student", "runs", "final acc", "best acc", "gain over random real"]
    base = {(r["set_seed"], r["train_seed"]): r["final_acc"] for r in res["results"]["random-real"]["convnet3"]["runs"]}
    for row in rows:
        c = res["results"][row[0]][row[1]]
        assert row[2] == str(len(c["runs"]))
        assert row[3] == f"{100 * c['final_acc_mean']:.1f} ± {100 * c['final_acc_std']:.1f}"
        assert row[4] == f"{100 * c['best_acc_mean']:.1f} ± {100 * c['best_acc_std']:.1f}"
        if row[0] == "random-real":
            assert row[5] == "-"
        else:
            d = [r["final_acc"] - base[(r["set_seed"], r["train_seed"])] for r in c["runs"]]
            assert row[5] == f"{100 * np.mean(d):+.1f} ± {100 * np.std(d, ddof=1):.1f} (n={len(d)})"
    assert [r[0] for r in rows] == ["manifoldgd", "random-real"]
    # distribution: a row per numeric metric, a column per set and the mean
    head, *rows = s["distribution"]["tables"][0]
    dist = doc["distribution"]
    assert head == ["metric", "set 0", "set 1", "mean"]
    # the caption names the classifier once, where it is, and its accuracy in % (not a raw fraction)
    assert s["distribution"]["p"] == ("in the features of the real-data classifier shipped beside "
                                      "prior:fashion-mnist (classifier/; 90.7 % on the real test set)")
    metrics = [r[0] for r in rows]
    assert "fid" in metrics and "coverage" in metrics and "prior_fidelity_per_class" not in metrics
    for row in rows:
        for cell, vals in zip(row[1:], [dist["sets"]["0"], dist["sets"]["1"], dist["mean"]]):
            assert cell == (f"{vals[row[0]]:.4g}" if row[0] in vals else "")
    # timings and config
    head, *rows = s["timings"]["tables"][0]
    assert {r[0]: float(r[1]) for r in rows} == man["timings"]
    assert {r[0]: r[2] for r in rows}["generate"] == "1.5"
    assert s["config"]["pre"] == (job_out / "config.yaml").read_text()


def test_report_thumbnails_large_images():
    from mgd_ray.pipeline.report_page import THUMB, thumbnail
    big = png_bytes(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    small = png_bytes(np.zeros((32, 32, 1), np.uint8))
    assert decode_png(thumbnail(big)).shape == (THUMB, THUMB, 3) and thumbnail(small) == small


def test_report_cli_rebuilds_from_s3(job_out, moto_s3):
    import s3fs
    from typer.testing import CliRunner

    from mgd_ray.cli import app
    from mgd_ray.pipeline.report_page import build_html
    moto_s3.create_bucket("reports")
    fs = s3fs.S3FileSystem(**moto_s3.storage_options)
    for f in job_out.rglob("*"):
        if f.is_file() and f.name != "report.html":
            fs.put_file(str(f), f"reports/job/{f.relative_to(job_out).as_posix()}")
    opts = [x for k, v in moto_s3.storage_options.items() for x in ("--storage-option", f"{k}={v}")]
    r = CliRunner().invoke(app, ["report", "s3://reports/job", *opts])
    assert r.exit_code == 0, r.output
    assert "wrote s3://reports/job/report.html" in r.output
    fs.invalidate_cache()
    assert fs.cat_file("reports/job/report.html").decode() == build_html(Store(str(job_out)))
    r = CliRunner().invoke(app, ["report", "s3://reports/nothing", *opts])
    assert r.exit_code == 2 and "no manifest.json" in r.output


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (Debian's chromium; .ci/run installs it)")
def test_report_renders_in_headless_chromium(job_out, tmp_path):
    from PIL import Image

    from mgd_ray.pipeline.report_page import write_report
    write_report(str(job_out))
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1100,1500",
           f"--screenshot={shot}", (job_out / "report.html").as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0 and shot.is_file(), p.stderr[-2000:]
    a = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert a.shape[:2] == (1500, 1100)
    ink = (np.abs(a - 255).sum(axis=2) > 60)             # pixels clearly darker than the white page
    assert 0.02 < ink.mean() < 0.6, ink.mean()
    # the embedded images are drawn: the preview's 64 px cells hold many distinct greys
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 100
    shutil.copy(shot, job_out.parent / "report-screenshot.png")  # kept for a person to look at


def test_report_digits_real_rows_from_the_source_and_class_names_once(tmp_path):
    """A digits job: classes "0".."9" are their own labels, so each row names its class once; the
    real rows are the source's own pixels (sklearn's digits through ``open_source``), written by
    ``write_real_preview`` and read back by the page from the output dir alone."""
    from mgd_ray.data import open_source
    from mgd_ray.pipeline.evaluate import random_real_subset
    from mgd_ray.pipeline.report_page import build_html, class_title, write_real_preview
    out = tmp_path / "digits"
    job = job_from_dict({"name": "digits-twin", "data": {"source": "sklearn-digits"},
                         "encode": {"preprocess": "none"}, "generate": {"ipc": 2, "seeds": [3]},
                         "output": {"dir": str(out)}})
    source = open_source(job.data)
    names = [str(c) for c in source.classes.names]
    assert names == [str(i) for i in range(10)]
    st = Store(str(out))
    units = make_units([3], range(10), names, 2, 2)
    for u in units:
        rows = [dict(sample_id=sample_id(3, u.label, j), label=u.label, class_name=u.class_name, target_id="t",
                     seed=j, gen_seed=3, method="manifoldgd", image=png_bytes(np.full((8, 8, 1), 9 * j, np.uint8)),
                     height=8, width=8, channels=1) for j in range(u.start, u.start + u.count)]
        st.write_table(shard_table(rows, names), "shards", u.shard)
    st.write_json({"name": job.name, "status": "complete", "config": job.model_dump(mode="json"),
                   "classes": names, "model": {"source": "prior:digits"}}, "manifest.json")
    html_without = build_html(st)
    s = parse(html_without)["preview"]
    assert s["real"] == [] and "preview/real.parquet is missing" in s["p"]   # an older output dir: no real rows
    assert write_real_preview(st, job, source, None)
    s = parse(build_html(st))["preview"]
    assert [r[0] for r in s["tables"][0] if r[1] == "distilled"] == names            # "3", not "3 3"
    assert [class_title(3, "3"), class_title(0, "T-shirt/top")] == ["3", "0 T-shirt/top"]
    a = source.arrays("train")
    _, ids, labels = source.select("train")
    chosen = random_real_subset(labels, 2, 3)
    for label in range(10):
        want = [i for i in chosen if labels[i] == label]
        got = s["real_imgs"][label]
        assert len(got) == 2 and [alt for alt, _ in got] == [f"real {label} (train id {ids[i]})" for i in want]
        for (_, uri), i in zip(got, want):
            assert np.array_equal(decode_png(base64.b64decode(uri.split(",", 1)[1])), a["image"][i])


def test_real_preview_failure_is_logged_not_raised(tmp_path, caplog):
    from mgd_ray.pipeline.report_page import write_real_preview

    class Broken(FakeSource):
        def arrays_at(self, *a, **k):
            raise OSError("bucket unreachable")
    st = Store(str(tmp_path))
    with caplog.at_level("WARNING", logger="mgd_ray"):
        assert not write_real_preview(st, _job(tmp_path), Broken(), None)
    assert "bucket unreachable" in caplog.text and not st.exists("preview", "real.parquet")
