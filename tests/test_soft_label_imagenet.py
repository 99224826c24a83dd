"""The `soft-label-imagenet` protocol (RDED's ImageNet-1K evaluation) and its teacher.

The teacher is a random torchvision ResNet-18 saved as the fetch command leaves the real one (the hub
cache layout of ``timm/resnet18.tv_in1k``: ``model.safetensors`` in torchvision's key names +
``config.json``). Nothing is downloaded (HF_HUB_OFFLINE=1, an empty cache of the test's own)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mgd_ray.config import job_from_dict, load_job

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "timm/resnet18.tv_in1k"
SPEC = "hub:" + TEACHER


def teacher_files(num_classes: int = 1000, seed: int = 0, rename: bool = False) -> dict[str, bytes]:
    """A random torchvision resnet18's state dict as the hub repo holds it (safetensors + config.json)."""
    import torchvision
    from safetensors.torch import save

    torch.manual_seed(seed)
    sd = torchvision.models.resnet18(weights=None, num_classes=num_classes).state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}   # as torchvision's own file
    if rename:                                           # timm's own key names for the head: not torchvision's
        sd = {k.replace("fc.", "head.fc."): v for k, v in sd.items()}
    cfg = {"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": {"tag": "tv_in1k", "input_size": [3, 224, 224]}}
    return {"model.safetensors": save({k: v.contiguous() for k, v in sd.items()}),
            "config.json": json.dumps(cfg).encode()}


@pytest.fixture(scope="module")
def files():
    return teacher_files()


def write_teacher(hub: Path, files: dict[str, bytes]) -> str:
    from benchmarks.hub_cache import write_hub_repo
    return write_hub_repo(hub, TEACHER, files)


def soft_job(extra=()):
    return job_from_dict({}, ["evaluate.protocol=soft-label-imagenet", f"evaluate.teacher={SPEC}", *extra])


# ---- the recipe's pieces against references written here --------------------------------------------
def test_kl_and_soft_targets_under_cutmix_match_a_reference():
    """CutMix as RDED's rand_bbox/cutmix (replayed here from the same generator with numpy), the teacher's
    soft targets softmax(t / T) and the batch-mean KL, in float64 by hand."""
    from mgd_ray.eval import soft_label_imagenet as P
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 3, 20, 20, generator=g)
    mixed, perm, lam, box = P.cutmix(x, torch.Generator().manual_seed(5))
    # reference replay of the draws: permutation, lam ~ Beta(1,1) = U(0,1), centre (y, x)
    r = torch.Generator().manual_seed(5)
    ref_perm = torch.randperm(6, generator=r)
    ref_lam = float(torch.rand((), generator=r))
    cy, cx = int(torch.randint(0, 20, (1,), generator=r)), int(torch.randint(0, 20, (1,), generator=r))
    cut = int(20 * np.sqrt(1 - ref_lam))
    y1, y2 = np.clip([cy - cut // 2, cy + cut // 2], 0, 20)
    x1, x2 = np.clip([cx - cut // 2, cx + cut // 2], 0, 20)
    assert torch.equal(perm, ref_perm) and lam == ref_lam and box == (y1, y2, x1, x2)
    ref = x.numpy().copy()
    ref[:, :, y1:y2, x1:x2] = x.numpy()[ref_perm.numpy(), :, y1:y2, x1:x2]
    assert np.array_equal(mixed.numpy(), ref)
    assert (y2 - y1) * (x2 - x1) > 0, "seed gives an empty box: pick another"
    # soft targets and KL on the mixed batch
    T = 20.0
    t_logits, s_logits = torch.randn(6, 1000, generator=g) * 30, torch.randn(6, 1000, generator=g) * 30
    t64, s64 = t_logits.double().numpy() / T, s_logits.double().numpy() / T
    p = np.exp(t64 - t64.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    log_q = s64 - s64.max(1, keepdims=True) - np.log(np.exp(s64 - s64.max(1, keepdims=True)).sum(1, keepdims=True))
    kl = float((p * (np.log(p) - log_q)).sum() / 6)
    assert np.allclose(P.soft_targets(t_logits, T).numpy(), p, rtol=1e-5, atol=1e-9)
    assert float(P.kd_loss(s_logits, t_logits, T)) == pytest.approx(kl, rel=1e-5)
    assert float(P.kd_loss(t_logits, t_logits, T)) == pytest.approx(0.0, abs=1e-6)
    assert float(P.kd_loss(s_logits, t_logits, 4.0)) != pytest.approx(kl, rel=1e-3)   # T matters


def test_recipe_numbers_are_rdeds():
    from mgd_ray.eval import soft_label_imagenet as P
    assert (P.batch_size(10, 1000), P.batch_size(50, 1000), P.batch_size(1, 1000)) == (100, 200, 20)
    assert (P.batch_size(10, 10), P.batch_size(2, 3)) == (50, 6)              # capped at IPC x classes
    assert P.lr_factor(0, 300) == 1.0 and P.lr_factor(299, 300) == pytest.approx(0.5 * (1 + math.cos(math.pi * 299 / 600)))
    assert P.eval_epochs(300) == list(range(250, 301, 10)) and P.eval_epochs(1) == [1]
    assert P.input_size(256) == 224 and P.TEMPERATURE == 20 and P.EPOCHS == 300
    net = P.build_torchvision("resnet18", 10)
    decay, no_decay = P.param_groups(net)
    assert all(p.ndim > 1 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) == 21 and all(p.ndim == 1 for p in no_decay["params"])   # 20 convs + fc
    # ShufflePatches(2): each image is its four quadrants, rearranged by a column swap and a row swap
    x = torch.arange(4.0).view(1, 1, 2, 2).repeat(64, 3, 1, 1)
    out = P.shuffle_patches(x, torch.Generator().manual_seed(0))
    seen = {tuple(o[0].flatten().tolist()) for o in out}
    assert seen == {(0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0)}
    i, j, h, w = P.rrc_params(256, 256, torch.Generator().manual_seed(1))
    assert 0.5 * 256 * 256 * 0.98 <= h * w <= 256 * 256 and i + h <= 256 and j + w <= 256


def test_teacher_labels_each_mixed_batch_on_the_device():
    """In training, the teacher sees exactly the student's (augmented, CutMixed) batches; the student is
    torchvision's BN ResNet-18; the record names the protocol and its version."""
    from mgd_ray.eval import TrainConfig, train_and_evaluate
    from mgd_ray.eval import soft_label_imagenet as P
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (12, 32, 32, 3), generator=g, dtype=torch.uint8)
    y = torch.arange(3).repeat_interleave(4)
    teacher = P.build_torchvision("resnet18", 3)
    seen = {"s": [], "t": []}
    teacher.register_forward_pre_hook(lambda m, a: seen["t"].append(a[0].clone()))

    def wrap(m):
        m.register_forward_pre_hook(lambda mod, a: seen["s"].append(a[0].clone()) if mod.training else None)
        return m
    cfg = TrainConfig(protocol="soft-label-imagenet", student="resnet18", epochs=2, seed=0)
    res = train_and_evaluate(x, y, x, y, 3, cfg, teacher=teacher, model_wrapper=wrap)
    assert len(seen["s"]) == len(seen["t"]) == 2 * 1                  # batch = min(50, 4 x 3) = 12
    assert all(torch.equal(a, b) for a, b in zip(seen["s"], seen["t"]))
    assert seen["t"][0].shape == (12, 3, 28, 28)                      # 32 -> RandomResizedCrop 28 (7/8)
    assert res["protocol"] == "soft-label-imagenet" and res["protocol_version"] == "1"
    assert res["optimizer"]["batch_size"] == 12 and res["input_size"] == 28 and "RDED" in res["optimizer"]["source"]


def test_hard_label_imagenet_is_the_recipe_with_mixed_hard_labels():
    """hard-label-imagenet: the same student, augmentation and CutMix, no teacher; its loss is CutMix's label rule
    on one-hot labels, checked against the cross-entropy to the mixed one-hot targets written out here."""
    from mgd_ray.eval import TrainConfig, train_and_evaluate
    from mgd_ray.eval import soft_label_imagenet as P
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, 20, 20, generator=g)
    _, perm, _, box = P.cutmix(x, torch.Generator().manual_seed(5))
    y1, y2, x1, x2 = box
    a = (y2 - y1) * (x2 - x1) / 400.0
    assert 0 < a < 1, "seed gives an empty or full box: pick another"
    logits, y = torch.randn(6, 7, generator=g).double(), torch.tensor([0, 1, 2, 3, 4, 5])
    target = (1 - a) * np.eye(7)[y.numpy()] + a * np.eye(7)[y[perm].numpy()]
    lz = logits.numpy() - logits.numpy().max(1, keepdims=True)
    log_p = lz - np.log(np.exp(lz).sum(1, keepdims=True))
    ref = float(-(target * log_p).sum(1).mean())
    assert float(P.hard_cutmix_loss(logits, y, perm, box, 20, 20)) == pytest.approx(ref, rel=1e-9)
    # trains without a teacher (soft-label-imagenet refuses to), on the same view; the record says which labels
    torch.set_num_threads(1)
    xs = torch.randint(0, 256, (12, 32, 32, 3), generator=g, dtype=torch.uint8)
    ys = torch.arange(3).repeat_interleave(4)
    res = train_and_evaluate(xs, ys, xs, ys, 3, TrainConfig(protocol="hard-label-imagenet", student="resnet18",
                                                            epochs=1, seed=0))
    assert res["protocol"] == "hard-label-imagenet" and res["labels"].startswith("hard")
    assert res["input_size"] == 28 and res["optimizer"]["temperature"] is None and 0 <= res["final_acc"] <= 1
    from mgd_ray.eval.soft_label import TeacherError
    with pytest.raises(TeacherError):
        train_and_evaluate(xs, ys, xs, ys, 3, TrainConfig(protocol="soft-label-imagenet", student="resnet18", epochs=1))
    # the job reads no teacher for it; the ranking takes HLR from it for soft-label-imagenet's torchvision student
    job = job_from_dict({}, ["evaluate.protocol=hard-label-imagenet", f"evaluate.teacher={SPEC}"])
    from mgd_ray.hub import required_models
    assert required_models(job) == [] or all(m.repo_id != TEACHER for m in required_models(job))


# ---- the teacher: fetched into the hub cache, loaded offline into torchvision -------------------------
def test_fetch_lists_exactly_the_teacher_files():
    from mgd_ray.hub import required_models
    ms = {m.repo_id: m for m in required_models(load_job(ROOT / "jobs" / "imagenet1k.yaml"))}
    assert ms[TEACHER].allow_patterns == ["config.json", "model.safetensors"] and ms[TEACHER].revision == "main"
    job = soft_job()                              # a prior's generator: the teacher is all there is to fetch
    assert [m.repo_id for m in required_models(job)] == [TEACHER]
    assert required_models(job_from_dict({}, ["evaluate.protocol=hard-label", f"evaluate.teacher={SPEC}"])) == []


def test_fetch_proves_the_teacher_offline(offline_hf, files):
    from mgd_ray.hub import fetch_models
    commit = write_teacher(offline_hf, files)
    lines = []
    rep = fetch_models([soft_job()], echo=lines.append)
    out = "\n".join(lines)
    assert rep["offline"] is True and not rep["problems"], out
    assert f"{TEACHER}@main = commit {commit}" in out
    (ld,) = [x for x in rep["loads"] if "teacher" in x]          # (the job's prior generator loads too)
    assert ld["architecture"] == "torchvision.models.resnet18" and ld["strict"] and ld["num_classes"] == 1000
    import hashlib
    assert ld["weights_sha256"] == hashlib.sha256(files["model.safetensors"]).hexdigest()[:16]
    assert "loaded offline into torchvision.models.resnet18 (strict)" in out
    # the loader gives the very weights that were written
    from safetensors.torch import load
    from mgd_ray.eval.soft_label_imagenet import load_teacher
    net = load_teacher(SPEC)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert torch.equal(net.fc.weight, load(files["model.safetensors"])["fc.weight"])


def test_fetch_refuses_a_teacher_that_is_not_torchvisions_resnet18(offline_hf):
    from mgd_ray.hub import FetchError, fetch_models
    write_teacher(offline_hf, teacher_files(rename=True))
    with pytest.raises(FetchError, match="does not load offline"):
        fetch_models([soft_job()], echo=lambda s: None)


def test_door_refuses_a_missing_teacher_before_any_work(offline_hf, files):
    from mgd_ray.config import JobError
    from mgd_ray.pipeline.door import check_hub_teacher
    from mgd_ray.teachers import TeacherNotFetched
    job = soft_job()
    with pytest.raises(TeacherNotFetched, match="mgd-ray models fetch"):
        check_hub_teacher(job)
    write_teacher(offline_hf, files)
    check_hub_teacher(job)                                      # now it is there
    with pytest.raises(JobError, match="needs evaluate.teacher"):
        job_from_dict({}, ["evaluate.protocol=soft-label-imagenet"])
    with pytest.raises(JobError, match="hub:ORG/NAME"):
        job_from_dict({}, ["evaluate.protocol=soft-label-imagenet", "evaluate.teacher=/some/dir"])
    with pytest.raises(JobError, match="only protocol soft-label-imagenet"):
        job_from_dict({}, ["evaluate.protocol=soft-label", f"evaluate.teacher={SPEC}"])


# ---- end to end under Ray Train, on the ImageNet twin -------------------------------------------------
@pytest.fixture(scope="module")
def teacher_env(tmp_path_factory):
    """A hub cache holding the random teacher, in the environment BEFORE Ray starts (its workers inherit it)."""
    from huggingface_hub import constants
    hf = tmp_path_factory.mktemp("hf")
    hub = hf / "hub"
    hub.mkdir()
    write_teacher(hub, teacher_files(seed=3))
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HOME", str(hf))
    mp.setenv("HF_HUB_CACHE", str(hub))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(constants, "HF_HUB_CACHE", str(hub))
    # the FID Inception-v3 network with random weights, where `models fetch` puts the real file
    mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch")))
    from mgd_ray.eval.inception import write_stand_in
    write_stand_in()
    import ray
    if ray.is_initialized():              # a cluster started without the cache in its environment
        ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=512 * 1024**2,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield hub
    ray.shutdown()
    mp.undo()


@pytest.mark.ray
@pytest.mark.slow      # Ray Data + actors + Ray Train, ~3 min on the shared 2-core machine
@pytest.mark.timeout(900)
def test_soft_label_imagenet_end_to_end_on_the_twin(teacher_env, tmp_path):
    from tests.test_imagenet_twin import SIZE, make_imagefolder, twin_overrides
    from mgd_ray.models import build_dit, build_vae, save_generator
    from mgd_ray.pipeline.driver import run_job
    torch.manual_seed(0)
    models = save_generator(build_dit(1000, 4, 16, patch_size=2).eval(),
                            build_vae(3, (16, 32), 4, sample_size=32, scaling_factor=0.5).eval(),
                            tmp_path / "models", legacy_class_name=True)
    data = make_imagefolder(tmp_path / "imagenet")
    # the job file's three protocols, in its order: soft-label-imagenet (a ResNet-18 student), hard-label (a
    # ConvNet-3 at the twin's size, one epoch, instead of its three students at 224 px), hard-label-imagenet
    sets = [s for s in twin_overrides(data, models, tmp_path / "out")
            if not s.startswith(("evaluate.protocol", "evaluate.also", "evaluate.metrics"))]   # the job's metrics
    sets = [s.replace("evaluate.students=[convnet3]", "evaluate.students=[resnet18]") for s in sets]
    sets = sets[:-1] + ["evaluate.also.hard-label.students=[convnet3]", "evaluate.also.hard-label.epochs=1",
                        "evaluate.also.hard-label.n_evals=1", "evaluate.also.hard-label.train_seeds=1",
                        f"evaluate.also.hard-label.image_size={SIZE}", "evaluate.also.hard-label-imagenet.epochs=1",
                        f"evaluate.also.hard-label-imagenet.image_size={SIZE}", sets[-1]]
    job = load_job(ROOT / "jobs" / "imagenet1k.yaml", sets)
    assert job.evaluate.protocol == "soft-label-imagenet" and job.evaluate.teacher == SPEC
    assert [n for n, _ in job.evaluations()] == ["soft-label-imagenet", "hard-label", "hard-label-imagenet"]
    m = run_job(job)
    assert m["status"] == "complete", m.get("status")
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    soft, hard, hard_tv = doc["protocols"]
    assert soft["name"] == soft["protocol"] == "soft-label-imagenet" and soft["protocol_version"] == "1"
    assert hard["name"] == hard["protocol"] == "hard-label" and hard["protocol_version"] == "1"
    assert hard_tv["name"] == "hard-label-imagenet" and hard_tv["protocol_version"] == "1"
    for pr, student in ((soft, "resnet18"), (hard, "convnet3"), (hard_tv, "resnet18")):
        # each protocol beside its own random-real baseline, under its own name
        assert set(pr["results"]) == {"manifoldgd", "random-real"} and set(pr["results"]["manifoldgd"]) == {student}
        assert "gain_over_random_real" in pr["results"]["manifoldgd"][student]
        assert all(r["protocol"] == pr["protocol"] for r in pr["ranking"]["rows"])
    recs = [json.loads(f.read_text()) for f in sorted((tmp_path / "out" / "eval" / "soft-label-imagenet").glob("*.json"))]
    assert len(recs) == 2
    assert {r["kind"] for r in recs} == {"manifoldgd", "random-real"}
    for r in recs:
        assert r["protocol"] == "soft-label-imagenet" and r["protocol_version"] == "1" and r["student"] == "resnet18"
        assert r["input_size"] == 28 and r["optimizer"]["temperature"] == 20 and 0 <= r["final_acc"] <= 1
    hard_recs = [json.loads(f.read_text()) for f in sorted((tmp_path / "out" / "eval" / "hard-label").glob("*.json"))]
    assert len(hard_recs) == 2 and {r["student"] for r in hard_recs} == {"convnet3"}
    assert {r["protocol"] for r in hard_recs} == {"hard-label"}
    # status and the report page show both, apart
    from mgd_ray.pipeline.report import status_text
    text = status_text(str(tmp_path / "out"))
    assert "results [soft-label-imagenet] (soft-label-imagenet v1" in text and "results [hard-label] (hard-label v1" in text
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<h3 id=results-soft-label-imagenet>" in page and "<h3 id=results-hard-label>" in page
    # the distribution metrics of the ImageNet family: in the FID Inception-v3 features (here the random stand-in)
    dist = doc["distribution"]
    assert "Inception" in dist["feature_space"] and "STAND-IN" in dist["feature_space"]
    assert set(dist["sets"]) == {"0"} and dist["sets"]["0"]["fid"] >= 0
    # the door refuses the same job when the teacher is not in the cache, before anything is written
    import shutil
    shutil.rmtree(teacher_env / f"models--{TEACHER.replace('/', '--')}")
    from mgd_ray.teachers import TeacherNotFetched
    out2 = tmp_path / "out2"
    with pytest.raises(TeacherNotFetched):
        run_job(load_job(ROOT / "jobs" / "imagenet1k.yaml", sets[:-1] + [f"output.dir={out2}"]))
    assert not (out2 / "shards").exists()
