"""The quality benchmark's plumbing: every cell is a valid job, and the report is computed from
the cells' own files (gain over random-real, the ablation centre on the ablation's seeds)."""

import json
from pathlib import Path
from types import SimpleNamespace

import yaml

from benchmarks.quality import cells as q
from benchmarks.quality.report import make_report
from mgd_ray.config import JobConfig, job_from_dict

ROOT = Path(__file__).resolve().parents[1]


def _args(**kw):
    d = dict(ipc=10, seeds=[0, 1], n_evals=4, train_seeds=1, eval_workers=2, eval_cpus=1.0, epochs=300, set=None)
    return SimpleNamespace(**{**d, **kw})


def test_every_cell_is_a_valid_job_that_differs_where_it_should(tmp_path):
    raw = yaml.safe_load((ROOT / "jobs" / "fashion-mnist.yaml").read_text())
    seen = {}
    for part in ("main", "variants", "ablation"):
        for name, sets in q.cells_for(part, "manifoldgd-expected-leaves"):
            job = job_from_dict(raw, q.cell_overrides(_args(), name, sets, tmp_path / name))
            assert job.generate.ipc == 10 and job.generate.seeds == [0, 1] and job.evaluate.epochs == 300
            assert job.evaluate.baselines == []  # random-real is its own cell
            seen[name] = job
    assert seen["dit"].method == "dit" and seen["mgd3"].method == "mgd3"
    assert seen["manifoldgd-reference-levelwise"].guidance.basis == "reference"
    assert seen["manifoldgd-reference-levelwise"].coreset.selection == "levelwise"
    assert seen["abl-lam_mode=0.3"].guidance.lam_mode == 0.3
    assert seen["abl-cfg_scale=4.0"].sampler.cfg_scale == 4.0
    assert seen["abl-beta=0.0"].guidance.beta == 0.0 and seen["abl-beta=0.0"].guidance.basis == "expected"
    assert (seen["var-d16"].guidance.d, seen["var-d16"].guidance.K, seen["var-d16"].guidance.beta) == (16, 32, 1.0)
    assert seen["var-ramp"].guidance.beta_schedule == "ramp" and seen["var-window"].guidance.t_project == 37
    assert seen["var-members"].guidance.basis == "members"
    lam = seen["var-members-lam0.3"]   # the stronger pull and its MGD3 control differ only in the method
    assert (lam.method, lam.guidance.basis, lam.guidance.lam_mode) == ("manifoldgd", "members", 0.3)
    ctl = seen["var-mgd3-lam0.3"]
    assert (ctl.method, ctl.guidance.lam_mode) == ("mgd3", 0.3)
    for name in ("var-d8", "var-d16", "var-d32", "var-d64"):
        assert seen[name].guidance.K >= 2 * seen[name].guidance.d


def _cell(root: Path, name: str, kind: str, finals: dict, fid: float, protocol: str = "hard-label", ipc: int = 10,
          prior_sha: str | None = None, **cfg_set):
    d = root / f"ipc{ipc}" / name
    d.mkdir(parents=True)
    runs = [{"set_seed": s, "train_seed": 0, "final_acc": a, "best_acc": a + 0.01, "epochs": 300}
            for s, a in finals.items()]
    import numpy as np
    v = np.array(list(finals.values()))
    cell = {"runs": runs, "final_acc_mean": float(v.mean()), "final_acc_std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "best_acc_mean": float(v.mean() + 0.01), "best_acc_std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    sets = {str(s): {"fid": fid + s, "coverage": 0.5} for s in finals}
    (d / "results.json").write_text(json.dumps({"ipc": ipc, "protocol": protocol, "results": {kind: {"convnet3": cell}},
                                                "distribution": {"sets": sets, "mean": {"fid": fid + 0.5}}}))
    man = {"timings": {"generate": 60.0, "evaluate": 120.0}}
    if prior_sha:
        man["model"] = {"source": "prior:unit", "transformer_sha256": prior_sha, "vae_sha256": prior_sha}
    (d / "manifest.json").write_text(json.dumps(man))
    cfg = JobConfig().model_dump(mode="json")
    cfg["method"] = kind
    for k, v in cfg_set.items():
        cfg["guidance"][k] = v
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_report_reads_cells_and_computes_gain_and_centre(tmp_path):
    root = tmp_path / "bq"
    _cell(root, "random-real", "random-real", {0: 0.70, 1: 0.72}, 1.0)
    _cell(root, "manifoldgd-expected-leaves", "manifoldgd", {0: 0.66, 1: 0.74}, 2.0)
    _cell(root, "abl-lam_mode=0.3", "manifoldgd", {0: 0.69}, 3.0)
    _cell(root, "manifoldgd-reference-leaves", "manifoldgd", {0: 0.69}, 3.0)
    _cell(root, "manifoldgd-default", "manifoldgd", {0: 0.69}, 3.0, protocol="soft-label")
    _cell(root, "mgd3", "mgd3", {0: 0.69}, 3.0)
    _cell(root, "var-d16", "manifoldgd", {1: 0.71}, 3.0)
    pj, pm = make_report(root, "unit", tmp_path / "rep")
    data = json.loads(pj.read_text())
    by = {c["cell"]: c for c in data["cells"]}
    assert by["random-real"]["dir"] == "ipc10/random-real" and not data["root"].startswith("/")
    assert {k: (c["variant"], c["protocol"]) for k, c in by.items()} == {
        "random-real": ("", "hard-label"), "manifoldgd-expected-leaves": ("paper-strict", "hard-label"),
        "abl-lam_mode=0.3": ("lam_mode=0.3", "hard-label"), "manifoldgd-reference-leaves": ("reference", "hard-label"),
        "manifoldgd-default": ("default", "soft-label"), "mgd3": ("", "hard-label"), "var-d16": ("d16", "hard-label")}
    assert abs(by["manifoldgd-expected-leaves"]["gain_vs_random"] - (70.0 - 71.0)) < 1e-9
    # paired per seed (66-70, 74-72), and against MGD3 on the seeds both have (seed 0: 66 - 69)
    assert by["manifoldgd-expected-leaves"]["gain_vs_random_per_seed"] == {"0": -4.0, "1": 2.0}
    assert abs(by["manifoldgd-expected-leaves"]["gain_vs_mgd3"] - (66.0 - 69.0)) < 1e-9
    # a soft-label cell is never paired with hard-label baselines (there is no soft-label random real here)
    assert by["manifoldgd-default"]["gain_vs_random"] != by["manifoldgd-default"]["gain_vs_random"]
    md = pm.read_text()
    assert "| manifoldgd-expected-leaves | 70.0 ± 5.7 |" in md and "| -1.0 | -4.0 / +2.0 | -3.0 |" in md
    assert "| var-d16 | 71.0 ± 0.0 |" in md.split("ManifoldGD variants")[1]
    assert "Protocol: hard-label + soft-label; in soft-label the frozen" in md
    # the ablation centre is the base cell on the ablation's seeds only (seed 0: 66.0), not its 3-seed mean
    assert "centre: manifoldgd-expected-leaves (seeds [0]) | 66.0 ± 0.0" in md
    assert "lam_mode=0.3 | 69.0 ± 0.0" in md
    assert (tmp_path / "rep" / "quality-unit-acc-vs-ipc.png").is_file()


def test_report_merges_committed_reports_pooling_new_seeds_and_refusing_mixed_settings(tmp_path):
    """--include: a committed report's cells join the live root's; a cell run later on a new seed with
    the same settings joins its row (so the gain is paired over all three seeds); the same cell with
    other settings is refused; gains are paired within one protocol."""
    import pytest
    old = tmp_path / "old"
    _cell(old, "random-real", "random-real", {0: 0.70, 1: 0.72, 2: 0.74}, 1.0, ipc=50)
    _cell(old, "manifoldgd-default", "manifoldgd", {0: 0.66, 1: 0.70}, 2.0, ipc=50)
    _cell(old, "mgd3", "mgd3", {0: 0.60, 1: 0.60, 2: 0.60}, 1.0, ipc=1)
    old_json, _ = make_report(old, "unit", tmp_path / "old-rep")
    soft = tmp_path / "soft"
    _cell(soft, "random-real", "random-real", {0: 0.80, 1: 0.80, 2: 0.80}, 1.0, protocol="soft-label", ipc=50)
    soft_json, _ = make_report(soft, "unit", tmp_path / "soft-rep")
    new = tmp_path / "new"
    # the root's cell records its prior, the older report's does not (written before it was recorded): pooled
    _cell(new, "manifoldgd-default", "manifoldgd", {2: 0.68}, 5.0, ipc=50, prior_sha="aaa")
    _cell(new, "mgd3", "mgd3", {0: 0.61}, 1.0, ipc=1)           # a rerun of seed 0: the root's row wins
    pj, pm = make_report(new, "unit", tmp_path / "rep", [old_json, soft_json])
    data = json.loads(pj.read_text())
    by = {(c["cell"], c["ipc"], c["protocol"]): c for c in data["cells"]}
    d = by[("manifoldgd-default", 50, "hard-label")]
    assert d["seeds"] == [0, 1, 2] and len(d["run_records"]) == 3 and abs(d["final_mean"] - 68.0) < 1e-9
    assert abs(d["fid"] - 4.0) < 1e-9                         # mean of the three sets' fid (2, 3, 7)
    assert d["gain_vs_random_per_seed"] == {"0": -4.0, "1": -2.0, "2": -6.0}   # hard-label random real only
    assert by[("mgd3", 1, "hard-label")]["seeds"] == [0] and by[("mgd3", 1, "hard-label")]["final_mean"] == 61.0
    md = pm.read_text()
    assert "mgd3 at IPC 1 (hard-label, seeds [0, 1, 2]) from" in md and "not used" in md
    assert "| manifoldgd-default (default) | not run | 68.0 ± 2.0 (-4.0) |" in md
    other = tmp_path / "other"
    _cell(other, "manifoldgd-default", "manifoldgd", {2: 0.68}, 5.0, ipc=50, d=16)
    with pytest.raises(SystemExit, match="differ in config"):
        make_report(other, "unit", tmp_path / "rep2", [old_json])
    # two cells that both record their prior, and not the same one, are never pooled
    other_prior = tmp_path / "other-prior"
    _cell(other_prior, "manifoldgd-default", "manifoldgd", {3: 0.68}, 5.0, ipc=50, prior_sha="bbb")
    with pytest.raises(SystemExit, match="differ in prior"):
        make_report(other_prior, "unit", tmp_path / "rep3", [pj])


def test_main_manifoldgd_cells_pin_the_papers_strict_projection(tmp_path):
    raw = yaml.safe_load((ROOT / "jobs" / "fashion-mnist.yaml").read_text())
    raw.setdefault("guidance", {}).update(beta=0.0, d=8, K=16, beta_schedule="ramp")   # whatever the job ships
    for name, sets in q.cells_for("main", "manifoldgd-expected-leaves"):
        job = job_from_dict(raw, q.cell_overrides(_args(), name, sets, tmp_path / name))
        g = job.guidance
        if name == "manifoldgd-default":              # the shipped setting, as the job file says
            assert (g.beta, g.d, g.K, g.beta_schedule) == (0.0, 8, 16, "ramp")
        elif job.method == "manifoldgd":
            assert (g.beta, g.d, g.K, g.beta_schedule, g.t_project) == (1.0, 3, 12, "constant", None), name


def test_command_line_reports_missing_cells(tmp_path):
    import pytest

    from benchmarks.quality.__main__ import main
    with pytest.raises(SystemExit, match="no finished cells"):
        main(["report", "--root", str(tmp_path / "none")])


def test_report_records_no_absolute_paths_of_the_checkout(tmp_path):
    from benchmarks import REPO, relative_to_repo
    assert relative_to_repo(REPO / "out" / "bench-quality" / "ipc10") == "out/bench-quality/ipc10"
    assert not relative_to_repo(tmp_path / "a" / "b").startswith("/")


def test_a_diagnostic_set_is_written_as_a_shard_the_evaluation_reads(tmp_path):
    """The diagnostic cells are scored by the product's evaluation: their shards must load as any
    other cell's (the HF-native shard schema, all class names)."""
    import numpy as np

    from benchmarks.quality.diagnose import _write_set
    from mgd_ray.pipeline.evaluate import load_shard_set
    from mgd_ray.pipeline.store import Store
    store = Store(str(tmp_path / "diag-vae-real"))
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(4, 28, 28, 1), dtype=np.uint8)
    labels = np.array([0, 1, 1, 2])
    _write_set(store, "diag-vae-real", 1, imgs, labels, ["a", "b", "c"])
    got, got_labels = load_shard_set(store, 1)
    assert np.array_equal(np.asarray(got_labels), labels)
    assert np.array_equal(np.asarray(got).reshape(imgs.shape), imgs)
