"""Cost of one guidance step at DiT-XL/2 scale vs one DiT-XL/2 forward, on this CPU, same run.

    python -m benchmarks.guidance_cost [--threads 2] [--reps 7] [--no-dit]

Latent 4×32×32 (D = 4096), batch 8, K = 12, d = 3, neighbourhood M real latents per image.
Peer figure: the published code's tangent basis, a D×D covariance + torch.linalg.eigh per image.
Writes benchmarks/reports/guidance_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks import current_rss_mb, machine, md_table, peak_rss_mb, write_report
from mgd_ray.method import GaussianDiffusion, GuidanceParams, ManifoldGuidance, StepInfo

B, C, H, W = 8, 4, 32, 32
D = C * H * W


def _time(fn, reps: int) -> dict:
    """Median / min wall time of fn() over reps calls after one warm-up call, seconds."""
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "reps": reps}


def guidance_rows(reps: int, threads: int) -> list[dict]:
    """Time one guided step (B = 8) for each basis variant and neighbourhood size."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    c = torch.randn(B, D, generator=g)
    x_t, x0_hat = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    diff = GaussianDiffusion().respaced(50)
    gens = [torch.Generator().manual_seed(100 + b) for b in range(B)]
    step = StepInfo(i=0, t_index=49, t=999, n_steps=50, alpha_bar_t=diff.alpha_bar(49),
                    sigma_t=torch.full((B, D), 0.1), generators=gens)
    rows = []
    for basis, M, scale in (("mode only (MGD3)", 64, 0.0), ("expected", 64, 1.0), ("expected", 256, 1.0),
                            ("noised", 64, 1.0), ("noised", 256, 1.0), ("reference", 0, 1.0)):
        nbrs = c.unsqueeze(1) + torch.randn(B, max(M, 1), D, generator=g)
        name = basis if basis != "mode only (MGD3)" else "expected"
        guide = ManifoldGuidance(c, nbrs if M else None,
                                 GuidanceParams(basis=name, K=12, d=3, manifold_scale=scale))
        t = _time(lambda: guide(x_t, x0_hat, step), reps)
        rows.append({"variant": basis, "M": M if M else "300 synthetic", "threads": threads, **t})
        print(f"  guidance {basis:18s} M={M:4d} threads={threads}: {t['median_s'] * 1e3:8.2f} ms", flush=True)
    return rows


def reference_eigh_row(n_images: int = 1) -> dict:
    """The published code's basis: D×D covariance of K = 12 neighbours + ridge, eigh, per image."""
    g = torch.Generator().manual_seed(1)
    ts = []
    for _ in range(n_images):
        neigh = torch.randn(12, D, generator=g)
        t0 = time.perf_counter()
        centred = neigh - neigh.mean(0, keepdim=True)
        cov = centred.T @ centred / 11 + 1e-5 * torch.eye(D)
        e, V = torch.linalg.eigh(cov)
        U = V[:, torch.argsort(e, descending=True)[:3]]
        ts.append(time.perf_counter() - t0)
        del cov, V, U
    per_image = statistics.median(ts)
    print(f"  reference D×D eigh: {per_image:.2f} s per image", flush=True)
    return {"variant": "published code: D×D cov + eigh", "M": "-", "threads": torch.get_num_threads(),
            "per_image_s": per_image,
            "median_s": per_image * B, "measured_images": n_images, "extrapolated_to_batch": B}


def dit_forward_rows() -> list[dict]:
    """One forward of a randomly initialised DiT-XL/2 (diffusers default config) at batch 8 and 16."""
    from diffusers import DiTTransformer2DModel

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = DiTTransformer2DModel().eval()          # XL/2: 28 layers, 16 heads × 72, patch 2, 1000 classes
    n_params = sum(p.numel() for p in model.parameters())
    print(f"  DiT-XL/2 built: {n_params / 1e6:.1f} M params in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    with torch.no_grad():
        model(torch.randn(1, C, H, W), timestep=torch.tensor([999]), class_labels=torch.tensor([0]))  # warm-up
        for bs, what in ((B, "forward, batch 8"), (2 * B, "forward, batch 16 (CFG step of 8 images)")):
            x = torch.randn(bs, C, H, W)
            t0 = time.perf_counter()
            model(x, timestep=torch.full((bs,), 999), class_labels=torch.arange(bs) % 1000)
            dt = time.perf_counter() - t0
            rows.append({"variant": what, "batch": bs, "seconds": dt, "params_M": n_params / 1e6})
            print(f"  DiT-XL/2 {what}: {dt:.2f} s", flush=True)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--eigh-images", type=int, default=1, help="images timed for the D×D eigh peer figure")
    ap.add_argument("--no-dit", action="store_true", help="skip the DiT-XL/2 forward (no ratio)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine()
    print("guidance step, batch 8, D = 4096, K = 12, d = 3", flush=True)
    rows = guidance_rows(args.reps, 1) + guidance_rows(args.reps, args.threads)
    torch.set_num_threads(args.threads)
    rss_guidance = peak_rss_mb()
    ref = reference_eigh_row(args.eigh_images)
    rss_ref = peak_rss_mb()
    dit = [] if args.no_dit else dit_forward_rows()
    rss_dit = peak_rss_mb()
    fwd8 = next((r["seconds"] for r in dit if r["batch"] == B), None)
    fwd16 = next((r["seconds"] for r in dit if r["batch"] == 2 * B), None)
    for r in rows + [ref]:
        if fwd8:
            r["pct_of_forward_b8"] = 100.0 * r["median_s"] / fwd8
            r["pct_of_forward_b16"] = 100.0 * r["median_s"] / fwd16
    data = {"config": {"batch": B, "latent": [C, H, W], "D": D, "K": 12, "d": 3, "threads": args.threads,
                       "reps": args.reps},
            "machine": info, "guidance": rows, "reference_eigh": ref, "dit_forward": dit,
            "peak_rss_mb": {"after_guidance": rss_guidance, "after_reference_eigh": rss_ref,
                            "after_dit": rss_dit, "current_end": current_rss_mb()},
            "goal": "our guidance step <= 2 % of one DiT-XL/2 forward"}
    cols = ["variant", "M", "threads", "median_s", "min_s", "pct_of_forward_b8", "pct_of_forward_b16"]
    md = [f"# Guidance cost vs DiT-XL/2 forward ({info['date']})", "",
          f"CPU, {args.threads} torch threads, batch {B}, latent {C}×{H}×{W} (D = {D}), K = 12, d = 3; "
          f"median of {args.reps} calls after a warm-up; guidance timed at 1 thread and at {args.threads} "
          f"(the DiT forward and the eigh at {args.threads}). Load average at start: {info['loadavg_at_start']} "
          "(shared machine: absolute times are noisy, the ratios are from the same run).", "",
          "## One guided step (batch 8)", md_table(rows + [ref], cols), "",
          "The published-code row measures the D×D covariance + `torch.linalg.eigh` for "
          f"{ref['measured_images']} images and multiplies the per-image median by {B}.", "",
          "## DiT-XL/2 forward (random init, diffusers default config)",
          md_table(dit, ["variant", "batch", "seconds", "params_M"]) if dit else "(skipped)", "",
          "## Peak RSS (MiB, cumulative within this process)",
          md_table([data["peak_rss_mb"]], list(data["peak_rss_mb"].keys())), "",
          "Goal: our guidance step ≤ 2 % of one DiT-XL/2 forward."]
    write_report("guidance_cost", data, "\n".join(md))
    print("\n".join(md))
    return data


if __name__ == "__main__":
    main()
