"""The plan's human-readable summary: one line per number a person checks before paying for GPUs."""

from __future__ import annotations

from ...config import JobConfig
from .data_facts import DataFacts


def summary(job: JobConfig, data: DataFacts, info, p: dict) -> list[str]:
    e = p["estimate"]
    st = e["stages"]
    C, ipc, S = p["classes"], p["ipc"], p["generation_seeds"]
    cfg = " x 2 (CFG)" if job.sampler.cfg_scale != 1.0 else ""
    lines = [
        f"{data.train_text()} train images to encode ({data.basis})",
        f"{data.test:,} real test images for evaluation (the source's test split)",
        f"{C:,} classes (class list {p['class_list']})",
        f"model {job.model.generator}: latent {info.latent_channels}x{info.latent_size}x{info.latent_size}, "
        f"{info.num_classes} classes, null label {info.null_label}, learned sigma {info.learned_sigma}, "
        f"VAE scaling factor {info.scaling_factor} (from {p['model']['facts_from']})",
    ]
    if job.generative:
        lines += [
            f"{C * ipc:,} images to generate per seed (IPC {ipc} x {C:,} classes) x {S} generation seed(s) "
            f"{list(job.generate.seeds)} = {C * ipc * S:,} images",
            f"{p['dit_forward_passes_per_seed']:,} DiT forward passes per seed ({C * ipc:,} images x "
            f"{job.sampler.steps} steps{cfg}); {p['dit_forward_passes']:,} in all",
        ]
    else:
        lines.append(f"{C * ipc:,} real images selected per seed x {S} seed(s); no generation")
    g = st["generate_dit"]
    lines.append(f"DiT: {g['seconds_per_forward_per_image'] * 1e3:.3f} ms per forward per image "
                 f"[{g['throughput_basis']}] -> {g['device_hours']:.2f} {g['device']}-hours; "
                 f"{e['generate_wall_hours_with_actors']['hours']:.2f} h wall on "
                 f"{e['generate_wall_hours_with_actors']['actors']} actors")
    for key, label in (("encode_vae", "VAE encode"), ("generate_decode", "VAE decode")):
        if key in st:
            lines.append(f"{label}: {st[key]['images']:,} images x {st[key]['gflop_per_image']:.1f} GFLOP "
                         f"-> {st[key]['device_hours']:.2f} {st[key]['device']}-hours")
    if "evaluate" in st:
        for ev in st["evaluate"]["protocols"]:
            lines.append(f"evaluate [{ev['name']}] ({ev['protocol']}, IPC {ev['ipc']}): {ev['trials']} trials x "
                         f"{ev['epochs']} epochs at {ev['image_px']} px, {ev['n_evals']} test passes each -> "
                         f"{ev['device_hours']:.2f} {ev['device']}-hours [{ev['throughput_basis']}]")
            for s, c in ev["per_student"].items():
                lines.append(f"  {c['protocol']} / {s} / IPC {c['ipc']}: {c['trials']} trials "
                             f"({c['baseline_trials']} random-real) -> {c['device_hours']:.2f} h (training "
                             f"{c['train_hours']:.2f}, test passes {c['test_hours']:.2f})")
        if len(st["evaluate"]["protocols"]) > 1:
            lines.append(f"evaluate, all {len(st['evaluate']['protocols'])} protocols: {st['evaluate']['trials']} "
                         f"trials -> {st['evaluate']['device_hours']:.2f} {st['evaluate']['device']}-hours")
    lines.append("total: " + " + ".join(f"{h:.2f} {d}-hours" for d, h in e["total_by_device"].items())
                 + " (compute only; add node start-up, model loading and data transfer"
                 + ("; GPU- and CPU core-hours are not added together)" if len(e["total_by_device"]) > 1 else ")"))
    share = e.get("evaluation")
    if share:
        lines.append(f"the evaluation's share of {share.get('share_of', 'the job')}: {share['share']:.0%}")
        if share["dominates"]:
            lines.append("WARNING: " + share["message"])
    return lines
