"""Cost of one guidance step at DiT-XL/2 scale vs one DiT-XL/2 forward, on this CPU, same run.

    python -m benchmarks.guidance_cost [--threads 2] [--reps 7] [--no-dit]
    python -m benchmarks.guidance_cost --basis [--threads 2] [--reps 7] [--batches 16,64]

Latent 4×32×32 (D = 4096), batch 8, K = 12, d = 3, neighbourhood M real latents per image.
Peer figure: the published code's tangent basis, a D×D covariance + torch.linalg.eigh per image.
Writes benchmarks/reports/guidance_cost.{json,md}.

``--basis``: the tangent basis from the K×K Gram matrix (the default, ``basis_method="gram"``)
against the thin SVD of the D×K matrix, at the shipped ImageNet setting (D = 4096, K = 16, d = 8,
batch 16 and 64): the basis alone for both rules (``chord_basis``: members; ``tangent_basis``:
expected/noised/reference) and one whole guided step of the shipped members rule, with the
subspace distance between the two paths' results. Writes benchmarks/reports/guidance_basis.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks import current_rss_mb, machine, md_table, peak_rss_mb, write_report
from mgd_ray.method import GaussianDiffusion, GuidanceParams, ManifoldGuidance, StepInfo, tangent_basis
from mgd_ray.method.guidance import chord_basis

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


def _subspace_gap(Ua: torch.Tensor, Ub: torch.Tensor) -> float:
    """Largest sine of a principal angle between the row spaces of Ua, Ub (B, d, D), over the batch
    (0: the same subspace). Computed in d×d, never D×D."""
    Ua, Ub = Ua.double(), Ub.double()
    ranks = (Ua.norm(dim=-1) > 0.5).sum(-1)
    cos = torch.linalg.svdvals(Ua @ Ub.transpose(1, 2))                  # (B, d) cosines
    worst = 0.0
    for b in range(len(Ua)):
        r = int(ranks[b])
        worst = max(worst, float((1 - cos[b, :r].clamp(max=1) ** 2).clamp_min(0).sqrt().max()) if r else 0.0)
    return worst


def _time_interleaved(fns: dict, reps: int) -> dict:
    """Time each of fns (name -> callable) reps times, interleaved (alternating order each round),
    after one warm-up call each: a burst of load on a shared machine hits both alike.
    -> {name: {"median_s", "min_s"}}."""
    for f in fns.values():
        f()
    ts = {m: [] for m in fns}
    for r in range(reps):
        for m in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[m]()
            ts[m].append(time.perf_counter() - t0)
    return {m: {"median_s": statistics.median(v), "min_s": min(v)} for m, v in ts.items()}


def basis_rows(reps: int, threads: int, batches=(16, 64), K: int = 16, d: int = 8, M: int = 64) -> list[dict]:
    """Gram vs SVD at D = 4096, K = 16, d = 8: the basis alone (both rules) and a whole guided step
    of the shipped members rule (kNN among M members + basis + projection), per batch size."""
    torch.set_num_threads(threads)
    rows = []
    for Bn in batches:
        g = torch.Generator().manual_seed(Bn)
        c = torch.randn(Bn, D, generator=g)
        # a cluster per target with a decaying spectrum (32 directions, spread 8/j²) plus isotropic
        # noise, so that its top-d subspace is determined (an isotropic cloud has none to agree on)
        dirs = torch.linalg.qr(torch.randn(Bn, D, 32, generator=g))[0].transpose(1, 2)        # (B, 32, D)
        coef = torch.randn(Bn, M, 32, generator=g) * (8.0 / torch.arange(1, 33) ** 2).view(1, 1, 32)
        nbrs = c.unsqueeze(1) + coef @ dirs + 0.001 * torch.randn(Bn, M, D, generator=g)
        x0_hat = c + torch.randn(Bn, D, generator=g)
        pts = nbrs[:, :K].contiguous()
        diff = GaussianDiffusion().respaced(50)
        step = StepInfo(i=0, t_index=49, t=999, n_steps=50, alpha_bar_t=diff.alpha_bar(49),
                        sigma_t=torch.full((Bn, D), 0.1), generators=None)
        cases = {
            "chord_basis (members)": lambda m: chord_basis(pts, x0_hat, d, method=m),
            "tangent_basis (expected, noised, reference)": lambda m: tangent_basis(pts, d, method=m),
        }
        guides = {m: ManifoldGuidance(c, nbrs, GuidanceParams(basis="members", d=d, K=K), basis_method=m)
                  for m in ("svd", "gram")}
        cases["guided step, members rule (kNN + basis + projection)"] = lambda m: guides[m](x0_hat, x0_hat, step)
        for what, fn in cases.items():
            t = _time_interleaved({m: (lambda m=m: fn(m)) for m in ("svd", "gram")}, reps)
            exact = {}
            if what.startswith("guided"):
                out = {m: fn(m) for m in ("svd", "gram")}
                agree = float(((out["gram"] - out["svd"]).norm(dim=1) / out["svd"].norm(dim=1)).max())
                agree_name = "max rel. diff of g"
            else:
                agree, agree_name = _subspace_gap(fn("gram"), fn("svd")), "max sin(principal angle)"
                U64 = (chord_basis(pts.double(), x0_hat.double(), d, method="svd") if what.startswith("chord")
                       else tangent_basis(pts.double(), d, method="svd"))
                exact = {"gram_vs_float64": _subspace_gap(fn("gram"), U64),
                         "svd_vs_float64": _subspace_gap(fn("svd"), U64)}
            row = {"what": what, "batch": Bn, "D": D, "K": K, "d": d, "threads": threads,
                   "svd_ms": 1e3 * t["svd"]["median_s"], "gram_ms": 1e3 * t["gram"]["median_s"],
                   "speedup": t["svd"]["median_s"] / t["gram"]["median_s"],
                   "svd_min_ms": 1e3 * t["svd"]["min_s"], "gram_min_ms": 1e3 * t["gram"]["min_s"],
                   "speedup_min": t["svd"]["min_s"] / t["gram"]["min_s"],
                   "agreement": agree, "agreement_measure": agree_name, **exact, "reps": reps}
            rows.append(row)
            print(f"  {threads} thr B={Bn:3d} {what:52s} svd {row['svd_ms']:8.2f} ms  gram {row['gram_ms']:8.2f} ms"
                  f"  x{row['speedup']:.2f} (min x{row['speedup_min']:.2f})  {agree_name} {agree:.1e}"
                  + "".join(f"; {k} {v:.1e}" for k, v in exact.items()), flush=True)
    return rows


def basis_main(args) -> dict:
    info = machine()
    batches = tuple(int(b) for b in args.batches.split(","))
    threads = sorted({1, args.threads})
    print(f"tangent basis: K×K Gram vs thin SVD, D = {D}, K = 16, d = 8, batches {batches}, "
          f"threads {threads}", flush=True)
    rows = [r for th in threads for r in basis_rows(args.reps, th, batches)]
    data = {"config": {"D": D, "K": 16, "d": 8, "batches": list(batches), "threads": threads,
                       "reps": args.reps, "neighbourhood_M": 64, "device": "cpu"},
            "machine": info, "rows": rows,
            "command": f"python -m benchmarks.guidance_cost --basis --threads {args.threads} --reps {args.reps} "
                       f"--batches {args.batches}"}
    md = [f"# Tangent basis: K×K Gram matrix vs thin SVD ({info['date']})", "",
          f"CPU ({info['cpu_count']} cores, shared), torch threads {threads}, float32, D = {D} (DiT-XL/2's "
          "4×32×32 latent), K = 16, d = 8 (the shipped ImageNet guidance), neighbourhood M = 64 per target. "
          f"svd and gram timed interleaved, {args.reps} rounds after a warm-up each: median and min of "
          f"each, speedup = svd / gram of the medians (speedup_min: of the minima, the least disturbed by "
          f"other load). Load average at start: {info['loadavg_at_start']} (a shared machine: compare the "
          "ratios within a row; the 1-thread rows are the steadier).", "",
          "svd: `torch.linalg.svd` of the D×K matrix. gram: the K×K Gram matrix A Aᵀ accumulated in "
          "float64, its `eigh` in float64, then U = Aᵀ V Σ⁻¹ in float32 "
          "(`mgd_ray.method.guidance.top_right_singular`). Neighbourhoods: a cluster per target with a "
          "decaying spectrum (32 directions, spread 8/j², plus isotropic noise of 0.001) around a random "
          "target, x̂0 one unit of noise per coordinate away, so the top-d subspace is determined. "
          "agreement: the largest sine of a principal angle between the two float32 bases' subspaces "
          "(0 = the same subspace), or for the whole step the largest relative difference of the "
          "guidance vector g; *_vs_float64: each float32 path against a float64 SVD.", "",
          md_table(rows, ["what", "threads", "batch", "svd_ms", "gram_ms", "speedup", "svd_min_ms",
                          "gram_min_ms", "speedup_min", "agreement", "gram_vs_float64", "svd_vs_float64"]), "",
          f"Command: `{data['command']}`"]
    write_report("guidance_basis", data, "\n".join(md))
    print("\n".join(md))
    return data


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--eigh-images", type=int, default=1, help="images timed for the D×D eigh peer figure")
    ap.add_argument("--no-dit", action="store_true", help="skip the DiT-XL/2 forward (no ratio)")
    ap.add_argument("--basis", action="store_true",
                    help="only the Gram-vs-SVD basis benchmark (writes reports/guidance_basis.{json,md})")
    ap.add_argument("--batches", default="16,64", help="batch sizes of --basis")
    args = ap.parse_args(argv)
    if args.basis:
        return basis_main(args)
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
