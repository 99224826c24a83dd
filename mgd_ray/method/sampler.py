"""The visible sampling loop: DiT's ancestral DDPM (or DDIM) with classifier-free guidance,
per-image seeding and a guidance function added to every step's mean.

    x_T ~ N(0, I) per image from its own generator
    for i, t in enumerate(timesteps):                       # original t, descending
        out  = model([x; x], t, [y; null])                   # one forward (cfg_scale = 1: [x], [y])
        eps  = uncond + s (cond − uncond)                    # on the first 3 or all channels
        μ, log_var, x0_hat = p_mean_variance(x_t, t_idx, out)
        g    = guidance(x_t, x0_hat, step)                   # (B, D), only where guidance.is_on
        x    = μ + g + σ noise                               # no noise at the last step

Seeding: image b has two CPU generators, both derived from its seed: one for the sampler's
noise (x_T and each step's noise) and one handed to the guidance (``StepInfo.generators``), so
a guidance variant that draws noise does not shift the sampling noise: runs that differ only
in guidance share x_T and every step's noise. A batch of B gives exactly the B single runs.

Host synchronisation: the loop reads nothing back from the device (no .item(), float(tensor),
bool(tensor), .cpu()); host-made noise goes to the device by pinned, non-blocking copies; the
schedule coefficients are filled on the device. Only ``return_trajectory`` (a debugging aid)
and reading ``guidance.last_stats`` (a logger) synchronise. On CUDA, torch.linalg.eigh inside the
guidance basis checks its error codes on the host: expected to be the one synchronisation left per
guided step (not yet measured on a GPU; ``python -m benchmarks.gpu_check`` counts them by site).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .coreset import image_seed
from .diffusion import RespacedDiffusion
from .guidance import NoGuidance, StepInfo, to_device

__all__ = ["sample", "image_seed", "make_generators", "dit_model_fn", "cfg_combine", "state_dtype"]

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """(sampler generator, guidance generator) for one image, both CPU, from its 63-bit seed."""
    g_noise = torch.Generator(device="cpu").manual_seed(int(seed))
    sub = np.random.SeedSequence([int(seed) % 2**63, 1]).generate_state(2, np.uint32)
    g_guide = torch.Generator(device="cpu").manual_seed(int(sub[0]) << 31 | int(sub[1]) >> 1)
    return g_noise, g_guide


def _randn(gens: Sequence[torch.Generator], shape, device, dtype) -> torch.Tensor:
    """(B, *shape) standard normal, image b from gens[b] (float32 on CPU, then moved without
    blocking the host: ``to_device``)."""
    return to_device(torch.stack([torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in gens]),
                     device, dtype)


def dit_model_fn(transformer) -> ModelFn:
    """Wrap a diffusers DiTTransformer2DModel as model_fn(x, t, y) -> (B, 2C, H, W).

    Only this call runs in the transformer's dtype (e.g. bfloat16 weights): x is cast to it on
    the way in; ``sample`` casts the output back to its float32 (or float64) state.
    """
    def fn(x, t, y):
        return transformer(x.to(transformer.dtype), timestep=t, class_labels=y).sample
    return fn


def state_dtype(dtype) -> torch.dtype:
    """The sampler state's dtype: float64 stays, anything else (float16, bfloat16) is float32.

    A half-precision state would round away the small per-step guidance term (|g| ~ 1e-3 of |x|
    is below bfloat16's resolution of 2^-8), so only the model call runs in half precision.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def cfg_combine(out: torch.Tensor, B: int, cfg_scale: float, n_eps: int) -> torch.Tensor:
    """Classifier-free guidance on a [cond; null] model output.

    out (2B, C', H, W) -> (B, C', H, W): the first n_eps channels (3 = DiT's "first3", C = the
    diffusers "all") become uncond + s (cond − uncond); every other channel (the rest of eps,
    the variance channels) comes from the conditional half.
    """
    cond, uncond = out[:B], out[B:]
    res = cond.clone()
    res[:, :n_eps] = uncond[:, :n_eps] + cfg_scale * (cond[:, :n_eps] - uncond[:, :n_eps])
    return res


@torch.no_grad()
def sample(model_fn: ModelFn, diffusion: RespacedDiffusion, labels: torch.Tensor, seeds: Sequence[int],
           latent_shape: Sequence[int], *, null_label: int, cfg_scale: float = 4.0,
           cfg_channels: str = "first3", variance_type: str = "learned_range", sampler: str = "ddpm",
           eta: float = 0.0, guidance=None, device="cpu", dtype=torch.float32,
           return_trajectory: bool = False):
    """Sample B latents. labels (B,) long, seeds B ints, latent_shape (C, H, W).

    model_fn(x (B', C, H, W), t (B',) long ORIGINAL timesteps, y (B',) long) -> (B', C or 2C, H, W);
    dtype: the sampler state's dtype, float32 (default) or float64; a half dtype (the model's, e.g.
    bfloat16) is promoted to float32 (``state_dtype``): the state, the schedule coefficients and
    the guidance stay in float32 and only model_fn runs in the model's dtype. x arrives in the
    state's dtype; the output is cast back to it.
    cfg_scale 1.0: a single forward without the null batch. cfg_channels: "first3" (DiT) | "all"
    (diffusers). sampler "ddpm" (ancestral, variance from ``variance_type``) | "ddim" (``eta``).
    guidance: object with is_on(step) and __call__(x_t (B, D), x0_hat (B, D), step) -> (B, D);
    None = plain CFG sampling. For DDIM, StepInfo.sigma_t is still the DDPM reverse std.
    -> x_0 latents (B, C, H, W) in the model's (scaled) latent space; decode with /scaling_factor.
       With return_trajectory: (x_0, trajectory (N+1, B, C, H, W) on CPU, x_T first).
    """
    if cfg_channels not in ("first3", "all"):
        raise ValueError(f"cfg_channels must be 'first3' (DiT) or 'all' (diffusers), got {cfg_channels!r}")
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    dtype = state_dtype(dtype)
    B = len(seeds)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).to(device)
    if len(labels) != B:
        raise ValueError(f"got {len(labels)} labels but {B} seeds; one seed per image")
    C = int(latent_shape[0])
    guidance = guidance or NoGuidance()
    gens = [make_generators(s) for s in seeds]
    noise_gens, guide_gens = [g[0] for g in gens], [g[1] for g in gens]
    use_cfg = float(cfg_scale) != 1.0
    y_in = torch.cat([labels, torch.full_like(labels, int(null_label))]) if use_cfg else labels

    x = _randn(noise_gens, latent_shape, device, dtype)                 # x_T (B, C, H, W)
    traj = [x.cpu()] if return_trajectory else None
    N = diffusion.num_steps
    for i, t in enumerate(diffusion.timesteps.tolist()):
        t_idx = N - 1 - i                                               # respaced index
        # --- model, with classifier-free guidance -----------------------------------------
        x_in = torch.cat([x, x]) if use_cfg else x
        t_in = torch.full((len(x_in),), t, dtype=torch.long, device=device)
        out = model_fn(x_in, t_in, y_in).to(dtype)
        if use_cfg:
            out = cfg_combine(out, B, cfg_scale, n_eps=3 if cfg_channels == "first3" else C)
        # --- reverse-step Gaussian ---------------------------------------------------------
        mean, log_var, x0_hat, eps = diffusion.p_mean_variance(x, t_idx, out, variance_type)
        sigma_ddpm = torch.exp(0.5 * log_var).expand_as(x)
        if sampler == "ddim":
            mean, std = diffusion.ddim_step(x, t_idx, x0_hat, eta)
            std = std.expand_as(x) if float(eta) > 0 and t_idx > 0 else None
        else:
            std = sigma_ddpm if t_idx > 0 else None
        # --- guidance -----------------------------------------------------------------------
        step = StepInfo(i=i, t_index=t_idx, t=t, n_steps=N, alpha_bar_t=diffusion.alpha_bar(t_idx),
                        sigma_t=sigma_ddpm.reshape(B, -1), generators=guide_gens)
        if guidance.is_on(step):
            g = guidance(x.reshape(B, -1), x0_hat.reshape(B, -1), step).reshape_as(x)
            mean = mean + g
        # --- x_{t-1} = μ + g + σ noise ---------------------------------------------------------
        if std is not None:
            x = mean + std * _randn(noise_gens, latent_shape, device, dtype)
        else:
            x = mean
        if traj is not None:
            traj.append(x.cpu())
    return (x, torch.stack(traj)) if return_trajectory else x
