"""The ImageNet-1K scale twin: jobs/imagenet1k-twin.yaml extends the real job file (no copy of its
settings), the committed data script is deterministic in both layouts, the tiny models have
DiT-XL/2's 4x32x32 latent, and the twin runs end to end from its Parquet variant."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from benchmarks.imagenet_twin import make_twin, twin_wnids
from mgd_ray.config import JobError, load_job, read_job_file
from mgd_ray.data.classlists import imagenet1k

ROOT = Path(__file__).resolve().parents[1]
REAL, TWIN = ROOT / "jobs" / "imagenet1k.yaml", ROOT / "jobs" / "imagenet1k-twin.yaml"


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_twin_job_is_the_real_job_with_paths_and_placement():
    real = _flat(load_job(REAL).model_dump(mode="json"))
    twin = _flat(load_job(TWIN).model_dump(mode="json"))
    changed = {k for k in real if real[k] != twin[k]}
    # only paths, placement and the evaluation students' cost change; never the method or sizes
    allowed_sections = ("data.root", "model.generator", "model.vae", "encode.image_size", "encode.max_actors",
                        "encode.num_cpus", "generate.num_actors", "generate.num_cpus", "evaluate.", "output.dir",
                        "name")
    assert changed and all(k.startswith(allowed_sections) for k in changed), sorted(changed)
    for k in ("data.class_list", "coreset.selection", "coreset.method", "generate.ipc", "generate.seeds",
              "generate.targets_per_unit", "generate.batch_size", "sampler.steps", "guidance.K", "encode.batch_size"):
        assert twin[k] == real[k], k
    # the twin file names only what it changes: nothing it sets equals the real value by accident
    raw = yaml.safe_load(TWIN.read_text())
    assert raw.pop("extends") == "imagenet1k.yaml" and read_job_file(TWIN)["coreset"] == read_job_file(REAL)["coreset"]
    own = _flat(raw)
    assert not [k for k, v in own.items() if real.get(k) == v]


def test_extends_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(JobError, match="loops back"):
        load_job(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(JobError, match="not found"):
        load_job(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: e.yaml\ngenerate: {ipc: 3}\n")
    (tmp_path / "e.yaml").write_text("generate: {ipc: 7, seeds: [4]}\nname: e\n")
    j = load_job(tmp_path / "d.yaml", ["name=x"])
    assert (j.generate.ipc, j.generate.seeds, j.name) == (3, [4], "x")   # merged by key; overrides last


def test_twin_data_is_deterministic_and_nested(tmp_path):
    from mgd_ray.data import open_source
    a = make_twin(tmp_path / "a", 4, 3, 1)
    b = make_twin(tmp_path / "b", 2, 3, 1, formats=("imagefolder",))
    assert a["wnids"] == twin_wnids(4) and len(set(a["wnids"])) == 4
    assert [imagenet1k().index(w) for w in a["wnids"]] == [0, 250, 500, 750]
    assert set(b["wnids"]) <= set(a["wnids"])          # a 2-class twin is a subset of the 4-class one
    for w in b["wnids"]:
        for f in sorted((tmp_path / "b" / "imagefolder" / "train" / w).iterdir()):
            assert f.read_bytes() == (tmp_path / "a" / "imagefolder" / "train" / w / f.name).read_bytes()
    # both layouts hold the same pixels under the same wnids, read through the real sources
    sel = a["wnids"][1:3]
    base = {"class_list": "imagenet1k", "classes": sel}
    img = open_source({"source": "imagefolder", "root": str(tmp_path / "a" / "imagefolder"), **base})
    par = open_source({"source": "parquet", "root": str(tmp_path / "a" / "parquet"), **base})
    x, y = img.arrays("train"), par.arrays("train")
    assert list(img.classes.names) == list(par.classes.names) == sel
    assert np.array_equal(x["label"], y["label"]) and np.array_equal(x["image"], y["image"])
    assert x["image"].shape == (6, 64, 64, 3)
    t = pq.read_table(next((tmp_path / "a" / "parquet" / "train").glob("*.parquet")))
    assert t.column("label").to_pylist()[:3] == [0, 0, 0] and t.column("class_name")[0].as_py() == a["wnids"][0]
    # asking for the same directory with other settings is refused, not mixed
    with pytest.raises(SystemExit, match="other settings"):
        make_twin(tmp_path / "a", 5, 3, 1)


def test_twin_models_have_ditxl_latent(tmp_path):
    from mgd_ray.models import load_generator
    make_twin(tmp_path, 1, 1, 1, formats=("imagefolder",))
    dit, vae, info = load_generator(str(tmp_path / "models"))
    assert type(dit).__name__ == "DiTTransformer2DModel" and type(vae).__name__ == "AutoencoderKL"
    assert (info.latent_channels, info.latent_size, info.latent_dim) == (4, 32, 4096)
    assert (info.num_classes, info.null_label, info.image_size, info.learned_sigma) == (1000, 1000, 64, True)
    cfg = json.loads((tmp_path / "models" / "transformer" / "config.json").read_text())
    assert cfg["_class_name"] == "Transformer2DModel"     # as the hub's facebook/DiT-XL-2-256 ships it


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_twin_job_runs_from_parquet(ray_cluster, tmp_path):
    """The twin job end to end (2 classes, the job's IPC 10 x 3 seeds, 4 sampler steps) from the
    Parquet layout: ImageNet-sized targets (D = 4,096) and one shard per class and seed."""
    from mgd_ray.pipeline.driver import run_job
    wnids = make_twin(tmp_path / "twin", 2, 12, 1, formats=("parquet",))["wnids"]
    out = tmp_path / "out"
    job = load_job(TWIN, ["data.source=parquet", f"data.root={tmp_path / 'twin' / 'parquet'}",
                          f"model.generator={tmp_path / 'twin' / 'models'}", f"data.classes=[{', '.join(wnids)}]",
                          f"output.dir={out}", "sampler.steps=4", "guidance.t_stop=1", "guidance.warm=1",
                          "encode.num_gpus=0", "generate.num_gpus=0", "generate.num_actors=1",
                          "encode.max_actors=1", "evaluate.enabled=false"])
    m = run_job(job)
    assert m["status"] == "complete" and m["counts"]["images"] == 60 and m["counts"]["units"] == 6
    t = pq.read_table(out / "coreset" / "targets.parquet", columns=["target", "label", "gen_seed"])
    assert t.num_rows == 60 and len(t.column("target")[0].as_py()) == 4096
    assert len(list((out / "shards").glob("*.parquet"))) == 6
    assert {n["node_type"] for s in ("encode", "coreset", "generate") for n in m["nodes"][s]} <= {""}
    assert all(n["driver_node"] for s in ("encode", "coreset", "generate") for n in m["nodes"][s])  # one node
