"""The generation pipeline, pure: frozen DiT + VAE, a respaced schedule, class labels, per-image
seeds, targets, neighbourhoods and the guidance parameters -> uint8 images. No Ray, no I/O: a
notebook calls it the way the generator actor does (``generator.py`` reads the inputs, calls
this, and commits the shards).

    pipe = GenerationPipeline.from_job(job, dit, vae, info)        # models from models.load_generator
    images = pipe(labels, seeds, targets, neighbourhoods)          # uint8 (B, H, W, C)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import JobConfig
from .units import dit_batches, to_uint8


@dataclass(frozen=True)
class Crop:
    """The window of a decoded image that holds the source image: undoes the encoder's ``pad``
    (Fashion-MNIST 28 x 28 padded to the prior's 32 x 32 -> ``Crop(2, 2, 28, 28)``)."""
    top: int
    left: int
    height: int
    width: int

    def __call__(self, imgs: np.ndarray) -> np.ndarray:      # (B, C, H, W) -> (B, C, height, width)
        return imgs[:, :, self.top:self.top + self.height, self.left:self.left + self.width]


def pad_crop(preprocess: str, size: int, native_hw: tuple[int, int]) -> Crop | None:
    """The crop that undoes ``preprocess`` of images of ``native_hw`` at the model's ``size``:
    ``pad`` centres the image on a size x size canvas (``data.preprocess.pad``); other modes
    leave nothing to undo."""
    h, w = (int(x) for x in native_hw)
    if preprocess != "pad" or (h >= size and w >= size):
        return None
    return Crop((size - h) // 2, (size - w) // 2, h, w)


@dataclass(frozen=True)
class SamplerSpec:
    """The sampler settings of ``sample`` (``variance_type`` already resolved from the model)."""
    kind: str = "ddpm"
    steps: int = 50
    cfg_scale: float = 4.0
    cfg_channels: str = "first3"
    variance_type: str = "learned_range"
    eta: float = 0.0


class GenerationPipeline:
    """``(labels (B,), seeds (B,), targets (B, D) | None, neighbourhoods [B x (M_b, D)] | None)
    -> uint8 (B, H, W, C)`` in DiT batches of ``batch_size``. ``guidance`` None: plain DiT (no
    targets); else ManifoldGuidance with these parameters (neighbourhoods needed when
    ``needs_neighbourhoods``). Per-image seeds: the images do not depend on ``batch_size``."""

    def __init__(self, dit, vae, info, *, sampler: SamplerSpec, guidance=None, batch_size: int = 16,
                 crop: Crop | None = None, device: str = "cpu"):
        from ..method import GaussianDiffusion
        self.dit, self.vae, self.info = dit, vae, info
        self.diffusion = GaussianDiffusion().respaced(sampler.steps)
        self.sampler, self.guidance, self.batch_size = sampler, guidance, int(batch_size)
        self.crop, self.device = crop, device

    @classmethod
    def from_job(cls, job: JobConfig, dit, vae, info, *, device: str = "cpu", crop: Crop | None = None):
        s = job.sampler
        vt = s.variance_type
        if vt == "auto":
            vt = "learned_range" if info.learned_sigma else "fixed_small"
        spec = SamplerSpec(kind=s.kind, steps=s.steps, cfg_scale=s.cfg_scale, cfg_channels=s.cfg_channels,
                           variance_type=vt, eta=s.eta)
        return cls(dit, vae, info, sampler=spec, guidance=job.guidance_params if job.spec.guides else None,
                   batch_size=job.generate.batch_size, crop=crop, device=device)

    @property
    def needs_neighbourhoods(self) -> bool:
        p = self.guidance
        return p is not None and p.manifold_scale > 0 and p.basis != "reference"

    @property
    def min_neighbours(self) -> int:
        return self.guidance.min_neighbours if self.guidance is not None else 0

    def __call__(self, labels, seeds, targets=None, neighbourhoods=None) -> np.ndarray:
        import torch

        from ..method import ManifoldGuidance, dit_model_fn, pad_neighbourhoods, sample
        from ..models import decode_latents
        labels = np.asarray(labels, dtype=np.int64)
        seeds = [int(s) for s in seeds]
        if len(seeds) != len(labels):
            raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds")
        if self.guidance is not None and targets is None:
            raise ValueError("guided generation needs a target per image")
        if self.needs_neighbourhoods and neighbourhoods is None:
            raise ValueError(f"basis {self.guidance.basis!r} needs a neighbourhood per image")
        info, sp = self.info, self.sampler
        shape = (info.latent_channels, info.latent_size, info.latent_size)
        dtype = next(self.dit.parameters()).dtype
        out = []
        for sl in dit_batches(len(labels), self.batch_size):
            guidance = None
            if self.guidance is not None:
                c = torch.as_tensor(np.stack([np.asarray(t, np.float32).reshape(-1) for t in targets[sl]]))
                nb = pad_neighbourhoods(neighbourhoods[sl]) if self.needs_neighbourhoods else None
                guidance = ManifoldGuidance(c, nb, self.guidance)
            x0 = sample(dit_model_fn(self.dit), self.diffusion, torch.as_tensor(labels[sl]), seeds[sl], shape,
                        null_label=info.null_label, cfg_scale=sp.cfg_scale, cfg_channels=sp.cfg_channels,
                        variance_type=sp.variance_type, sampler=sp.kind, eta=sp.eta, guidance=guidance,
                        device=self.device)                   # float32 state; only the DiT call in its dtype
            with torch.no_grad():
                imgs = decode_latents(self.vae, x0.to(dtype), info.scaling_factor).float().cpu().numpy()
            out.append(to_uint8(self.crop(imgs) if self.crop else imgs))
        return np.concatenate(out) if out else np.zeros((0, 0, 0, info.image_channels), np.uint8)
