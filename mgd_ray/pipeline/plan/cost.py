"""The plan's cost maths: device-hours per stage from FLOP counts at stated throughputs (every
assumption is a named constant in ``mgd_ray.known`` and is repeated in the plan's text)."""

from __future__ import annotations

from ... import known
from ...config import JobConfig
from .data_facts import DataFacts
from .flops import dit_forward_flops, student_flops, vae_flops



def forward_seconds_estimate(info, gpu: bool) -> tuple[float, str]:
    """Seconds per DiT forward per image from the FLOP count at a stated throughput."""
    flops, src = dit_forward_flops(info)
    if gpu:
        peak = known.H100_SXM_BF16_DENSE
        return flops / (known.GPU_UTILISATION * peak), (f"{src}; at {known.GPU_UTILISATION:.0%} (assumed) of "
                                                         f"{peak / 1e12:.0f} TFLOP/s bf16 ({known.GPU_PEAK_SOURCE})")
    return flops / known.CPU_FLOPS, f"{src}; at an assumed {known.CPU_FLOPS / 1e9:.0f} GFLOP/s CPU"


def estimate(job: JobConfig, info, fwd: int, batch_mean: float, data: DataFacts | None = None) -> dict:
    """GPU-hours per stage from stated throughputs; ``batch_mean``: images per DiT call on average."""
    gpu_gen = job.generate.num_gpus > 0
    bs = round(batch_mean, 1)
    per_fwd, basis = forward_seconds_estimate(info, gpu_gen)
    actors = max(1, job.generate.num_actors)
    gen_s = fwd * per_fwd
    est: dict = {
        # kept for callers of the previous plan format
        "seconds_per_forward_per_image": per_fwd, "basis": basis,
        "generate_wall_seconds": round(gen_s / actors, 1), "generate_device_hours": round(gen_s / 3600, 3),
    }
    vae_peak = known.H100_SXM_BF16_DENSE * known.GPU_UTILISATION
    stages: dict = {}
    stages["generate_dit"] = {"forward_passes": fwd, "seconds_per_forward_per_image": per_fwd,
                              "effective_batch_images": bs, "effective_batch_rows_with_cfg":
                                  bs * (2 if job.sampler.cfg_scale != 1.0 else 1),
                              "device_hours": round(gen_s / 3600, 3), "throughput_basis": basis}
    if bs < 32 and gpu_gen:
        stages["generate_dit"]["note"] = (
            f"a DiT call holds {bs} images on average (generate.batch_size {job.generate.batch_size}); "
            "expect GPU utilisation below the assumed one at this batch")
    vf = vae_flops(info)
    n_images = 0
    if job.generative:
        n_images = len(data.classes) * job.generate.ipc * len(job.generate.seeds) if data else 0
    n_enc = data.train if data else 0
    if vf is not None:
        enc_f, dec_f, vsrc = vf
        dev_enc = job.encode.num_gpus > 0
        rate_enc = vae_peak if dev_enc else known.CPU_FLOPS
        rate_dec = vae_peak if gpu_gen else known.CPU_FLOPS
        stages["encode_vae"] = {"images": n_enc, "gflop_per_image": round(enc_f / 1e9, 3),
                                "device_hours": round(n_enc * enc_f / rate_enc / 3600, 3),
                                "throughput_basis": (f"{vsrc}; at {known.GPU_UTILISATION:.0%} of "
                                                     f"{known.H100_SXM_BF16_DENSE / 1e12:.0f} TFLOP/s bf16 "
                                                     f"({known.GPU_PEAK_SOURCE})") if dev_enc else
                                f"{vsrc}; at an assumed {known.CPU_FLOPS / 1e9:.0f} GFLOP/s CPU",
                                "note": "VAE compute only; JPEG decoding and resizing run on CPUs in parallel"}
        stages["generate_decode"] = {"images": n_images, "gflop_per_image": round(dec_f / 1e9, 3),
                                     "device_hours": round(n_images * dec_f / rate_dec / 3600, 3)}
    ev = _evaluation_estimate(job, info, data) if (job.evaluate.enabled and data) else None
    if ev:
        stages["evaluate"] = ev
    est["stages"] = stages
    total = sum(v.get("device_hours", 0.0) for v in stages.values())
    est["total_device_hours"] = round(total, 2)
    est["device"] = "GPU" if (gpu_gen or job.encode.num_gpus > 0 or job.evaluate.gpus_per_worker > 0) else "CPU"
    est["generate_wall_hours_with_actors"] = {"actors": actors, "hours": round(gen_s / actors / 3600, 3)}
    return est


def _evaluation_estimate(job: JobConfig, info, data: DataFacts) -> dict | None:
    from ...eval.train import eval_epochs, protocol_epochs
    from ..evaluate import make_trials
    C = len(data.classes)
    ipc = job.generate.ipc
    # the students train at evaluate.image_size (resize + centre crop, 224 px for the ImageNet
    # family), else at the generated image size
    size = job.evaluate.image_size or info.image_size
    note = f"at evaluate.image_size {size} px" if job.evaluate.image_size else "at the generated image size"
    epochs = job.evaluate.epochs or protocol_epochs(ipc, C, size)
    trials = make_trials(job)
    n_evals = len(eval_epochs(epochs, job.evaluate.n_evals))
    gpu = job.evaluate.gpus_per_worker > 0
    rate = known.H100_SXM_TF32_DENSE * known.STUDENT_UTILISATION if gpu else known.CPU_FLOPS
    per_student, hours = {}, 0.0
    for student in job.evaluate.students:
        f = student_flops(student, info.image_channels, C, size)
        if f is None:
            continue
        n_trials = sum(t["student"] == student for t in trials)
        train_flops = 3 * f * epochs * C * ipc          # forward + backward ~ 3x forward
        test_flops = f * n_evals * data.test
        h = n_trials * (train_flops + test_flops) / rate / 3600
        per_student[student] = {"trials": n_trials, "gflop_forward_per_image": round(f / 1e9, 3),
                                "device_hours": round(h, 3)}
        hours += h
    basis = (f"3 x forward FLOPs x {epochs} epochs x {C * ipc:,} images + {n_evals} test passes over "
             f"{data.test:,} images, per trial; at {known.STUDENT_UTILISATION:.0%} (assumed) of "
             f"{known.H100_SXM_TF32_DENSE / 1e12:.0f} TFLOP/s TF32 ({known.GPU_PEAK_SOURCE})" if gpu else
             f"... at an assumed {known.CPU_FLOPS / 1e9:.0f} GFLOP/s CPU")
    return {"trials": len(trials), "epochs": epochs, "image_px": size, "image_px_note": note,
            "per_student": per_student, "device_hours": round(hours, 3), "throughput_basis": basis}
