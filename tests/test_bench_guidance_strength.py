"""The 4,096-dimensional guidance-strength twin: its data and its ideal denoiser are what they claim."""
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
