"""The guidance-strength benchmark: the 4,096-dimensional twin's data and ideal denoiser are what they
claim, each rule removes what it should, and reports record the cell relative to the checkout."""
import math

import numpy as np
import torch

from benchmarks import guidance_strength as gs
from mgd_ray.method import GaussianDiffusion


def test_synthetic_latents_have_class_structure():
    Z, y = gs.synthetic_latents(n_classes=3, per_class=40, shape=(4, 8, 8), rank=4, seed=0)
    assert Z.shape == (120, 256) and Z.dtype == np.float32 and abs(Z.std() - 1.0) < 1e-4
    means = np.stack([Z[y == k].mean(0) for k in range(3)])
    within = np.mean([np.linalg.norm(Z[y == k] - means[k], axis=1).mean() for k in range(3)])
    between = np.linalg.norm(means[0] - means[1])
    assert between > 0.5 * within           # separated classes
    s = np.linalg.svd(Z[y == 0] - means[0], compute_uv=False)
    assert s[:4].sum() / s.sum() > 0.5      # most of a class's spread lies in its rank-4 subspace


def test_ideal_denoiser_is_the_posterior_mean_of_the_class():
    Z, y = gs.synthetic_latents(n_classes=2, per_class=20, shape=(4, 4, 4), rank=2, seed=1)
    gd = GaussianDiffusion()
    fn = gs.ideal_denoiser(Z, y, gd.alphas_cumprod, (4, 4, 4))
    z = torch.as_tensor(Z[5]).reshape(1, 4, 4, 4)
    t = 10                                     # almost clean: x̂0 is the data point itself
    ab = float(gd.alphas_cumprod[t])
    eps = fn(math.sqrt(ab) * z, torch.tensor([t]), torch.tensor([0]))
    assert torch.allclose(eps, torch.zeros_like(eps), atol=1e-3)
    t = 999                                    # pure noise: x̂0 is (nearly) the class mean
    ab = float(gd.alphas_cumprod[t])
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    x0 = (x - math.sqrt(1 - ab) * fn(x, torch.tensor([t]), torch.tensor([1]))) / math.sqrt(ab)
    assert np.linalg.norm(x0.reshape(-1).numpy() - Z[y == 1].mean(0)) < 0.2 * np.linalg.norm(Z[y == 1].mean(0))


def test_synthetic_run_measures_what_each_rule_removes():
    # a small twin of `--synthetic` (64-dim latents, 3 classes): the same code path end to end
    data = gs.run_synthetic(ipc=3, shape=(4, 4, 4), n_classes=3, per_class=60)
    by = {r["setting"]: r for r in data["settings"]}
    assert data["latent_dim"] == 64 and data["images"] == 3 and set(by) == {n for n, _ in gs.SETTINGS}
    dit = by["dit (no guidance)"]
    assert dit["guided_steps"] == 0 and dit["moved_from_dit"] == 0 and dit["dist_to_target_vs_dit"] == 1
    assert by["mgd3-style: beta 0 (unprojected)"]["removed_share"] == 0
    strict, half = by["expected, d 3, beta 1 (paper strict)"], by["expected, d 3, beta 0.5"]
    assert strict["guided_steps"] > 0 and 0 < strict["normal_share"] <= 1
    assert abs(strict["removed_share"] - strict["normal_share"]) < 1e-6          # beta 1 removes the whole normal part
    assert abs(half["removed_share"] - 0.5 * half["normal_share"]) < 1e-6        # beta 0.5 half of it
    window = by["expected, window t <= 37"]                                      # no projection on the early steps
    assert window["removed_share"] < window["normal_share"]


def test_command_line_records_the_cell_relative_to_the_checkout(tmp_path, monkeypatch):
    from benchmarks import REPO
    seen = {}

    def run_cell(cell):              # no finished cell here: only the command line is under test
        seen["cell"] = cell
        return {"source": "cell c", "latent_dim": 64, "settings": []}

    def write_report(name, data, md):
        seen.update(name=name, data=data, md=md)
        (tmp_path / "r.md").write_text(md)
        return tmp_path / "r.json", tmp_path / "r.md"
    monkeypatch.setattr(gs, "run_cell", run_cell)
    monkeypatch.setattr(gs, "write_report", write_report)
    gs.main(["--cell", str(REPO / "out" / "c"), "--name", "unit"])
    assert seen["cell"] == REPO / "out" / "c" and seen["name"] == "guidance_strength-unit"
    assert seen["data"]["command"] == "python -m benchmarks.guidance_strength --cell out/c --name unit"
    assert str(REPO) not in seen["md"]
