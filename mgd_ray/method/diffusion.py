"""DiT's Gaussian diffusion: linear beta schedule, epsilon prediction, respacing, posterior.

This reproduces the arithmetic of DiT's ``diffusion/`` package (itself from OpenAI's
improved-diffusion / ADM) without copying it: every coefficient is computed in float64
numpy from the closed-form DDPM formulas and only cast to the sample's dtype when used (float32 at
least: a bfloat16 input gets float32 coefficients and float32 results).

Notation (kept in the code):
    beta_t                 noise added at step t;  alpha_t = 1 - beta_t
    alpha_bar_t            prod_{s<=t} alpha_s  (``alphas_cumprod``)
    x_t                    sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps
    x0_hat                 (x_t - sqrt(1 - alpha_bar_t) * eps_hat) / sqrt(alpha_bar_t)
    posterior q(x_{t-1} | x_t, x_0) = N(coef1_t * x_0 + coef2_t * x_t, beta_tilde_t)
        coef1_t = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t)
        coef2_t = (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t)
        beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
    sigma_t                std of the reverse step, exp(log_var / 2)

Respacing (DiT ``space_timesteps`` / ``SpacedDiffusion``): keep a subset S of the original
1000 steps; the respaced betas are ``1 - alpha_bar[s_k] / alpha_bar[s_{k-1}]`` (alpha_bar of
the previous kept step, 1 before the first), so the kept alpha_bar values are unchanged.
The model is always called with ORIGINAL timesteps (``timestep_map``); the respaced index
``t_idx`` (0..N-1) addresses the respaced coefficient tables.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

VARIANCE_TYPES = ("learned_range", "fixed_small", "fixed_large")


# ----------------------------------------------------------------------------------------
# schedules and respacing (pure numpy)
# ----------------------------------------------------------------------------------------
def linear_betas(num_train_steps: int = 1000) -> np.ndarray:
    """DiT/ADM "linear" schedule, scaled so it stays comparable for any step count.

    -> (num_train_steps,) float64, from 1e-4 * 1000/N to 0.02 * 1000/N.
    """
    scale = 1000.0 / num_train_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_train_steps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """Which original steps to keep, exactly as DiT's ``space_timesteps``.

    section_counts: an int or "50" (one section), "10,15,20" (equal-size sections with that
    many steps each), or "ddimN" (a fixed integer stride giving exactly N steps, DDIM paper).
    Inside a section of size L with n steps the kept offsets are round(k * (L-1)/(n-1)),
    accumulated in floating point and rounded with Python's round, as DiT does.
    -> sorted list of kept original timesteps (ascending).
    For (1000, 50): [0, 20, 41, 61, ..., 979, 999].
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot make exactly {desired} DDIM steps with an integer stride over "
                f"{num_timesteps} steps; choose another count or plain respacing ('{desired}')")
        counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(x) for x in section_counts]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, n in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if n < 1 or size < n:
            raise ValueError(f"cannot take {n} steps from a section of {size} steps "
                             f"(num_timesteps={num_timesteps}, sections={counts})")
        stride = 1.0 if n <= 1 else (size - 1) / (n - 1)
        cur = 0.0
        for _ in range(n):
            kept.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(kept))


def _extract(arr: torch.Tensor, t_idx, like: torch.Tensor) -> torch.Tensor:
    """Gather per-sample coefficients and broadcast them against ``like``.

    arr (N,) float64; t_idx int or (B,) long; like (B, ...) -> (B, 1, ..., 1) in like.dtype, but
    never below float32: coefficients such as sqrt(1/alpha_bar - 1) ~ 1e-2 .. 1e2 lose two to three
    digits in bfloat16, so a half-precision ``like`` gets float32 coefficients (and float32 results).
    """
    dtype = like.dtype if like.dtype == torch.float64 else torch.float32
    if isinstance(t_idx, int) or (torch.is_tensor(t_idx) and t_idx.ndim == 0):
        # one step for the batch: a fill on like's device, no host-to-device copy (no CUDA sync)
        return torch.full((like.shape[0],) + (1,) * (like.ndim - 1), float(arr[int(t_idx)]),
                          dtype=dtype, device=like.device)
    out = arr[t_idx.to("cpu").long()].to(device=like.device, dtype=dtype)
    return out.view(-1, *([1] * (like.ndim - 1)))


# ----------------------------------------------------------------------------------------
# the diffusion process over a set of kept steps
# ----------------------------------------------------------------------------------------
class RespacedDiffusion:
    """Diffusion over N kept steps (N = 1000 gives the original process).

    Attributes (float64 numpy, indexed by respaced t_idx = 0..N-1):
      timestep_map (N,)          original timestep of each t_idx (ascending)
      timesteps    (N,) long     original timesteps in SAMPLING order (descending): 999 .. 0
      t_indices    (N,) long     respaced indices in sampling order: N-1 .. 0
      betas, alphas_cumprod, alphas_cumprod_prev, posterior_variance,
      posterior_log_variance_clipped, posterior_mean_coef1, posterior_mean_coef2
    """

    def __init__(self, base_alphas_cumprod: np.ndarray, use_timesteps: Iterable[int]):
        self.timestep_map = np.array(sorted(set(int(t) for t in use_timesteps)), dtype=np.int64)
        ac_kept = np.asarray(base_alphas_cumprod, dtype=np.float64)[self.timestep_map]
        ac_prev_kept = np.append(1.0, ac_kept[:-1])
        betas = 1.0 - ac_kept / ac_prev_kept                      # (N,)
        self.num_steps = len(betas)
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)                   # == ac_kept up to rounding
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        ac, ac_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1.0)
        self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        # log of the posterior variance, with the 0 at t=0 replaced by the value at t=1
        if self.num_steps > 1:
            self.posterior_log_variance_clipped = np.log(
                np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        else:
            self.posterior_log_variance_clipped = np.log(np.maximum(betas, 1e-20))
        self.posterior_mean_coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
        large = np.append(self.posterior_variance[1], betas[1:]) if self.num_steps > 1 else betas
        self.fixed_large_log_variance = np.log(large)
        self.log_betas = np.log(betas)
        # sampling order
        self.timesteps = torch.from_numpy(self.timestep_map[::-1].copy())      # (N,) long, desc
        self.t_indices = torch.arange(self.num_steps - 1, -1, -1, dtype=torch.long)
        self._t = {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in (
            "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1", "posterior_mean_coef2",
            "posterior_variance", "posterior_log_variance_clipped", "fixed_large_log_variance",
            "log_betas", "alphas_cumprod", "alphas_cumprod_prev")}

    def __repr__(self) -> str:
        return f"RespacedDiffusion(num_steps={self.num_steps}, timesteps={self.timestep_map[:3].tolist()}..)"

    # --- forward process -----------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t_idx, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise.   x0, noise (B, ...) -> (B, ...)"""
        return (_extract(self._t["sqrt_alphas_cumprod"], t_idx, x0) * x0
                + _extract(self._t["sqrt_one_minus_alphas_cumprod"], t_idx, x0) * noise)

    def predict_x0(self, x_t: torch.Tensor, t_idx, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat = sqrt(1/alpha_bar) x_t - sqrt(1/alpha_bar - 1) eps.   (B, ...) -> (B, ...)"""
        return (_extract(self._t["sqrt_recip_alphas_cumprod"], t_idx, x_t) * x_t
                - _extract(self._t["sqrt_recipm1_alphas_cumprod"], t_idx, x_t) * eps)

    def predict_eps(self, x_t: torch.Tensor, t_idx, x0_hat: torch.Tensor) -> torch.Tensor:
        """eps = (sqrt(1/alpha_bar) x_t - x0_hat) / sqrt(1/alpha_bar - 1).   (B, ...) -> (B, ...)"""
        return ((_extract(self._t["sqrt_recip_alphas_cumprod"], t_idx, x_t) * x_t - x0_hat)
                / _extract(self._t["sqrt_recipm1_alphas_cumprod"], t_idx, x_t))

    def q_posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t_idx) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x0) = coef1 x0 + coef2 x_t.   (B, ...) -> (B, ...)"""
        return (_extract(self._t["posterior_mean_coef1"], t_idx, x_t) * x0
                + _extract(self._t["posterior_mean_coef2"], t_idx, x_t) * x_t)

    # --- reverse process -----------------------------------------------------------------
    def p_mean_variance(self, x_t: torch.Tensor, t_idx, model_out: torch.Tensor,
                        variance_type: str = "learned_range"):
        """Reverse-step Gaussian from an epsilon-predicting model's output.

        x_t (B, C, ...); model_out (B, C, ...) or (B, 2C, ...) for learned_range, whose second
        half v in [-1, 1] interpolates the log variance between the clipped posterior log
        variance (v=-1) and log beta_t (v=+1): log_var = (v+1)/2 log beta + (1-v)/2 log beta_tilde.
        -> (mean, log_var, x0_hat, eps), each (B, C, ...) (log_var broadcastable for fixed types).
        """
        C = x_t.shape[1]
        if variance_type == "learned_range":
            if model_out.shape[1] != 2 * C:
                raise ValueError(f"learned_range needs a model output with 2*C = {2 * C} channels, "
                                 f"got {model_out.shape[1]}; use variance_type='fixed_small' or "
                                 f"'fixed_large' for an epsilon-only model")
            eps, v = model_out[:, :C], model_out[:, C:]
            min_log = _extract(self._t["posterior_log_variance_clipped"], t_idx, x_t)
            max_log = _extract(self._t["log_betas"], t_idx, x_t)
            frac = (v + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        elif variance_type in ("fixed_small", "fixed_large"):
            eps = model_out[:, :C]
            key = "posterior_log_variance_clipped" if variance_type == "fixed_small" else "fixed_large_log_variance"
            log_var = _extract(self._t[key], t_idx, x_t).expand_as(x_t)
        else:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
        x0_hat = self.predict_x0(x_t, t_idx, eps)
        mean = self.q_posterior_mean(x0_hat, x_t, t_idx)
        return mean, log_var, x0_hat, eps

    def ddim_step(self, x_t: torch.Tensor, t_idx, x0_hat: torch.Tensor, eta: float = 0.0):
        """DDIM (Song et al., Eq. 12), as DiT's ``ddim_sample``: eps is re-derived from x0_hat.

        x_t, x0_hat (B, C, ...) -> (mean (B, C, ...), std (B, 1, ..., 1)); x_{t-1} = mean + std * noise.
        std = eta * sqrt((1 - ab_prev)/(1 - ab)) * sqrt(1 - ab/ab_prev); 0 at t_idx = 0.
        """
        eps = self.predict_eps(x_t, t_idx, x0_hat)
        ab = _extract(self._t["alphas_cumprod"], t_idx, x_t)
        ab_prev = _extract(self._t["alphas_cumprod_prev"], t_idx, x_t)
        std = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        mean = x0_hat * torch.sqrt(ab_prev) + torch.sqrt(1 - ab_prev - std ** 2) * eps
        return mean, std

    def alpha_bar(self, t_idx: int) -> float:
        """alpha_bar at a respaced index (scalar)."""
        return float(self.alphas_cumprod[int(t_idx)])


class GaussianDiffusion:
    """The 1000-step training process (DiT: linear betas, epsilon prediction)."""

    def __init__(self, num_train_steps: int = 1000, beta_schedule: str = "linear"):
        if beta_schedule != "linear":
            raise ValueError(f"beta_schedule must be 'linear' (DiT), got {beta_schedule!r}")
        self.num_train_steps = num_train_steps
        self.beta_schedule = beta_schedule
        self.betas = linear_betas(num_train_steps)                  # (T,)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)          # (T,)

    def respaced(self, steps: int | str | Sequence[int]) -> RespacedDiffusion:
        """Keep the steps DiT would keep for ``steps`` (int, "50", "ddim50", "10,20,20")."""
        return RespacedDiffusion(self.alphas_cumprod, space_timesteps(self.num_train_steps, steps))

    def full(self) -> RespacedDiffusion:
        """All training steps (identity map)."""
        return RespacedDiffusion(self.alphas_cumprod, range(self.num_train_steps))
