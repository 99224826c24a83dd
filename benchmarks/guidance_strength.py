"""How much of the mode guidance survives the tangent projection? (evidence for the quality report)

    python -m benchmarks.guidance_strength --cell out/bench-quality/ipc10/manifoldgd-expected-leaves
    python -m benchmarks.guidance_strength --synthetic        # 4,096-dimensional latents (4x32x32)

``--cell``: one finished ManifoldGD cell (its job, its coreset targets and its latent cache); one
image per class (seed-0 targets) is sampled with the product's sampler and guidance under every
setting, with the cell's prior. Writes ``benchmarks/reports/guidance_strength[-<name>].{json,md}``.

``--synthetic``: the DiT-XL/2 latent shape (4x32x32 = 4,096 numbers) without a 675M-parameter
model on a CPU: a class-structured random data set (per class a mean, a random 16-dimensional
subspace with a decaying spectrum, isotropic noise; unit overall scale like SD latents), the
product's divisive coreset (IPC 10; target 0 of each class) and, as the denoiser, the EXACT
posterior mean of that class's data at every noise level (x̂0 = Σ_i w_i z_i with w = softmax of
−‖x_t − √ᾱ z_i‖² / 2(1−ᾱ)): an ideal class-conditional prior of the data, so x̂0 behaves like a
trained model's (a blurry mean early, a sharp sample late) and the projections see the
neighbourhood geometry of 4,096 dimensions. Settings share seeds and noise, so ``moved from DiT``
is the guidance's whole effect on the final latent.

Per setting: ``normal_share`` (mean over guided steps of ‖P_N g_mode‖/‖g_mode‖, where a basis is
computed), ``removed_share`` (mean over ALL guided steps of ‖g − g_mode‖/‖g_mode‖: what the rule
actually takes away, 0 on steps outside a projection window or where β_t = 0), how far the final
latent moved from plain DiT's, and how much closer to its target c it ended than DiT's did.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

from benchmarks import REPO, machine, md_table, relative_to_repo, write_report

STRICT = {"guidance.beta": 1.0, "guidance.beta_schedule": "constant", "guidance.basis": "expected",
          "guidance.d": 3, "guidance.K": 12, "guidance.t_project": None}
SETTINGS = [
    ("dit (no guidance)", {"method": "dit"}),
    ("mgd3-style: beta 0 (unprojected)", {**STRICT, "guidance.beta": 0.0}),
    ("expected, d 3, beta 1 (paper strict)", STRICT),
    ("expected, d 3, beta 0.5", {**STRICT, "guidance.beta": 0.5}),
    ("expected, d 8, K 16", {**STRICT, "guidance.d": 8, "guidance.K": 16}),
    ("expected, d 16, K 32", {**STRICT, "guidance.d": 16, "guidance.K": 32}),
    ("expected, d 32, K 64", {**STRICT, "guidance.d": 32, "guidance.K": 64}),
    ("expected, d 64, K 128", {**STRICT, "guidance.d": 64, "guidance.K": 128}),
    ("expected, beta ramp 0 -> 1", {**STRICT, "guidance.beta_schedule": "ramp"}),
    ("expected, beta decay 1 -> 0", {**STRICT, "guidance.beta_schedule": "decay"}),
    ("expected, window t <= 37", {**STRICT, "guidance.t_project": 37}),
    ("members, d 3", {**STRICT, "guidance.basis": "members"}),
    ("members, d 8, K 16", {**STRICT, "guidance.basis": "members", "guidance.d": 8, "guidance.K": 16}),
    ("members, d 8, K 16, window t <= 37", {**STRICT, "guidance.basis": "members", "guidance.d": 8,
                                           "guidance.K": 16, "guidance.t_project": 37}),
    ("noised, d 3, beta 1", {**STRICT, "guidance.basis": "noised"}),
    ("reference (published code)", {**STRICT, "guidance.basis": "reference"}),
]
COLS = ["setting", "guided_steps", "normal_share", "removed_share", "moved_from_dit", "moved_from_dit_rel",
        "dist_to_target_vs_dit"]


class _Recorder:
    """Wraps a guidance callable and keeps its per-step stats."""

    def __init__(self, g):
        self.g, self.stats = g, []

    def __getattr__(self, name):  # everything else (is_on, ...) is the wrapped guidance's
        return getattr(self.g, name)

    def __call__(self, x_t, x0_hat, step):
        out = self.g(x_t, x0_hat, step)
        if self.g.is_on(step):
            self.stats.append(dict(self.g.last_stats))
        return out


def _measure(raw: dict, c, targets: list, class_latents: dict, run_sampler) -> list[dict]:
    """Every setting on the same images. targets: per image (label, member_ids); class_latents:
    label -> (ids, Z); run_sampler(job, guidance) -> final latents (B, D)."""
    from mgd_ray.config import apply_overrides, job_from_dict
    from mgd_ray.method import ManifoldGuidance, neighbourhood_for_target, pad_neighbourhoods
    results, x_dit = [], None
    for name, ov in SETTINGS:
        job = job_from_dict(apply_overrides(dict(raw), [f"{k}={'null' if v is None else v}" for k, v in ov.items()]))
        params = job.guidance_params
        guidance = None
        if job.method != "dit":
            nb = None
            if params.basis != "reference":
                nb = pad_neighbourhoods([neighbourhood_for_target(
                    class_latents[lab][1], class_latents[lab][0], SimpleNamespace(member_ids=mem, target=c[b].numpy()),
                    job.coreset.neighbourhood_max, params.min_neighbours) for b, (lab, mem) in enumerate(targets)])
            guidance = _Recorder(ManifoldGuidance(c, nb, params))
        x0 = run_sampler(job, guidance).reshape(len(targets), -1).float()
        if x_dit is None:
            x_dit = x0
        st = guidance.stats if guidance else []
        nf = [s["normal_frac"] for s in st if "normal_frac" in s]
        rm = [s.get("removed_frac", 0.0) for s in st]
        d_dit = (x0 - x_dit).norm(dim=1)
        d_c, d_c_dit = (x0 - c).norm(dim=1), (x_dit - c).norm(dim=1)
        results.append({"setting": name, "overrides": ov, "guided_steps": len(st),
                        "normal_share": float(np.mean(nf)) if nf else float("nan"),
                        "removed_share": float(np.mean(rm)) if st and params.basis != "reference" else float("nan"),
                        "moved_from_dit": float(d_dit.mean()),
                        "moved_from_dit_rel": float((d_dit / d_c_dit).mean()),
                        "dist_to_target": float(d_c.mean()),
                        "dist_to_target_vs_dit": float((d_c / d_c_dit).mean())})
        r = results[-1]
        print(f"{name:40s} normal {r['normal_share']:.3f} removed {r['removed_share']:.3f} "
              f"moved {r['moved_from_dit']:.2f}  |x0-c|/|x0_dit-c| {r['dist_to_target_vs_dit']:.3f}", flush=True)
    return results


def run_cell(cell: Path) -> dict:
    import pyarrow.parquet as pq
    import torch

    from mgd_ray.config import JobConfig
    from mgd_ray.method import GaussianDiffusion, dit_model_fn, sample
    from mgd_ray.pipeline.workers import load_models, read_class_latents
    from mgd_ray.pipeline.store import Store
    torch.set_num_threads(1)
    raw = yaml.safe_load((cell / "config.yaml").read_text())
    base = JobConfig.model_validate(raw)
    store = Store(str(cell))
    rows = [r for r in pq.read_table(cell / "coreset" / "targets.parquet").to_pylist()
            if r["gen_seed"] == 0 and r["index"] == 0]
    rows.sort(key=lambda r: r["label"])
    dit, vae, info = load_models(base, "cpu")
    diff = GaussianDiffusion().respaced(base.sampler.steps)
    labels = torch.as_tensor([r["label"] for r in rows])
    seeds = [int(r["seed"]) for r in rows]
    shape = (info.latent_channels, info.latent_size, info.latent_size)
    c = torch.as_tensor(np.stack([np.asarray(r["target"], np.float32) for r in rows]))
    lat = {r["label"]: read_class_latents(store, r["label"]) for r in rows}
    vt = "learned_range" if info.learned_sigma else "fixed_small"

    def run_sampler(job, guidance):
        return sample(dit_model_fn(dit), diff, labels, seeds, shape, null_label=info.null_label,
                      cfg_scale=job.sampler.cfg_scale, cfg_channels=job.sampler.cfg_channels, variance_type=vt,
                      sampler=job.sampler.kind, guidance=guidance)
    res = _measure(raw, c, [(r["label"], r["member_ids"]) for r in rows], lat, run_sampler)
    return {"source": f"cell {cell.name}", "cell": relative_to_repo(cell), "images": len(rows),
            "latent_dim": int(c.shape[1]), "settings": res, "machine": machine()}


# ---- 4,096 dimensions without DiT-XL/2 ------------------------------------------------------
def synthetic_latents(n_classes: int = 10, per_class: int = 300, shape=(4, 32, 32), rank: int = 16,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-structured random latents: class mean (norm ~ 0.5 √D) + a random rank-``rank``
    subspace with spectrum 1/(1+j) + isotropic noise 0.1, scaled to unit std overall.
    -> (Z (n, D) float32, labels (n,))."""
    rng = np.random.default_rng(seed)
    D = int(np.prod(shape))
    Z, y = [], []
    for k in range(n_classes):
        mu = 0.5 * rng.standard_normal(D)
        A = np.linalg.qr(rng.standard_normal((D, rank)))[0] * (math.sqrt(D) / (1.0 + np.arange(rank))) * 0.8
        u = rng.standard_normal((per_class, rank))
        Z.append(mu + u @ A.T / math.sqrt(rank) + 0.1 * rng.standard_normal((per_class, D)))
        y.append(np.full(per_class, k))
    Z = np.concatenate(Z)
    Z = (Z / Z.std()).astype(np.float32)
    return Z, np.concatenate(y)


def ideal_denoiser(Z: np.ndarray, labels: np.ndarray, alphas_cumprod: np.ndarray, shape):
    """model_fn(x, t, y) -> eps of the exact posterior mean of the class's data (fixed variance)."""
    import torch
    Zc = {int(k): torch.as_tensor(Z[labels == k]) for k in np.unique(labels)}

    def fn(x, t, y):
        B = x.shape[0]
        xf = x.reshape(B, -1).double()
        out = []
        for b in range(B):
            ab = float(alphas_cumprod[int(t[b])])
            z = Zc[int(y[b])].double()
            logit = -((xf[b] - math.sqrt(ab) * z) ** 2).sum(1) / (2 * (1 - ab))
            x0 = torch.softmax(logit, 0) @ z
            out.append((xf[b] - math.sqrt(ab) * x0) / math.sqrt(1 - ab))
        return torch.stack(out).reshape(B, *shape).to(x.dtype)
    return fn


def run_synthetic(ipc: int = 10, seed: int = 0, shape=(4, 32, 32), n_classes: int = 10, per_class: int = 300) -> dict:
    """The ``--synthetic`` measurement (the defaults are the committed report's; tests shrink them)."""
    import torch

    from mgd_ray.config import job_from_dict
    from mgd_ray.method import GaussianDiffusion, build_coreset, sample
    torch.set_num_threads(1)
    Z, y = synthetic_latents(n_classes=n_classes, per_class=per_class, shape=shape, seed=seed)
    ids = np.arange(len(Z))
    raw = yaml.safe_load((REPO / "jobs" / "imagenette.yaml").read_text())
    raw.pop("data", None)      # the ImageNette job's guidance and sampler settings; data and model are ours
    raw["model"] = {"generator": "prior:digits"}
    base = job_from_dict(raw)
    targets, lat = [], {}
    for k in np.unique(y):
        tg = build_coreset(Z[y == k], ids[y == k], int(k), ipc, method="divisive", selection="leaves", seed=seed,
                           engine="numpy")[0]
        targets.append((int(k), tg.member_ids, tg.target))
        lat[int(k)] = (ids[y == k], Z[y == k])
    c = torch.as_tensor(np.stack([t[2] for t in targets]).astype(np.float32))
    gd = GaussianDiffusion()
    diff = gd.respaced(base.sampler.steps)
    model_fn = ideal_denoiser(Z, y, gd.alphas_cumprod, shape)
    labels = torch.as_tensor([t[0] for t in targets])
    seeds = [1000 + k for k in range(len(targets))]

    def run_sampler(job, guidance):
        return sample(model_fn, diff, labels, seeds, shape, null_label=len(targets), cfg_scale=1.0,
                      variance_type="fixed_small", sampler=job.sampler.kind, guidance=guidance)
    res = _measure(raw, c, [(t[0], t[1]) for t in targets], lat, run_sampler)
    return {"source": f"synthetic {'x'.join(map(str, shape))} class-structured latents, ideal class-conditional denoiser "
                      "(jobs/imagenette.yaml guidance settings; cfg 1, fixed_small variance)",
            "images": len(targets), "latent_dim": int(c.shape[1]), "per_class": int((y == 0).sum()),
            "member_counts": [int(len(t[1])) for t in targets], "settings": res, "machine": machine(),
            "note": "The ideal denoiser ends every trajectory on a training latent, so the final-latent columns are "
                    "quantised: settings that land on the same training points tie exactly (e.g. the reference row "
                    "and the unprojected one). normal_share and removed_share are per-step geometry and are not."}


def render(data: dict, cmd: str) -> str:
    """The Markdown report of one run (``data`` as written to the JSON report)."""
    md = ["# Guidance strength after the tangent projection", "",
          f"`{cmd}`: {data['source']}; one image per class (target 0 of seed 0), latent dim {data['latent_dim']}; "
          "same seeds and noise for every row, so `moved from DiT` is the guidance's whole effect on the final latent.", "",
          md_table(data["settings"], COLS), "",
          "`normal_share` = mean over the guided steps where a basis was computed of ‖P_N g_mode‖ / ‖g_mode‖ "
          "(the part of the mode vector normal to the tangent space); `removed_share` = mean over ALL guided steps "
          "of ‖g − g_mode‖ / ‖g_mode‖ (what the rule takes away: β = 1 removes the whole normal part, β = 0.5 half, "
          "0 outside a projection window); `moved_from_dit_rel` = ‖x0 − x0_DiT‖ / ‖x0_DiT − c‖; "
          "`dist_to_target_vs_dit` = ‖x0 − c‖ / ‖x0_DiT − c‖ (1 = no closer to the target than plain DiT)."]
    if data.get("note"):
        md += ["", data["note"]]
    return "\n".join(md)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="out/bench-quality/ipc10/manifoldgd-expected-leaves")
    ap.add_argument("--synthetic", action="store_true", help="4,096-dimensional latents (see above)")
    ap.add_argument("--name", default=None, help="report name suffix: benchmarks/reports/guidance_strength-<name>.md")
    args = ap.parse_args(argv)
    suffix = f" --name {args.name}" if args.name else ""
    if args.synthetic:
        data = run_synthetic()
        cmd = "python -m benchmarks.guidance_strength --synthetic" + suffix
    else:
        data = run_cell(Path(args.cell).resolve())
        # the cell as the report records it: relative to the checkout, never this machine's path
        cmd = f"python -m benchmarks.guidance_strength --cell {relative_to_repo(args.cell)}" + suffix
    md = render(data, cmd)
    name = "guidance_strength" + (f"-{args.name}" if args.name else "")
    data["command"] = cmd
    pj, pm = write_report(name, data, md)
    print(pm.read_text())


if __name__ == "__main__":
    main()
