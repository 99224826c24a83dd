"""Train the project's own small priors (``mgd-ray prior train jobs/prior-<dataset>.yaml``).

No pretrained class-conditional diffusion model exists for 8-32 px data, so for the small
datasets we train one ONCE, with the same classes DiT-XL/2 uses (diffusers ``AutoencoderKL``
and ``DiTTransformer2DModel``), and ship the weights. Distillation never trains it: it is a
frozen input, exactly like DiT-XL/2 for ImageNet.

Recipe (DiT's, scaled down):
1. VAE: reconstruction MSE + ``kl_weight`` * KL, AdamW. Afterwards the scaling factor is set to
   1 / std of the posterior-mean latents of the train split (written into the VAE config).
2. DiT: linear beta schedule over 1000 steps, epsilon prediction, learned-range variance trained
   with the hybrid loss (MSE on epsilon + the variational bound term with a stop-gradient on the
   mean, as improved-DDPM/DiT), 10 % label dropout to the null class (diffusers' label
   embedding does it in train mode), EMA of the weights (saved), AdamW.
The record ``prior.json`` holds dataset, command, steps, times, git commit and (after
``mgd-ray prior evaluate``) the quality figures.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import DataConfig, JobError, format_validation_error
from .provenance import git_commit


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VAETrain(_M):
    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64])
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 16
    steps: int = Field(default=600, gt=0)
    batch_size: int = 64
    lr: float = 1e-3
    kl_weight: float = 1e-4


class DiTTrain(_M):
    num_heads: int = 4
    head_dim: int = 48
    num_layers: int = 6
    patch_size: int = 2
    learned_sigma: bool = True
    steps: int = Field(default=4000, gt=0)
    batch_size: int = 256
    lr: float = 3e-4
    ema: float = 0.999
    grad_clip: float = 1.0
    max_minutes: float | None = Field(default=None, gt=0, description="stop early at this budget (recorded)")
    checkpoint_every: int = Field(default=500, gt=0)
    lr_schedule: str = Field(default="constant", pattern="^(constant|cosine)$",
                             description="cosine: decay lr to 0 over `steps` (the usual way to end a run)")


class PriorSpec(_M):
    name: str
    image_size: int
    preprocess: str = "pad"
    vae: VAETrain = Field(default_factory=VAETrain)
    dit: DiTTrain = Field(default_factory=DiTTrain)
    threads: int = 2
    seed: int = 0
    vae_from: str | None = Field(default=None, description="reuse a trained VAE dir (skips VAE training)")
    dit_from: str | None = Field(default=None, description="continue training from a trained transformer dir "
                                 "(its EMA weights start both the online and the EMA model; fresh optimiser)")


class PriorJob(_M):
    data: DataConfig
    prior: PriorSpec


def load_prior_job(path, overrides=None) -> PriorJob:
    from .config import apply_overrides
    raw = yaml.safe_load(Path(path).read_text())
    raw = apply_overrides(raw, overrides)
    try:
        return PriorJob.model_validate(raw)
    except ValidationError as e:
        raise JobError(format_validation_error(e, f"prior job {path}")) from None


def load_images(job: PriorJob, split: str):
    """-> (x float32 (N,C,H,W) in [-1,1], y int64 (N,), class names)."""
    from .data import open_source, preprocess
    src = open_source(job.data)
    arr = src.arrays(split)
    x = preprocess(arr["image"], job.prior.image_size, mode=job.prior.preprocess)
    return x, arr["label"].astype(np.int64), list(src.classes.names)


def _log(msg: str):
    print(f"[prior] {msg}", flush=True)


def train_vae(x, spec: PriorSpec):
    import torch
    from .models import build_vae
    v = spec.vae
    torch.manual_seed(spec.seed)
    vae = build_vae(x.shape[1], v.block_out_channels, v.latent_channels, v.layers_per_block,
                    v.norm_num_groups, spec.image_size, scaling_factor=1.0)
    opt = torch.optim.AdamW(vae.parameters(), lr=v.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(spec.seed)
    xt = torch.from_numpy(x)
    t0 = time.time()
    for step in range(1, v.steps + 1):
        idx = torch.randint(0, len(xt), (v.batch_size,), generator=g)
        xb = xt[idx]
        post = vae.encode(xb).latent_dist
        rec = vae.decode(post.sample()).sample
        mse = torch.mean((rec - xb) ** 2)
        kl = post.kl().mean() / xb[0].numel()
        loss = mse + v.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == v.steps:
            el = time.time() - t0
            _log(f"vae step {step}/{v.steps} mse {mse.item():.4f} kl {kl.item():.3f} "
                 f"{step / el:.2f} it/s eta {(v.steps - step) * el / step:.0f}s")
    vae.eval()
    return vae, time.time() - t0


def encode_all(vae, x, batch=512):
    import torch
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(vae.encode(torch.from_numpy(x[i:i + batch])).latent_dist.mean)
    return torch.cat(out)


class _Schedule:
    """Just what the hybrid loss needs (float64 numpy -> torch)."""

    def __init__(self, T=1000):
        import torch
        betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
        acp = np.cumprod(1 - betas)
        acp_prev = np.append(1.0, acp[:-1])
        post_var = betas * (1 - acp_prev) / (1 - acp)
        f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        self.T = T
        self.sqrt_acp, self.sqrt_1m_acp = f(np.sqrt(acp)), f(np.sqrt(1 - acp))
        self.sqrt_recip_acp, self.sqrt_recipm1_acp = f(np.sqrt(1 / acp)), f(np.sqrt(1 / acp - 1))
        self.coef1 = f(betas * np.sqrt(acp_prev) / (1 - acp))
        self.coef2 = f((1 - acp_prev) * np.sqrt(1 - betas) / (1 - acp))
        self.post_logvar = f(np.log(np.append(post_var[1], post_var[1:])))
        self.log_betas = f(np.log(betas))


def _bc(a, t):
    return a[t].view(-1, 1, 1, 1)


def hybrid_loss(out, z0, noise, x_t, t, sch: _Schedule, C: int):
    """MSE on eps + (learned sigma) the VLB term with the mean detached. Returns (loss, mse, vb)."""
    import torch
    eps = out[:, :C]
    mse = ((eps - noise) ** 2).mean()
    if out.shape[1] == C:
        return mse, mse, torch.zeros(())
    v = out[:, C:]
    frac = (v + 1) / 2
    model_logvar = frac * _bc(sch.log_betas, t) + (1 - frac) * _bc(sch.post_logvar, t)
    x0_hat = _bc(sch.sqrt_recip_acp, t) * x_t - _bc(sch.sqrt_recipm1_acp, t) * eps.detach()
    mean_model = _bc(sch.coef1, t) * x0_hat + _bc(sch.coef2, t) * x_t
    mean_true = _bc(sch.coef1, t) * z0 + _bc(sch.coef2, t) * x_t
    lv_true = _bc(sch.post_logvar, t)
    kl = 0.5 * (-1.0 + model_logvar - lv_true + torch.exp(lv_true - model_logvar)
                + (mean_true - mean_model) ** 2 * torch.exp(-model_logvar))
    nll = 0.5 * (math.log(2 * math.pi) + model_logvar + (z0 - mean_model) ** 2 * torch.exp(-model_logvar))
    per = torch.where((t == 0).view(-1, 1, 1, 1), nll, kl).mean(dim=(1, 2, 3)) / math.log(2.0)
    vb = per.mean()
    return mse + vb, mse, vb


def train_dit(z, y, num_classes: int, spec: PriorSpec, checkpoint=None):
    import copy

    import torch
    from .models import build_dit
    d = spec.dit
    torch.manual_seed(spec.seed + 1)
    C, S = z.shape[1], z.shape[2]
    dit = build_dit(num_classes, C, S, patch_size=d.patch_size, num_layers=d.num_layers,
                    num_heads=d.num_heads, head_dim=d.head_dim, learned_sigma=d.learned_sigma)
    if spec.dit_from:
        from diffusers import DiTTransformer2DModel
        start = DiTTransformer2DModel.from_pretrained(spec.dit_from, local_files_only=True)
        keys = {k for k in set(start.config) | set(dit.config) if not k.startswith("_")}
        diff = sorted(k for k in keys if start.config.get(k) != dit.config.get(k))
        if diff:
            raise JobError(f"prior.dit_from {spec.dit_from}: its config differs from prior.dit in {diff}; "
                           "set the same architecture or drop dit_from")
        dit.load_state_dict(start.state_dict())
        _log(f"dit: continuing from {spec.dit_from}")
    ema = copy.deepcopy(dit).requires_grad_(False)
    opt = torch.optim.AdamW(dit.parameters(), lr=d.lr, weight_decay=0.0)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=d.steps) if d.lr_schedule == "cosine"
             else None)
    sch = _Schedule()
    g = torch.Generator().manual_seed(spec.seed + 2)
    yt = torch.from_numpy(y)
    dit.train()
    t0 = time.time()
    for step in range(1, d.steps + 1):
        idx = torch.randint(0, len(z), (d.batch_size,), generator=g)
        z0, yb = z[idx], yt[idx]
        t = torch.randint(0, sch.T, (d.batch_size,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        x_t = _bc(sch.sqrt_acp, t) * z0 + _bc(sch.sqrt_1m_acp, t) * noise
        out = dit(x_t, timestep=t, class_labels=yb).sample
        loss, mse, vb = hybrid_loss(out, z0, noise, x_t, t, sch, C)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), d.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), dit.parameters()):
                pe.mul_(d.ema).add_(pm.detach(), alpha=1 - d.ema)
        if checkpoint is not None and step % d.checkpoint_every == 0 and step < d.steps:
            checkpoint(ema, step, time.time() - t0)
        if d.max_minutes and time.time() - t0 > 60 * d.max_minutes:
            _log(f"dit: time budget of {d.max_minutes} min reached at step {step}/{d.steps}; stopping")
            break
        if step % 50 == 0 or step == d.steps:
            el = time.time() - t0
            _log(f"dit step {step}/{d.steps} loss {loss.item():.4f} mse {mse.item():.4f} vb {vb.item():.4f} "
                 f"{step / el:.2f} it/s eta {(d.steps - step) * el / step:.0f}s")
    ema.eval()
    return ema, time.time() - t0, step


def train_prior(job: PriorJob, out_dir: Path, command: str) -> dict:
    import torch
    from diffusers import AutoencoderKL

    from .models import save_generator
    torch.set_num_threads(job.prior.threads)
    spec = job.prior
    t_all = time.time()
    x, y, names = load_images(job, "train")
    _log(f"{len(x)} train images {x.shape[1:]} of {len(names)} classes from {job.data.source}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.vae_from:
        vae = AutoencoderKL.from_pretrained(spec.vae_from, local_files_only=True).eval()
        t_vae = float(json.loads((Path(spec.vae_from).parent / "prior.json").read_text())["vae"]["seconds"]) \
            if (Path(spec.vae_from).parent / "prior.json").is_file() else 0.0
        vae.register_to_config(scaling_factor=1.0)
        _log(f"vae loaded from {spec.vae_from}")
    else:
        vae, t_vae = train_vae(x, spec)
    lat = encode_all(vae, x)
    scaling = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(out_dir / "vae")
    _log(f"vae trained in {t_vae:.0f}s; latent {tuple(lat.shape[1:])}, std {lat.std():.3f} -> scaling_factor {scaling:.4f}")
    z = lat * scaling
    record = {
        "name": spec.name, "dataset": job.data.source, "classes": names, "command": command,
        "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{torch.get_num_threads()} CPU thread(s), torch {torch.__version__}, shared 2-core box",
        "image_size": spec.image_size, "preprocess": spec.preprocess, "train_images": int(len(x)),
        "vae": {**spec.vae.model_dump(), "seconds": round(t_vae, 1), "scaling_factor": scaling},
        "complete": False,
    }
    if spec.dit_from:  # the steps this run continues from, so the record states the whole training
        src = Path(spec.dit_from).parent / "prior.json"
        before = json.loads(src.read_text())["dit"] if src.is_file() else {}
        record["dit_from"] = {"dir": spec.dit_from, "steps_done": before.get("steps_done"),
                              "seconds": before.get("seconds")}

    def save(dit, steps_done, secs, complete=False):
        save_generator(dit, vae, out_dir)
        record["dit"] = {**spec.dit.model_dump(), "steps_done": steps_done, "seconds": round(secs, 1),
                         "params": int(sum(p.numel() for p in dit.parameters()))}
        record["complete"] = complete
        record["total_seconds"] = round(time.time() - t_all, 1)
        (out_dir / "prior.json").write_text(json.dumps(record, indent=1))
        _log(f"saved {'final' if complete else 'checkpoint'} prior at dit step {steps_done} to {out_dir}")

    dit, t_dit, steps_done = train_dit(z, y, len(names), spec, checkpoint=lambda m, s, t: save(m, s, t))
    save(dit, steps_done, t_dit, complete=True)
    return record


def main_train(job_path: str, out: str | None, overrides: list[str] | None):
    job = load_prior_job(job_path, overrides)
    from .models import PRIORS_DIR
    out_dir = Path(out) if out else PRIORS_DIR / job.prior.name
    cmd = "mgd-ray prior train " + job_path + "".join(f" --set {o}" for o in overrides or [])
    return train_prior(job, out_dir, cmd)


if __name__ == "__main__":  # pragma: no cover
    main_train(sys.argv[1], None, sys.argv[2:])
