"""The dry-run plan on a small job (the ImageNet-scale plans are in test_cluster.py)."""

import json
from pathlib import Path

import pytest

from mgd_ray.config import job_from_dict


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


# ---- the evaluation's bill (plan/cost.py: eval_rates, _evaluation_estimate, evaluation_cuts) -----------
from mgd_ray.pipeline.plan.cost import hours_text

ROOT = Path(__file__).resolve().parents[1]
IPC50 = ["generate.ipc=50", "generate.targets_per_unit=50"]


def _imagenet1k_plan(tmp_path, sets=()):
    """The ImageNet-1K job's dry-run plan with neither the data (a missing local root: the known split
    sizes) nor the model (an empty offline hub cache: the known configs) at hand."""
    from mgd_ray.config import load_job
    from mgd_ray.pipeline.plan import dry_run_plan
    job = load_job(ROOT / "jobs" / "imagenet1k.yaml", [f"data.root={tmp_path / 'no-imagenet'}", *sets])
    return dry_run_plan(job, ["encode", "coreset", "generate", "evaluate"])


def test_a100_figure_follows_from_the_published_numbers():
    from mgd_ray import known
    rate, text = known.a100_resnet18_train_images_per_s(224)
    # FFCV rn18_88_epochs: 71 epochs at 160 px (<= 70: ramp rounds to 160), 17 at 192; 1,251 batches of 1,024
    mean_px2 = (71 * 160 ** 2 + 17 * 192 ** 2) / 88
    fp16 = 88 * 1251 * 1024 / (187.3 * 60)
    assert rate == pytest.approx(fp16 * mean_px2 / 224 ** 2 / (15977 / 7365))
    assert 2000 < rate < 3000 and "187.3 min" in text and "7,365" in text
    # the cross-check the benchmark prints: NVIDIA's ResNet-50 TF32 per A100 x FLOP ratio (4.09 / 1.81 GMACs)
    assert rate == pytest.approx(7365 / 8 * 4.09 / 1.81, rel=0.25)


def test_evaluation_hours_follow_from_the_throughput_model(tmp_path, offline_hf):
    """Each protocol's bill from the throughput model, and the job's evaluation = their sum: the job
    file runs RDED's soft-label protocol first, the paper's hard-label one second, and RDED's recipe with
    hard labels third."""
    from mgd_ray import known
    from mgd_ray.pipeline.plan.flops import student_flops
    p = _imagenet1k_plan(tmp_path, IPC50)
    all_ = p["estimate"]["stages"]["evaluate"]
    assert [e["name"] for e in all_["protocols"]] == ["soft-label-imagenet", "hard-label", "hard-label-imagenet"]
    r, _ = known.a100_resnet18_train_images_per_s(224)
    for ev in all_["protocols"]:
        if ev["protocol"] in ("soft-label-imagenet", "hard-label-imagenet"):      # RDED's recipe
            # 300 epochs; 256 px cropped to 224; tests after epochs 250, 260, ..., 300 (RDED: every 10 after 80 %)
            assert ev["epochs"] == 300 and ev["image_px"] == 224 and ev["n_evals"] == 6
            assert list(ev["per_student"]) == ["resnet18"]
            # a frozen ResNet-18 forward per training image, soft labels only
            teacher = 1 / (3 * r) if ev["protocol"] == "soft-label-imagenet" else 0.0
        else:
            # the protocol's rule at IPC 50: 1,000 epochs; ~n_evals test passes; its three students at 224 px
            assert ev["epochs"] == 1000 and ev["n_evals"] == 100 and ev["image_px"] == 224
            assert list(ev["per_student"]) == ["resnetap10", "convnet6", "resnet18"]
            teacher = 0.0
        for student, c in ev["per_student"].items():
            scale = student_flops(student, 3, 1000, ev["image_px"]) / student_flops("resnet18", 3, 1000, 224)
            s_train, s_test = scale / r + scale * teacher, scale / (3 * r)
            assert c["seconds_per_train_image"] == pytest.approx(s_train)
            assert c["train_images_per_trial"] == ev["epochs"] * 1000 * 50 and c["ipc"] == 50
            assert c["test_images_per_trial"] == ev["n_evals"] * 50_000
            # trials: (the method + random real) x 3 generation seeds x 1 training seed
            assert c["trials"] == 6 and c["baseline_trials"] == 3
            assert c["device_hours"] == pytest.approx(
                6 * (c["train_images_per_trial"] * s_train + c["test_images_per_trial"] * s_test) / 3600, rel=1e-3)
        assert ev["device_hours"] == pytest.approx(sum(c["device_hours"] for c in ev["per_student"].values()),
                                                   abs=0.01)
    e = p["estimate"]
    assert all_["device_seconds"] == pytest.approx(sum(ev["device_seconds"] for ev in all_["protocols"]))
    assert all_["trials"] == 6 + 18 + 6
    assert e["evaluation"]["share"] == pytest.approx(all_["device_hours"] / e["total_device_hours"], rel=1e-2)


def test_imagenet1k_ipc50_warns_that_the_evaluation_dominates(tmp_path, offline_hf):
    # the soft-label protocol alone (the second dropped): it still dominates at IPC 50
    p = _imagenet1k_plan(tmp_path, IPC50 + ["evaluate.also=[]"])
    ev = p["estimate"]["evaluation"]
    assert ev["dominates"] and ev["share"] > 0.5
    for setting in ("generate.seeds", "evaluate.baselines", "evaluate.epochs"):
        assert setting in ev["message"]
    assert "evaluate.also" not in ev["message"]
    assert any(line.startswith("WARNING: the evaluation is") for line in p["summary"])
    # both protocols (the job file): the protocols themselves are a cut, each with its hours, and the
    # second's settings are named where they live (evaluate.also.hard-label.*), its students each with hours
    p = _imagenet1k_plan(tmp_path, IPC50)
    ev = p["estimate"]["evaluation"]
    per = {e["name"]: e for e in p["estimate"]["stages"]["evaluate"]["protocols"]}
    assert ev["dominates"] and ev["cuts"][0].startswith("the protocols themselves")
    for name, e in per.items():
        assert f"{name} {hours_text(e['device_seconds'] / 3600)}" in ev["cuts"][0]
    for setting in ("evaluate.also.hard-label.students", "resnetap10", "convnet6", "evaluate.also.hard-label.n_evals",
                    "evaluate.also.hard-label.epochs", "[soft-label-imagenet] evaluate.epochs"):
        assert setting in ev["message"]
    # a cheaper protocol the job already runs is not offered as the other's replacement
    assert not any(c.startswith("[hard-label] evaluate.also.hard-label.protocol") and "soft-label-imagenet (" in c
                   for c in ev["cuts"])
    lines = [x for x in p["summary"] if x.startswith("evaluate")]
    assert lines[0].startswith("evaluate [soft-label-imagenet]") and any(x.startswith("evaluate [hard-label]")
                                                                          for x in lines)
    assert lines[-1].startswith("evaluate, all 3 protocols: 30 trials")


def test_a_small_job_has_no_warning(tmp_path, offline_hf):
    """ImageNette (the family's small job) with a short evaluation: encoding 13,000 images and 30,000
    DiT forwards outweigh one student's 10 epochs over 100 images; the share is computed, not assumed.
    (With the protocol's 2,000 epochs and three students, its evaluation dominates as well.)"""
    from mgd_ray.config import load_job
    from mgd_ray.pipeline.plan import dry_run_plan
    small = ["evaluate.students=[convnet6]", "evaluate.epochs=10", "evaluate.n_evals=2"]
    base = [f"data.root={tmp_path / 'no-imagenet'}"]
    stages = ["encode", "coreset", "generate", "evaluate"]
    p = dry_run_plan(load_job(ROOT / "jobs" / "imagenette.yaml", base + small), stages)
    e = p["estimate"]
    ev, st = e["evaluation"], e["stages"]
    assert st["evaluate"]["protocols"][0]["epochs"] == 10 and st["evaluate"]["trials"] == 6
    exact = sum(s["device_seconds"] for s in st.values())
    assert ev["share"] == pytest.approx(st["evaluate"]["device_seconds"] / exact, abs=1e-4)
    assert 0 < ev["share"] < 0.5 and not ev["dominates"] and "message" not in ev
    assert not any("WARNING" in line for line in p["summary"])
    # the same job with the protocol's evaluation: it dominates, and the plan says so
    p = dry_run_plan(load_job(ROOT / "jobs" / "imagenette.yaml", base), stages)
    assert p["estimate"]["evaluation"]["dominates"]


def test_cpu_figures_are_the_committed_benchmark_report():
    """known.py's measured CPU throughput is what benchmarks/eval_throughput.py wrote (no drift)."""
    from mgd_ray import known
    rep = json.loads((ROOT / "benchmarks" / "reports" / "eval_throughput.json").read_text())
    by = {r["measure"]: r["images_per_s"] for r in rep["rows"]}
    assert known.EVAL_CPU_RESNET18_224 == {"train": by["train"], "train_with_teacher": by["train+teacher"],
                                           "test_forward": by["test forward"]}
    assert rep["rows"][0]["px"] == 224 and "eval_throughput" in known.EVAL_CPU_SOURCE


def test_the_plans_protocol_names_are_the_eval_modules():
    from mgd_ray.eval import soft_label, soft_label_imagenet
    from mgd_ray.pipeline.plan import cost
    assert (cost.SOFT_LABEL, cost.SOFT_LABEL_IMAGENET) == (soft_label.PROTOCOL, soft_label_imagenet.PROTOCOL)


def test_gpu_and_cpu_hours_are_totalled_apart(tmp_path, offline_hf):
    """A job whose generation is on GPUs and whose evaluation is on CPU workers: the plan totals
    GPU-hours and CPU core-hours apart (each stage says which it is), and the evaluation's share is
    of its own kind's hours; the CPU figures are per core, as the measured evaluation rates are."""
    from mgd_ray import known
    p = _imagenet1k_plan(tmp_path, ["evaluate.gpus_per_worker=0", "evaluate.also=[]"])
    e = p["estimate"]
    st = e["stages"]
    assert st["generate_dit"]["device"] == "GPU" and st["evaluate"]["device"] == "CPU core"
    by = e["total_by_device"]
    assert set(by) == {"GPU", "CPU core"}
    assert by["CPU core"] == pytest.approx(st["evaluate"]["device_seconds"] / 3600, abs=0.01)
    assert by["GPU"] == pytest.approx(sum(s["device_seconds"] for s in st.values() if s["device"] == "GPU") / 3600,
                                      abs=0.01)
    assert e["total_device_hours"] == by["GPU"]
    assert e["evaluation"]["share"] == 1.0 and e["evaluation"]["share_of"] == "the job's CPU core-hours"
    total = next(x for x in p["summary"] if x.startswith("total: "))
    assert "GPU-hours + " in total and "CPU core-hours" in total and "not added together" in total
    # the CPU FLOP rate is per core (the evaluation's measured CPU rates are per core too)
    assert known.CPU_FLOPS == 25e9 and "per core" in known.EVAL_CPU_SOURCE
