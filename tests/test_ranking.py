"""DD-Ranking's ranking metrics (pipeline/ranking.py): the formulas against worked and published
numbers, and results.json / `mgd-ray status` / report.html carrying them from trial records.

The formulas are DD-Ranking's README ("Label-Robust Score (LRS)", github.com/NUS-HPC-AI-Lab/
DD-Ranking) and ddranking 0.2.0's metrics/soft_label.py (compute_metrics):
HLR = acc(real, hard) - acc(syn, hard); IOR = acc(syn, any) - acc(rdm, any);
alpha = w IOR - (1 - w) HLR, w = 0.5; LRS = (e^alpha - e^-1) / (e - e^-1).
The paper's own result tables (arXiv 2505.13300) could not be read from this machine, so the
numeric checks use: the normalisation's fixed points, a worked example from a DD-Ranking fork's
scoring script, and evaluation.md's published ImageNet-1K accuracies for IOR.
"""

import json
import math

import pytest

from mgd_ray.config import job_from_dict
from mgd_ray.pipeline import ranking as rk

E = math.e


def test_score_fixed_points_of_the_normalisation():
    # alpha = 1 -> 1, alpha = -1 -> 0 (the README's "normalized to [0, 1]"); alpha = 0 -> 1 / (e + 1)
    assert rk.score(1.0, -1.0) == pytest.approx(1.0)
    assert rk.score(-1.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert rk.score(0.0, 0.0) == pytest.approx(1 / (E + 1))          # (1 - 1/e) / (e - 1/e)
    assert rk.score(0.2, 0.2) == pytest.approx(1 / (E + 1))          # equal IOR and HLR cancel at w = 0.5
    # the weight: w = 1 ranks by IOR alone, w = 0 by -HLR alone
    assert rk.score(0.3, 0.9, weight=1.0) == pytest.approx((math.exp(0.3) - 1 / E) / (E - 1 / E))
    assert rk.score(0.3, 0.9, weight=0.0) == pytest.approx((math.exp(-0.9) - 1 / E) / (E - 1 / E))
    with pytest.raises(ValueError, match="fractions"):
        rk.score(18.0, 17.63)                                      # percentages: ddranking 0.2.0's own pitfall
    with pytest.raises(ValueError, match="weight"):
        rk.score(0.1, 0.1, weight=1.5)


def test_worked_example_of_a_dd_ranking_scoring_script():
    # maomaocun/DD-Ranking (a fork of NUS-HPC-AI-Lab/DD-Ranking) NCFM_eval/get_rank_score.py: real-hard 0.8789,
    # syn-hard = syn-any 0.7026, random-any 0.5226, w 0.5. By hand: HLR 0.1763, IOR 0.1800,
    # alpha = 0.5 (0.1800 - 0.1763) = 0.00185, (e^0.00185 - e^-1) / (e - e^-1) = 0.63397 / 2.35040 = 0.26973.
    h, i = rk.hlr(0.8789, 0.7026), rk.ior(0.7026, 0.5226)
    assert h == pytest.approx(0.1763) and i == pytest.approx(0.1800)
    assert rk.score(i, h) == pytest.approx(0.26973, abs=2e-5)


def test_ior_of_published_imagenet1k_numbers():
    # evaluation.md: ImageNet-1K, ResNet-18, soft labels, IPC 10 / 50: RDED 42.0 / 56.5; random real images with
    # the same soft labels and CutMix 25.8 / 54.3 -> IOR 16.2 / 2.2 points
    assert rk.ior(0.420, 0.258) == pytest.approx(0.162)
    assert rk.ior(0.565, 0.543) == pytest.approx(0.022)


def _rec(kind, s, student, final, best):
    return dict(name=f"{kind}-s{s}-{student}-t0", kind=kind, set_seed=s, student=student, train_seed=0,
                final_acc=final, best_acc=best, epochs=5)


def _records():
    return [_rec("manifoldgd", 0, "convnet3", 0.80, 0.82), _rec("manifoldgd", 1, "convnet3", 0.84, 0.85),
            _rec("random-real", 0, "convnet3", 0.78, 0.80), _rec("random-real", 1, "convnet3", 0.79, 0.81),
            _rec("manifoldgd", 0, "convnet6", 0.70, 0.71), _rec("manifoldgd", 1, "convnet6", 0.72, 0.73),
            _rec("random-real", 0, "convnet6", 0.71, 0.72)]            # seed 1 of random real's convnet6 is missing


def _job(**evaluate):
    return job_from_dict({"name": "fm", "data": {"source": "fashion-mnist"}, "generate": {"ipc": 10, "seeds": [0, 1]},
                          "evaluate": {"students": ["convnet3", "convnet6"], "train_seeds": 1, **evaluate}})


def _lrs(i, h):                      # the README's formula, written out here
    a = 0.5 * i - 0.5 * h
    return (math.exp(a) - math.exp(-1)) / (math.exp(1) - math.exp(-1))


def test_results_json_carries_the_ranking_from_trial_records():
    from mgd_ray.pipeline.evaluate import summarise
    res = json.loads(json.dumps(summarise(_job(), _records())))     # as results.json stores it
    rows = {(r["dataset"], r["student"]): r for r in res["ranking"]["rows"]}
    assert set(rows) == {("manifoldgd", "convnet3"), ("manifoldgd", "convnet6")}   # random real is the reference
    c3 = rows[("manifoldgd", "convnet3")]
    assert (c3["protocol"], c3["ipc"]) == ("hard-label", 10) and c3["full_data_accuracy"] == 0.935
    assert "93.5" in c3["full_data_source"] and "note" not in c3
    f = c3["final"]
    assert f["accuracy"] == pytest.approx(0.82) and f["random_real_accuracy"] == pytest.approx(0.785)
    assert f["n_pairs"] == 2
    assert f["ior"] == pytest.approx(0.035) and f["ior_std"] == pytest.approx(math.sqrt(2 * 0.015 ** 2))
    assert f["hlr"] == pytest.approx(0.115)                          # 0.935 - (0.80, 0.84): 0.135, 0.095
    assert f["score"] == pytest.approx((_lrs(0.02, 0.135) + _lrs(0.05, 0.095)) / 2)
    b = c3["best"]                                                   # DD-Ranking's choice: the best evaluation
    assert b["ior"] == pytest.approx(0.03) and b["hlr"] == pytest.approx(0.935 - 0.835)
    # convnet6: one pair only (random real's seed 1 is missing); no full-data figure -> no HLR, no score
    c6 = rows[("manifoldgd", "convnet6")]
    assert c6["final"]["n_pairs"] == 1 and c6["final"]["ior"] == pytest.approx(-0.01)
    assert c6["final"]["hlr"] is None and c6["final"]["score"] is None and c6["full_data_accuracy"] is None
    assert "no published full-data accuracy known for convnet6 on fashion-mnist" in c6["note"]
    # the same gain as the results' own
    assert res["results"]["manifoldgd"]["convnet3"]["gain_over_random_real"] == pytest.approx(f["ior"])


def test_soft_label_and_subset_jobs_report_no_hlr_and_say_why():
    from mgd_ray.pipeline.evaluate import summarise
    soft = summarise(_job(protocol="soft-label"), _records())["ranking"]["rows"][0]
    assert soft["protocol"] == "soft-label" and soft["final"]["ior"] == pytest.approx(0.035)
    assert soft["full_data_accuracy"] == 0.935 and soft["final"]["hlr"] is None and soft["final"]["score"] is None
    assert "hard-label accuracy" in soft["note"]
    sub = job_from_dict({"data": {"source": "fashion-mnist", "test_limit_per_class": 10},
                         "generate": {"ipc": 10, "seeds": [0, 1]}, "evaluate": {"students": ["convnet3"]}})
    row = summarise(sub, _records()[:4])["ranking"]["rows"][0]
    assert row["final"]["hlr"] is None and "subset" in row["note"]
    # ImageNet-1K: torchvision's figure is its batch-norm ResNet-18's, the soft-label-imagenet student only
    fd, _ = rk.full_data({"source": "imagefolder", "class_list": "imagenet1k"}, "resnet18", 256, "soft-label-imagenet")
    assert fd.accuracy == pytest.approx(0.69758) and "torchvision" in fd.source
    assert rk.full_data({"source": "imagefolder", "class_list": "imagenet1k"}, "resnet18", 224, "hard-label")[0] is None
    assert rk.full_data({"source": "imagefolder", "class_list": "imagenette"}, "resnet18", 256,
                        "soft-label-imagenet")[0] is None


def test_status_and_report_show_the_ranking(tmp_path):
    from mgd_ray.pipeline.evaluate import results_document, summarise
    from mgd_ray.pipeline.report import status_text
    from mgd_ray.pipeline.report_page import build_html
    from mgd_ray.pipeline.store import Store
    job = _job()
    st = Store(str(tmp_path))
    res = summarise(job, _records())
    st.write_json(json.loads(json.dumps(results_document(job, [res]))), "results.json")
    st.write_json({"name": "fm", "status": "complete", "config": job.model_dump(mode="json"), "classes": [],
                   "model": {"source": "prior:fashion-mnist"}}, "manifest.json")
    text = status_text(str(tmp_path))
    line = next(x for x in text.splitlines() if "manifoldgd" in x and "convnet3" in x and "IOR" in x)
    assert "acc 82.0" in line and "random real 78.5" in line and "IOR +3.5" in line and "full data 93.5" in line
    assert "HLR 11.5" in line and f"score {res['ranking']['rows'][0]['final']['score']:.3f}" in line
    assert "no published full-data accuracy known for convnet6" in text
    html = build_html(st)
    assert "<h4>Ranking metrics</h4>" in html and "<td>+3.5</td>" in html and "DC: Zhao" in html
    # a results.json of an earlier mgd_ray (one protocol at the top level, no ranking): status reads it the
    # same way, computing the ranking from the runs and the manifest
    old = {k: v for k, v in res.items() if k not in ("ranking", "name")}
    st.write_json(json.loads(json.dumps(old)), "results.json")
    assert status_text(str(tmp_path)) == text


def test_a_soft_label_protocol_takes_its_hlr_from_the_jobs_hard_label_protocol(tmp_path):
    """Two protocols in one job: the soft-label rows' HLR is the same student's hard-label runs on the
    same sets (paired by set and training seed), the score pairs each run's soft-label IOR with it;
    status and report keep the two protocols apart."""
    from mgd_ray.pipeline.evaluate import results_document, summarise
    from mgd_ray.pipeline.report import status_text
    from mgd_ray.pipeline.report_page import build_html
    from mgd_ray.pipeline.store import Store
    job = _job(protocol="soft-label", also=[{"protocol": "hard-label", "students": ["convnet3"], "train_seeds": 1}])
    (soft_name, soft_job), (hard_name, hard_job) = job.evaluations()
    assert (soft_name, hard_name) == ("soft-label", "hard-label")
    up = 0.05                                                        # soft labels lift the distilled sets only
    soft_recs = [dict(r, final_acc=r["final_acc"] + up, best_acc=r["best_acc"] + up) if r["kind"] == "manifoldgd"
                 else r for r in _records()]
    hard_recs = [r for r in _records() if r["student"] == "convnet3"]
    doc = json.loads(json.dumps(results_document(job, [summarise(soft_job, soft_recs),
                                                       summarise(hard_job, hard_recs)])))
    soft, hard = doc["protocols"]
    assert (soft["name"], hard["name"]) == ("soft-label", "hard-label")
    row = next(r for r in soft["ranking"]["rows"] if r["student"] == "convnet3")
    f = row["final"]
    # soft-label IOR: (0.85 - 0.78, 0.89 - 0.79); HLR from the hard-label runs: 0.935 - (0.80, 0.84)
    assert f["ior"] == pytest.approx(0.085) and f["hlr"] == pytest.approx(0.115)
    assert f["score"] == pytest.approx((_lrs(0.07, 0.135) + _lrs(0.10, 0.095)) / 2)
    assert "HLR from the job's hard-label protocol" in row["note"]
    # convnet6 ran under soft-label only: no hard-label accuracy, so no HLR, and the row says why
    c6 = next(r for r in soft["ranking"]["rows"] if r["student"] == "convnet6")
    assert c6["final"]["hlr"] is None
    # the hard-label protocol's own HLR is unchanged by the other protocol
    assert next(r for r in hard["ranking"]["rows"])["final"]["hlr"] == pytest.approx(0.115)
    # soft-label-imagenet trains torchvision's network: another protocol's resnet18 is not its hard-label run
    assert not rk.same_network("soft-label-imagenet", "hard-label") and rk.same_network("soft-label", "hard-label")

    st = Store(str(tmp_path))
    st.write_json(doc, "results.json")
    st.write_json({"name": "fm", "status": "complete", "config": job.model_dump(mode="json"), "classes": [],
                   "model": {"source": "prior:fashion-mnist"}}, "manifest.json")
    text = status_text(str(tmp_path))
    heads = [x.strip() for x in text.splitlines() if x.strip().startswith("results [")]
    assert heads == ["results [soft-label] (soft-label vNone, ipc 10):", "results [hard-label] (hard-label vNone, ipc 10):"]
    block = text.split("results [hard-label]")[1]
    assert "final  82.0" in block and "final  87.0" not in block        # each protocol's own numbers under it
    html = build_html(st)
    assert html.index("<h3 id=results-soft-label>") < html.index("<h3 id=results-hard-label>")
    assert html.count("<h4>Ranking metrics</h4>") == 2


def test_imagenet1k_soft_label_rows_take_hlr_from_hard_label_imagenet():
    """ImageNet-1K: soft-label-imagenet's torchvision ResNet-18 gets its HLR from hard-label-imagenet (the same
    network, hard labels) against torchvision's full-data 69.758, never from the paper's hard-label protocol
    (its resnet18 is the instance-norm network)."""
    from mgd_ray.pipeline.evaluate import results_document, summarise
    data = {"source": "imagefolder", "root": "/x", "class_list": "imagenet1k"}

    def job(*protocols):
        first, *also = protocols
        return job_from_dict({"data": data, "generate": {"ipc": 10, "seeds": [0, 1]},
                              "evaluate": {**first, "also": also}})
    soft = {"protocol": "soft-label-imagenet", "teacher": "hub:timm/resnet18.tv_in1k", "students": ["resnet18"],
            "train_seeds": 1, "image_size": 256}
    hard_tv = {"protocol": "hard-label-imagenet", "students": ["resnet18"], "train_seeds": 1, "image_size": 256}
    paper = {"protocol": "hard-label", "students": ["resnet18"], "train_seeds": 1, "image_size": 224}
    recs = [_rec("manifoldgd", 0, "resnet18", 0.42, 0.43), _rec("manifoldgd", 1, "resnet18", 0.44, 0.45),
            _rec("random-real", 0, "resnet18", 0.26, 0.27), _rec("random-real", 1, "resnet18", 0.25, 0.26)]
    hard_recs = [_rec("manifoldgd", 0, "resnet18", 0.20, 0.21), _rec("manifoldgd", 1, "resnet18", 0.22, 0.23),
                 _rec("random-real", 0, "resnet18", 0.04, 0.05), _rec("random-real", 1, "resnet18", 0.04, 0.05)]
    j = job(soft, paper, hard_tv)
    views = dict(j.evaluations())
    doc = results_document(j, [summarise(views["soft-label-imagenet"], recs), summarise(views["hard-label"], hard_recs),
                               summarise(views["hard-label-imagenet"], hard_recs)])
    row = doc["protocols"][0]["ranking"]["rows"][0]
    f = row["final"]
    assert row["full_data_accuracy"] == pytest.approx(0.69758) and "hard-label-imagenet" in row["note"]
    assert f["ior"] == pytest.approx(0.175) and f["hlr"] == pytest.approx(0.69758 - 0.21)
    assert f["score"] == pytest.approx((_lrs(0.16, 0.69758 - 0.20) + _lrs(0.19, 0.69758 - 0.22)) / 2)
    # hard-label-imagenet's own rows: HLR against the same figure; the paper's protocol: none (no figure for it)
    assert doc["protocols"][2]["ranking"]["rows"][0]["final"]["hlr"] == pytest.approx(0.69758 - 0.21)
    assert doc["protocols"][1]["ranking"]["rows"][0]["final"]["hlr"] is None
    # with only the paper's hard-label protocol beside it, soft-label-imagenet reports no HLR and says why
    j2 = job(soft, paper)
    v2 = dict(j2.evaluations())
    doc2 = results_document(j2, [summarise(v2["soft-label-imagenet"], recs), summarise(v2["hard-label"], hard_recs)])
    row2 = doc2["protocols"][0]["ranking"]["rows"][0]
    assert row2["final"]["hlr"] is None and "no hard-label protocol of the job trained the same network" in row2["note"]
