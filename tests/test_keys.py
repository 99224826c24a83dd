"""Settings keys cover every input that changes bytes, and only those (issue 22 §2): the stage
keys (no Ray) and the per-unit keys (each class, each generation seed) on a real local Ray: an
added seed or class reuses every other unit's work."""

import time
from types import SimpleNamespace

import numpy as np
import pytest

from mgd_ray.config import job_from_dict
from mgd_ray.data import open_source
from mgd_ray.pipeline.settings import SettingsChanged
from mgd_ray.pipeline.stage import BY_NAME, STAGE_NAMES, check_settings, stage_keys
from mgd_ray.pipeline.store import Store
from tests.test_data import imagefolder_files, write_tree

INFO = SimpleNamespace(transformer_sha256="t", vae_sha256="v", transformer_config={"out_channels": 8},
                       vae_config={"scaling_factor": 0.18215, "_diffusers_version": "0.42.1"})


def differs(a: dict, b: dict) -> list[str]:
    """The stages whose keys differ, in pipeline order."""
    return [s for s in STAGE_NAMES if a[s] != b[s]]


def keys(d: dict, info=INFO, source=None) -> dict:
    return stage_keys(job_from_dict(d), info, source)


def class_keys_of(d: dict) -> list[dict]:
    from mgd_ray.pipeline.stage import class_keys
    return class_keys(open_source(job_from_dict(d).data))


def test_each_class_has_its_own_key_of_its_own_files(tmp_path):
    """The data's files are in each class's key, not in the stage keys: a file added under one
    class changes that class's key, and the keys of the classes whose ids it moved (an
    imagefolder's ids are positions in the whole sorted listing); a file rewritten in place
    changes its class's key (size, mtime); a class the job does not choose is no input unless it
    moves the ids. An added class keeps the others' keys; a class at another index is another key."""
    root = write_tree(tmp_path / "nette", imagefolder_files(corrupt=False))
    d = {"data": {"source": "imagefolder", "root": str(root), "classes": ["n01440764", "n02102040"]}}
    a, ka = keys(d, source=open_source(job_from_dict(d).data)), class_keys_of(d)
    assert class_keys_of(d) == ka and [k["name"] for k in ka] == ["n01440764", "n02102040"]   # stable
    train = root / "train"

    def changed_classes():
        now = class_keys_of(d)
        assert keys(d, source=open_source(job_from_dict(d).data)) == a     # never a stage key
        return [k["name"] for k, was in zip(now, ka) if k != was]

    (train / "n02102040" / "img9.png").write_bytes((train / "n02102040" / "img1.png").read_bytes())
    assert changed_classes() == ["n02102040"]                 # last in the listing: no other id moves
    (train / "n02102040" / "img9.png").unlink()
    assert changed_classes() == []                            # back to the same listing
    (train / "n01440764" / "img0a.png").write_bytes((train / "n01440764" / "img1.png").read_bytes())
    assert changed_classes() == ["n01440764", "n02102040"]   # its ids, and the later class's, moved
    (train / "n01440764" / "img0a.png").unlink()
    time.sleep(0.01)
    (train / "n02102040" / "img1.png").write_bytes((train / "n02102040" / "img1.png").read_bytes() + b"\0")
    assert changed_classes() == ["n02102040"]                 # rewritten in place: size and mtime
    ka = class_keys_of(d)
    (train / "extra" / "img0.png").write_bytes(b"\x89PNG rewritten")   # a class not chosen, ids unmoved
    assert changed_classes() == []
    (train / "extra" / "img7.png").write_bytes(b"\x89PNG new")         # not chosen, but sorts first
    assert changed_classes() == ["n01440764", "n02102040"]
    # one more class: the first two keep their keys; swapped: each is another class at its index
    more = class_keys_of({"data": {**d["data"], "classes": ["n01440764", "n02102040", "extra"]}})
    now = class_keys_of(d)
    assert more[:2] == now and more[2]["name"] == "extra" and more[2]["index"] == 2
    swapped = class_keys_of({"data": {**d["data"], "classes": ["n02102040", "n01440764"]}})
    assert [k["name"] for k in swapped] == ["n02102040", "n01440764"]
    assert not set(map(str, swapped)) & set(map(str, now))


def test_parquet_class_keys_follow_the_files_that_hold_their_rows(tmp_path):
    """A Parquet split: a class's key holds the files its rows are in; a file rewritten changes
    the keys of the classes with rows in it, and only those."""
    from tests.test_data import write_parquet
    write_parquet(tmp_path / "pq" / "train-0.parquet", [0, 1, 0])
    write_parquet(tmp_path / "pq" / "train-1.parquet", [1, 2, 2])
    write_parquet(tmp_path / "pq" / "test.parquet", [0, 1, 2])
    d = {"data": {"source": "parquet", "root": str(tmp_path / "pq")}}
    ka = class_keys_of(d)
    time.sleep(0.01)
    write_parquet(tmp_path / "pq" / "train-1.parquet", [1, 2, 2], row_group_size=1)   # same rows, rewritten
    kb = class_keys_of(d)
    assert [k["name"] for k, was in zip(kb, ka) if k != was] == ["1", "2"]      # class 0 is only in train-0


def test_only_inputs_are_in_the_keys():
    base = keys({})
    # the test split, the DiT (for the latents), a dtype a CPU never uses, the FID classifier,
    # students and train seeds (new trials, each its own unit): no key changes
    assert differs(base, keys({"data": {"test_limit_per_class": 3}})) == []
    assert differs(base, keys({"model": {"dtype": "bfloat16"}})) == []            # CPU: float32 whatever
    assert differs(base, keys({"evaluate": {"classifier": "/elsewhere", "students": ["convnet3", "resnet18"],
                                            "train_seeds": 7}})) == []
    assert differs(base, keys({}, SimpleNamespace(**{**vars(INFO), "transformer_sha256": "t2"}))) == \
        ["generate", "evaluate"]
    # what does change bytes: the VAE's settings (config.json, not only its weights), the device /
    # dtype that actually runs, the method's code version
    vae2 = SimpleNamespace(**{**vars(INFO), "vae_config": {"scaling_factor": 0.5}})
    assert differs(base, keys({}, vae2)) == list(STAGE_NAMES)
    assert differs(base, keys({}, SimpleNamespace(**{**vars(INFO), "vae_config": {"scaling_factor": 0.18215,
                                                                                  "_diffusers_version": "9"}}))) == []
    gpu = keys({"generate": {"num_gpus": 1}, "model": {"dtype": "bfloat16"}})
    assert differs(base, gpu) == ["generate", "evaluate"]
    assert gpu["generate"]["compute"]["generate"] == {"device": "cuda", "dtype": "bfloat16"}
    assert base["generate"]["compute"]["generate"] == {"device": "cpu", "dtype": "float32", "threads": 1}
    assert differs(base, keys({"encode": {"num_gpus": 1}, "model": {"dtype": "bfloat16"}}))[0] == "encode"


def test_placement_seeds_and_classes_are_not_in_the_stage_keys():
    """Pure placement and robustness settings change no byte: no stage key moves. Generation seeds
    and the class selection are units (each seed, each class its own work), not stage settings."""
    base = keys({})
    placement = {
        "data": {"max_failures": 3, "download": True, "storage_options": {"anon": True}},
        "encode": {"min_actors": 2, "max_actors": 7, "batch_size": 3},
        "coreset": {"latents_per_task": 1},
        "generate": {"num_actors": 5, "batch_size": 3, "max_retries": 0, "start_timeout_s": 5.0,
                     "fault_inject": "unit=s000-c00001-t00000"},
        "evaluate": {"num_workers": 3, "enabled": False, "metrics": False},
        "model": {"allow_download": True},
    }
    for name, settings in placement.items():
        for k, v in settings.items():
            assert differs(base, keys({name: {k: v}})) == [], f"{name}.{k} moved a key"
    assert differs(base, keys({"generate": {"seeds": [0, 1, 2]}})) == []
    assert differs(base, keys({"data": {"classes": ["0", "1", "2"]}})) == []
    # what does change the coreset's and the shards' bytes stays in: IPC, the unit layout
    assert differs(base, keys({"generate": {"ipc": 3}})) == ["coreset", "generate", "evaluate"]
    assert differs(base, keys({"generate": {"targets_per_unit": 3}})) == ["generate", "evaluate"]


def test_cpu_thread_counts_are_in_the_keys_gpu_ones_not():
    """On a CPU the workers' thread count (the whole CPUs they ask for, as Ray sets
    OMP_NUM_THREADS and the workers set torch's) changes bytes (a reduction split over threads
    sums in another order): it is in the stage's ``compute``; CPUs that resolve to the same count
    are placement; on a GPU the count is not in the key."""
    base = keys({})
    assert base["encode"]["compute"]["threads"] == 1 and base["coreset"]["compute"]["coreset"]["threads"] == 1
    assert base["evaluate"]["compute"]["evaluate"] == {"device": "cpu", "threads": 1}
    assert differs(base, keys({"encode": {"num_cpus": 2}})) == list(STAGE_NAMES)
    assert differs(base, keys({"encode": {"num_cpus": 0.9}})) == []              # still one thread
    assert differs(base, keys({"coreset": {"num_cpus": 4}})) == ["coreset", "generate", "evaluate"]
    assert differs(base, keys({"generate": {"num_cpus": 3}})) == ["generate", "evaluate"]
    assert differs(base, keys({"generate": {"num_cpus": 0.5}})) == []
    assert differs(base, keys({"evaluate": {"cpus_per_worker": 2}})) == ["evaluate"]
    assert differs(base, keys({"evaluate": {"cpus_per_worker": 1.5}})) == []
    assert keys({"evaluate": {"cpus_per_worker": 2}})["evaluate"]["compute"]["evaluate"]["threads"] == 2
    # on a GPU: the device (and dtype) is the key, not the CPUs beside it
    gpu = {"model": {"dtype": "bfloat16"}, "encode": {"num_gpus": 1}, "generate": {"num_gpus": 1},
           "evaluate": {"gpus_per_worker": 1}}
    g = keys(gpu)
    assert differs(base, g) == list(STAGE_NAMES)
    assert g["evaluate"]["compute"]["evaluate"] == {"device": "cuda"}
    more = keys({**gpu, "encode": {"num_gpus": 1, "num_cpus": 4}, "generate": {"num_gpus": 1, "num_cpus": 8},
                 "evaluate": {"gpus_per_worker": 1, "cpus_per_worker": 4}})
    assert differs(g, more) == []
    assert "threads" not in str(g["generate"]["compute"]["generate"]) and "threads" not in str(g["encode"]["compute"])
    # the coreset tasks never ask for a GPU: their threads count on a GPU job too
    assert differs(g, keys({**gpu, "coreset": {"num_cpus": 2}})) == ["coreset", "generate", "evaluate"]
    # fp32-CPU and bf16-GPU never share a key (the rule of every compute part)
    assert base["generate"]["compute"]["generate"]["dtype"] == "float32"
    assert g["generate"]["compute"]["generate"] == {"device": "cuda", "dtype": "bfloat16"}


def test_method_version_and_sections_it_reads(monkeypatch):
    import mgd_ray.methods as methods
    base = keys({})
    bumped = methods.Method(**{**vars(methods.METHODS["manifoldgd"]), "version": 2})
    monkeypatch.setitem(methods.METHODS, "manifoldgd", bumped)
    assert differs(base, keys({})) == ["coreset", "generate", "evaluate"]
    # a real-image method reads no sampler / guidance settings: changing them reuses its outputs
    rr = keys({"method": "random-real"})
    assert differs(rr, keys({"method": "random-real", "sampler": {"cfg_scale": 7.0},
                             "guidance": {"lam_mode": 0.5}})) == []
    assert "transformer_sha256" not in str(rr)        # and no DiT: it never runs one


def test_settings_check_names_a_data_setting_not_a_data_file(tmp_path):
    """A changed data setting refuses, naming it; a changed file does not (its class is redone,
    the others kept: the class keys)."""
    root = write_tree(tmp_path / "nette", imagefolder_files(corrupt=False))
    d = {"data": {"source": "imagefolder", "root": str(root), "classes": ["n01440764", "n02102040"]}}
    store = Store(str(tmp_path / "out"))
    for stage, key in keys(d, source=open_source(job_from_dict(d).data)).items():
        BY_NAME[stage].record_key(store, key)
    (root / "train" / "n02102040" / "img9.png").write_bytes(b"new")
    check_settings(store, keys(d, source=open_source(job_from_dict(d).data)))
    check_settings(store, keys({"data": {**d["data"], "classes": ["n01440764"]}}))
    with pytest.raises(SettingsChanged) as e:
        check_settings(store, keys({"data": {**d["data"], "limit_per_class": 2}}))
    assert "encode: data.limit_per_class: null -> 2" in str(e.value) and "--fresh encode" in str(e.value)


def test_keys_of_the_earlier_per_stage_form_refuse_clearly(tmp_path):
    """Outputs recorded with the earlier keys (seeds and the whole data fingerprint inside) are
    never silently matched: the settings check refuses, saying why and how on."""
    store = Store(str(tmp_path / "out"))
    new = keys({})
    for stage, key in new.items():
        old = {k: v for k, v in key.items() if k != "key_format"}
        old["data"] = {**old["data"], "fingerprint": "0123456789abcdef", "classes": None}
        if stage != "encode":
            old["generate"] = {**old["generate"], "seeds": [0]}
        BY_NAME[stage].record_key(store, old)
    with pytest.raises(SettingsChanged) as e:
        check_settings(store, new)
    msg = str(e.value)
    assert "earlier mgd_ray" in msg and "--fresh encode" in msg and "new output.dir" in msg
    with pytest.raises(SettingsChanged, match="nothing was discarded"):
        check_settings(store, new, before="generate")
    check_settings(store, new, before="encode")          # --fresh encode: nothing before it to check


def test_trial_hash_holds_every_class_not_the_seeds():
    """A trial trains on every class of one seed: its hash moves with a class, not with a seed."""
    from mgd_ray.pipeline.stage import Context
    info = SimpleNamespace(**vars(INFO), num_classes=10)

    def trial_hash(d):
        job = job_from_dict(d)
        return Context(job=job, store=None, source=open_source(job.data), info=info,
                       keys=stage_keys(job, info)).trial_hash()
    a = trial_hash({"data": {"classes": ["0", "1", "2"]}})
    assert trial_hash({"data": {"classes": ["0", "1", "2"]}, "generate": {"seeds": [0, 5]}}) == a
    assert trial_hash({"data": {"classes": ["0", "1", "2", "3"]}}) != a
    assert trial_hash({"data": {"classes": ["0", "1", "2"], "limit_per_class": 4}}) != a
    # ... and with the real test split it is scored on (not in any stage key: the latents never see it)
    assert trial_hash({"data": {"classes": ["0", "1", "2"], "test_limit_per_class": 5}}) != a


# ---- per-unit reuse on a real local Ray ----------------------------------------------------------
def files_under(out, *globs) -> dict:
    """{relative path: (mtime_ns, bytes)} of the files matching the globs."""
    return {str(f.relative_to(out)): (f.stat().st_mtime_ns, f.read_bytes()) for g in globs
            for f in sorted(out.glob(g)) if f.is_file()}


def shard_images(path) -> list:
    import pyarrow.parquet as pq
    return pq.read_table(path, columns=["sample_id", "label", "image"]).to_pylist()


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_added_seed_reuses_everything_else_and_a_removed_one_is_not_read(ray_cluster, tiny_prior, tmp_path):
    """The twin job with seed 0, then seeds [0, 1]: the latents, seed 0's coreset parts, shards
    and trials keep their bytes and mtime; only seed 1's parts, shards and trials are made and
    targets.parquet is merged again. Then seed 1 alone: nothing runs, and nothing of seed 0 (still
    on disk) is read: not the targets, not the results, not the counts, not the export."""
    import json

    import pyarrow.parquet as pq

    from mgd_ray.pipeline.driver import run_job
    from mgd_ray.pipeline.report import export_imagefolder, status_text
    from tests.test_pipeline import twin_dict
    out = tmp_path / "out"
    m0 = run_job(job_from_dict(twin_dict(out, tiny_prior)))
    assert m0["status"] == "complete" and m0["counts"]["images"] == 20
    seed0 = ("latents/**/*.parquet", "latents/_*.json", "coreset/parts/*-s000.parquet", "shards/s000-*.parquet",
             "eval/*/*-s0-*.json")
    before = files_under(out, *seed0)
    assert len([k for k in before if k.startswith("coreset/parts/")]) == 10
    assert len([k for k in before if k.startswith("shards/")]) == 10
    assert len([k for k in before if k.startswith("eval/")]) == 2

    m1 = run_job(job_from_dict(twin_dict(out, tiny_prior, generate={"seeds": [0, 1]})))
    assert m1["status"] == "complete", m1.get("reason")
    assert files_under(out, *seed0) == before, "work of seed 0 was touched when seed 1 was added"
    assert m1["encode"]["classes_encoded"] == 0 and m1["coreset"]["parts_built"] == 10
    assert m1["generate"]["ran"] == 10 and m1["evaluate"]["trials"] == 4
    assert len(list(out.glob("shards/s001-*.parquet"))) == 10
    assert len(list(out.glob("coreset/parts/*-s001.parquet"))) == 10
    t = pq.read_table(out / "coreset" / "targets.parquet", columns=["gen_seed", "label"])
    assert sorted(set(t.column("gen_seed").to_pylist())) == [0, 1] and t.num_rows == 40
    res = json.loads((out / "results.json").read_text())["protocols"][0]
    assert sorted(r["set_seed"] for r in res["results"]["manifoldgd"]["convnet3"]["runs"]) == [0, 1]
    assert m1["counts"]["images"] == 40

    # seed 0 removed: its parts, shards and trials stay on disk, outside the job
    m2 = run_job(job_from_dict(twin_dict(out, tiny_prior, generate={"seeds": [1]})))
    assert m2["status"] == "complete", m2.get("reason")
    assert m2["generate"]["ran"] == 0 and m2["coreset"]["parts_built"] == 0
    assert files_under(out, *seed0) == before
    t = pq.read_table(out / "coreset" / "targets.parquet", columns=["gen_seed"])
    assert set(t.column("gen_seed").to_pylist()) == {1} and t.num_rows == 20
    res = json.loads((out / "results.json").read_text())["protocols"][0]
    for kind in ("manifoldgd", "random-real"):
        assert [r["set_seed"] for r in res["results"][kind]["convnet3"]["runs"]] == [1]
    assert m2["counts"] == {**m2["counts"], "images": 20, "units": 10, "units_committed": 10}
    assert "shards committed: 10 of 10 units" in status_text(str(out))
    assert export_imagefolder(str(out), str(tmp_path / "exp")) == 20
    assert all("s1-" in p.name for p in (tmp_path / "exp").rglob("*.png"))


def _class_dirs(root, classes, n=6, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(d / f"{i}.png")


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_added_class_reuses_the_others_and_a_changed_class_is_redone(ray_cluster, tiny_prior, tmp_path):
    """An imagefolder with class dirs 0..3; the job on classes 0..2, then 0..3: the three classes'
    latents partitions and coreset parts keep their bytes and mtime, their shards their images and
    footer keys (only the ClassLabel list in the schema is rewritten, to name the fourth class),
    and only class 3 is encoded, built and generated. Then one image of class 1 rewritten: class
    1 alone is encoded, built and generated again; classes 0, 2, 3 are untouched."""
    import pyarrow.parquet as pq

    from mgd_ray.pipeline.driver import run_job
    from mgd_ray.pipeline.settings import CLASS_KEY, SHARD_KEY
    from tests.test_pipeline import twin_dict
    data_root = tmp_path / "data"
    _class_dirs(data_root, ["0", "1", "2", "3"])
    out = tmp_path / "out"

    def job(classes):
        data = {"source": "imagefolder", "root": str(data_root), "classes": classes, "limit_per_class": None,
                "test_limit_per_class": None}
        return job_from_dict(twin_dict(out, tiny_prior, data=data, encode={"preprocess": "center-crop"},
                                       evaluate={"enabled": False}))

    def footers():
        return {f.name: {k: v for k, v in pq.read_metadata(f).metadata.items() if k.startswith(b"mgd_ray.")}
                for f in sorted((out / "shards").glob("*.parquet"))}

    def class_files(*labels):
        return files_under(out, *[g for k in labels for g in (f"latents/label={k}/*.parquet",
                                                              f"coreset/parts/c{k:05d}-*.parquet")])

    m = run_job(job(["0", "1", "2"]))
    assert m["status"] == "complete" and m["counts"]["units"] == 3
    kept = class_files(0, 1, 2)
    assert len(kept) == 6
    images = {f.name: shard_images(f) for f in (out / "shards").glob("*.parquet")}
    keys_before = footers()
    assert all(set(v) == {SHARD_KEY.encode(), CLASS_KEY.encode()} for v in keys_before.values())

    m = run_job(job(["0", "1", "2", "3"]))
    assert m["status"] == "complete", m.get("reason")
    assert m["encode"]["classes_encoded"] == 1 and m["encode"]["classes_kept"] == 3
    assert m["coreset"]["parts_built"] == 1 and m["generate"]["ran"] == 1 and m["generate"]["relabelled"] == 3
    assert class_files(0, 1, 2) == kept, "the kept classes' latents or coreset parts were touched"
    assert len(class_files(3)) == 2
    for name, rows in images.items():
        assert shard_images(out / "shards" / name) == rows, f"{name}: images changed"
        assert footers()[name] == keys_before[name]
    import json
    for f in (out / "shards").glob("*.parquet"):   # every shard names the job's four classes
        hf = json.loads(pq.read_schema(f).metadata[b"huggingface"])
        assert hf["info"]["features"]["label"]["names"] == ["0", "1", "2", "3"], f.name
    assert sorted(pq.read_table(out / "coreset" / "targets.parquet", columns=["label"]).column("label").to_pylist()) \
        == [0, 0, 1, 1, 2, 2, 3, 3]

    # one image of class 1 rewritten: its class key moves; the other three classes stay
    others = class_files(0, 2, 3)
    shards_before = files_under(out, "shards/*.parquet")
    keys_before = footers()
    time.sleep(0.01)
    img = data_root / "train" / "1" / "2.png"
    from PIL import Image
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(img)
    m = run_job(job(["0", "1", "2", "3"]))
    assert m["status"] == "complete", m.get("reason")
    assert m["encode"]["classes_encoded"] == 1 and m["coreset"]["parts_built"] == 1 and m["generate"]["ran"] == 1
    assert class_files(0, 2, 3) == others
    changed = [k for k, v in files_under(out, "shards/*.parquet").items() if shards_before[k] != v]
    assert changed == ["shards/s000-c00001-t00000.parquet"]
    after, redone = footers(), changed[0].split("/")[1]
    assert after[redone][CLASS_KEY.encode()] != keys_before[redone][CLASS_KEY.encode()]
    assert len({v[SHARD_KEY.encode()] for v in after.values()}) == 1      # one stage key throughout


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_added_seed_on_s3_output(ray_cluster, tiny_prior, tmp_path, moto_s3):
    """The same on an s3:// output.dir (moto, loopback), where listings are cached by the client
    and the parts, latents and shards are written by other processes: seed 1 added to a finished
    seed 0 builds only seed 1's parts and shards; seed 0's objects keep their ETags."""
    import s3fs

    from mgd_ray.pipeline.driver import run_job
    from tests.test_pipeline import GEN, twin_dict
    so = moto_s3.storage_options
    bucket = moto_s3.create_bucket("mgd-keys")
    url = f"s3://{bucket}/twin"

    def job(seeds):
        return job_from_dict(twin_dict(url, tiny_prior, generate={"seeds": seeds},
                                       output={"dir": url, "storage_options": so}))
    m = run_job(job([0]), GEN)
    assert m["counts"]["units_committed"] == 10 and m["encode"]["rows"] == 120
    fs = s3fs.S3FileSystem(**so)

    def etags(prefix):
        fs.invalidate_cache()
        return {k: v["ETag"] for k, v in fs.find(f"{bucket}/twin/{prefix}", detail=True).items()}
    before = {**etags("latents"), **etags("coreset/parts"), **etags("shards")}
    m = run_job(job([0, 1]), GEN)
    assert m["counts"]["units_committed"] == 20 and m["generate"]["ran"] == 10
    assert m["encode"]["classes_encoded"] == 0 and m["coreset"]["parts_built"] == 10
    after = {**etags("latents"), **etags("coreset/parts"), **etags("shards")}
    assert {k: after.get(k) for k in before} == before
    assert len([k for k in after if "/shards/s001-" in k]) == 10
    assert len([k for k in after if "/coreset/parts/" in k and k.endswith("-s001.parquet")]) == 10


def test_protocol_keys_are_their_own():
    """Each evaluation protocol has its own key (no Ray): another protocol's settings, a protocol's
    students, training seeds and name are in none of the stage keys; the settings check compares only
    the protocols both the record and the job list."""
    from mgd_ray.pipeline.stage import EVALUATE
    base = {"data": {"source": "sklearn-digits"}, "evaluate": {"epochs": 2}}
    more = {**base, "evaluate": {"epochs": 2, "also": [{"name": "long", "epochs": 5}]}}
    a, b = keys(base), keys(more)
    assert differs(a, b) == ["evaluate"] and a["evaluate"]["protocols"]["hard-label"] == b["evaluate"]["protocols"]["hard-label"]
    assert b["evaluate"]["protocols"]["long"]["epochs"] == 5 and "students" not in b["evaluate"]["protocols"]["long"]
    assert EVALUATE.diff(a["evaluate"], b["evaluate"]) == [] == EVALUATE.diff(b["evaluate"], a["evaluate"])
    c = keys({**base, "evaluate": {"epochs": 2, "also": [{"name": "long", "epochs": 6}]}})
    assert EVALUATE.diff(b["evaluate"], c["evaluate"]) == ["protocols.long.epochs: 5 -> 6"]
    # students and training seeds add trials (units): no key changes
    assert keys({**base, "evaluate": {"epochs": 2, "students": ["convnet3", "convnet6"], "train_seeds": 1}}) == a


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_an_added_protocol_reuses_the_others_trials(ray_cluster, tiny_prior, tmp_path):
    """The twin job with its hard-label protocol, then with a second protocol (``evaluate.also``): the
    first's trials keep their bytes and mtime, only the second's run, results.json holds both apart.
    A changed setting of a finished protocol is refused before any work; a dropped protocol's trials
    stay on disk, unread, and are reused when it is listed again."""
    import json

    from mgd_ray.pipeline.driver import run_job
    from mgd_ray.pipeline.report import status_text
    from tests.test_pipeline import twin_dict
    out = tmp_path / "out"
    second = {"name": "hard-3ep", "protocol": "hard-label", "epochs": 3, "train_seeds": 1, "flip": False}

    def job(*also):
        return job_from_dict(twin_dict(out, tiny_prior, evaluate={"also": list(also)}))

    m0 = run_job(job())
    assert m0["status"] == "complete", m0.get("reason")
    first = files_under(out, "eval/hard-label/*.json")
    assert len(first) == 2 and not (out / "eval" / "hard-3ep").exists()

    m1 = run_job(job(second))
    assert m1["status"] == "complete", m1.get("reason")
    assert files_under(out, "eval/hard-label/*.json") == first, "the first protocol's trials were touched"
    assert m1["generate"]["ran"] == 0 and m1["evaluate"]["protocols"] == ["hard-label", "hard-3ep"]
    made = files_under(out, "eval/hard-3ep/*.json")
    assert len(made) == 2 and {json.loads(v[1])["epochs"] for v in made.values()} == {3}
    doc = json.loads((out / "results.json").read_text())
    assert [p["name"] for p in doc["protocols"]] == ["hard-label", "hard-3ep"]
    assert all(r["epochs"] == 2 for r in doc["protocols"][0]["results"]["manifoldgd"]["convnet3"]["runs"])
    assert all(r["epochs"] == 3 for r in doc["protocols"][1]["results"]["manifoldgd"]["convnet3"]["runs"])
    assert "results [hard-3ep] (hard-label v1" in status_text(str(out))

    # the second protocol with another epoch count: refused, naming it; nothing discarded
    with pytest.raises(SettingsChanged, match=r"protocols\.hard-3ep\.epochs: 3 -> 4"):
        run_job(job(dict(second, epochs=4)))
    assert files_under(out, "eval/*/*.json") == {**first, **made}

    # dropped: its trials stay on disk and the results no longer list it; listed again: reused
    m2 = run_job(job())
    assert m2["status"] == "complete" and files_under(out, "eval/*/*.json") == {**first, **made}
    assert [p["name"] for p in json.loads((out / "results.json").read_text())["protocols"]] == ["hard-label"]
    # the dropped protocol's settings stay recorded: listed again with other settings, it is still refused
    with pytest.raises(SettingsChanged, match=r"protocols\.hard-3ep\.epochs: 3 -> 4"):
        run_job(job(dict(second, epochs=4)))
    m3 = run_job(job(second))
    assert m3["status"] == "complete" and files_under(out, "eval/*/*.json") == {**first, **made}
    assert [p["name"] for p in json.loads((out / "results.json").read_text())["protocols"]] == ["hard-label", "hard-3ep"]
