"""DiT diffusion schedule, respacing and posterior vs closed-form formulas (float64, independent)."""
import numpy as np
import pytest
import torch

from mgd_ray.method.diffusion import GaussianDiffusion, space_timesteps


def _closed_form(kept):
    """Independent float64 DDPM quantities for the kept original steps."""
    betas_full = np.array([1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)])
    ab_full = np.cumprod(1 - betas_full)
    ab = ab_full[kept]
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    beta = 1 - ab / ab_prev
    var = beta * (1 - ab_prev) / (1 - ab)
    c1 = np.sqrt(ab_prev) * beta / (1 - ab)
    c2 = np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
    return ab, ab_prev, beta, var, c1, c2


def test_respaced_timesteps_match_dit():
    kept = space_timesteps(1000, 50)
    assert len(kept) == 50
    assert kept[:5] == [0, 20, 41, 61, 82] and kept[-3:] == [958, 979, 999]
    d = GaussianDiffusion().respaced(50)
    assert d.timesteps.tolist() == kept[::-1]                 # sampling order, original ids
    assert d.timesteps.dtype == torch.long
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "10,10") == [round(i * 499 / 9) for i in range(10)] + \
        [500 + round(i * 499 / 9) for i in range(10)]
    with pytest.raises(ValueError):
        space_timesteps(100, 200)


@pytest.mark.parametrize("n", [50, 1000, 7])
def test_posterior_matches_closed_form(n):
    d = GaussianDiffusion().respaced(n)
    ab, ab_prev, beta, var, c1, c2 = _closed_form(d.timestep_map)
    np.testing.assert_allclose(d.alphas_cumprod, ab, rtol=1e-10)
    np.testing.assert_allclose(d.betas, beta, rtol=1e-8)
    np.testing.assert_allclose(d.posterior_variance, var, rtol=1e-8, atol=1e-20)
    np.testing.assert_allclose(d.posterior_mean_coef1, c1, rtol=1e-8)
    np.testing.assert_allclose(d.posterior_mean_coef2, c2, rtol=1e-8)
    np.testing.assert_allclose(d.posterior_log_variance_clipped[1:], np.log(var[1:]), rtol=1e-10)
    assert d.posterior_log_variance_clipped[0] == d.posterior_log_variance_clipped[1]

    # p_mean_variance on random data: mean = c1 x0_hat + c2 x_t with x0_hat from eps
    g = torch.Generator().manual_seed(0)
    B, C = 3, 4
    x_t = torch.randn(B, C, 2, 2, generator=g, dtype=torch.float64)
    out = torch.randn(B, 2 * C, 2, 2, generator=g, dtype=torch.float64).clamp(-1, 1)
    t_idx = torch.tensor([0, n // 2, n - 1])
    mean, log_var, x0_hat, eps = d.p_mean_variance(x_t, t_idx, out, "learned_range")
    for b, k in enumerate(t_idx.tolist()):
        e = out[b, :C].numpy()
        x0 = (x_t[b].numpy() - np.sqrt(1 - ab[k]) * e) / np.sqrt(ab[k])
        np.testing.assert_allclose(x0_hat[b].numpy(), x0, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(mean[b].numpy(), c1[k] * x0 + c2[k] * x_t[b].numpy(), rtol=1e-9, atol=1e-9)
        lo = np.log(var[1]) if k == 0 else np.log(var[k])
        frac = (out[b, C:].numpy() + 1) / 2
        np.testing.assert_allclose(log_var[b].numpy(), frac * np.log(beta[k]) + (1 - frac) * lo, rtol=1e-9)
    _, lv_small, _, _ = d.p_mean_variance(x_t, t_idx, out, "fixed_small")
    _, lv_large, _, _ = d.p_mean_variance(x_t, t_idx, out, "fixed_large")
    assert torch.allclose(lv_small[2], torch.tensor(np.log(var[n - 1]), dtype=torch.float64))
    assert torch.allclose(lv_large[2], torch.tensor(np.log(beta[n - 1]), dtype=torch.float64))
    with pytest.raises(ValueError, match="2\\*C"):
        d.p_mean_variance(x_t, t_idx, out[:, :C], "learned_range")


def test_q_sample_and_ddim():
    d = GaussianDiffusion().respaced(50)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 2, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 4, 2, 2, generator=g, dtype=torch.float64)
    x_t = d.q_sample(x0, 30, noise)
    ab = d.alphas_cumprod[30]
    assert torch.allclose(x_t, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise)
    # deterministic DDIM with the true x0 and eps lands on q_sample at the previous step
    mean, std = d.ddim_step(x_t, 30, x0, eta=0.0)
    assert torch.all(std == 0)
    assert torch.allclose(mean, d.q_sample(x0, 29, noise), atol=1e-10)
    # eta = 1 gives the posterior std
    _, std1 = d.ddim_step(x_t, 30, x0, eta=1.0)
    assert np.allclose(std1.flatten().numpy(), np.sqrt(d.posterior_variance[30]))


def test_matches_diffusers_ddpm_scheduler():
    from diffusers import DDPMScheduler

    sch = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                        variance_type="fixed_small", clip_sample=False, timestep_spacing="linspace")
    full = GaussianDiffusion().full()
    # diffusers keeps betas in float32: agreement to float32 round-off of (1 - alpha_bar) at small t
    np.testing.assert_allclose(sch.alphas_cumprod.numpy(), full.alphas_cumprod, rtol=2e-5)
    for t in (1, 10, 500, 999):
        np.testing.assert_allclose(float(sch._get_variance(t)), full.posterior_variance[t], rtol=1e-3)
    # 50-step respacing: diffusers' "linspace" spacing keeps the same steps; step() agrees
    sch.set_timesteps(50)
    d = GaussianDiffusion().respaced(50)
    assert sch.timesteps.tolist() == d.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 4, 4, generator=g)
    eps = torch.randn(2, 4, 4, 4, generator=g)
    for i in (0, 25, 48):
        t = int(d.timesteps[i])
        ref = sch.step(eps, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
        mean, log_var, _, _ = d.p_mean_variance(x_t, 49 - i, eps, "fixed_small")
        ours = mean + torch.exp(0.5 * log_var) * z
        assert torch.allclose(ours, ref, rtol=1e-3, atol=1e-4), i
