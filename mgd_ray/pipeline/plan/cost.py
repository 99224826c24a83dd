"""The plan's cost maths: device-hours per stage from FLOP counts at stated throughputs (every
assumption is a named constant in ``mgd_ray.known`` and is repeated in the plan's text).

The evaluation has its own throughput model (:func:`eval_rates`): images/s of a ResNet-18
training step at 224 px (GPU: a published A100 figure; CPU: measured by
benchmarks/eval_throughput.py), scaled to each student by forward FLOPs. The plan gives its hours
per protocol x student x IPC, its share of the job, and, when it dominates, the settings that cut it
(:func:`evaluation_cuts`)."""

from __future__ import annotations

from ... import known
from ...config import JobConfig
from .data_facts import DataFacts
from .flops import dit_forward_flops, student_flops, vae_flops

GPU, CPU_CORE = "GPU", "CPU core"   # the two kinds of device-hours the plan counts (never added together)


def forward_seconds_estimate(info, gpu: bool) -> tuple[float, str]:
    """Seconds per DiT forward per image from the FLOP count at a stated throughput."""
    flops, src = dit_forward_flops(info)
    if gpu:
        peak = known.H100_SXM_BF16_DENSE
        return flops / (known.GPU_UTILISATION * peak), (f"{src}; at {known.GPU_UTILISATION:.0%} (assumed) of "
                                                         f"{peak / 1e12:.0f} TFLOP/s bf16 ({known.GPU_PEAK_SOURCE})")
    return flops / known.CPU_FLOPS, f"{src}; at an assumed {known.CPU_FLOPS / 1e9:.0f} GFLOP/s per CPU core"


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
                              "device_hours": round(gen_s / 3600, 3), "device_seconds": gen_s,
                              "device": GPU if gpu_gen else CPU_CORE, "throughput_basis": basis}
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
                                "device_seconds": n_enc * enc_f / rate_enc,
                                "throughput_basis": (f"{vsrc}; at {known.GPU_UTILISATION:.0%} of "
                                                     f"{known.H100_SXM_BF16_DENSE / 1e12:.0f} TFLOP/s bf16 "
                                                     f"({known.GPU_PEAK_SOURCE})") if dev_enc else
                                f"{vsrc}; at an assumed {known.CPU_FLOPS / 1e9:.0f} GFLOP/s per CPU core",
                                "device": GPU if dev_enc else CPU_CORE,
                                "note": "VAE compute only; JPEG decoding and resizing run on CPUs in parallel"}
        stages["generate_decode"] = {"images": n_images, "gflop_per_image": round(dec_f / 1e9, 3),
                                     "device_hours": round(n_images * dec_f / rate_dec / 3600, 3),
                                     "device_seconds": n_images * dec_f / rate_dec,
                                     "device": GPU if gpu_gen else CPU_CORE}
    ev = evaluation_estimates(job, info, data) if (job.evaluate.enabled and data) else None
    if ev:
        stages["evaluate"] = ev
    est["stages"] = stages
    # GPU-hours and CPU core-hours are totalled apart: an hour of one is not an hour of the other
    by_dev: dict[str, float] = {}
    for v in stages.values():
        by_dev[v["device"]] = by_dev.get(v["device"], 0.0) + v.get("device_seconds", 0.0)
    est["total_by_device"] = {d: round(sec / 3600, 2) for d, sec in by_dev.items()}
    est["device"] = GPU if GPU in by_dev else CPU_CORE
    est["total_device_hours"] = round(by_dev.get(est["device"], 0.0) / 3600, 2)
    if ev:       # the share from the unrounded seconds (a small job's hours round to 0), among its own kind's
        est["evaluation"] = evaluation_cuts(job, ev, by_dev[ev["device"]])
        if len(by_dev) > 1:
            est["evaluation"]["share_of"] = f"the job's {ev['device']}-hours"
    est["generate_wall_hours_with_actors"] = {"actors": actors, "hours": round(gen_s / actors / 3600, 3)}
    return est


def hours_text(h: float) -> str:
    """Device time for a person: hours to one decimal from 1 h, else minutes or seconds."""
    if h >= 1:
        return f"{h:.1f} h"
    return f"{h * 60:.1f} min" if h * 60 >= 1 else f"{h * 3600:.2g} s"


EVAL_DOMINATES_SHARE = 0.5     # above this share of the job's device-hours the plan says the evaluation dominates


def eval_rates(gpu: bool) -> dict:
    """The evaluation's throughput model for a ResNet-18 at 224 px: images/s of a training step,
    seconds per image a frozen teacher's forward adds, images/s of a test forward; and its basis.
    GPU: the published A100 figure of ``known.a100_resnet18_train_images_per_s``, a teacher's and a
    test forward at 1/3 of a training step's time (forward = 1/3 of forward + backward by FLOPs).
    CPU: all three measured here (``known.EVAL_CPU_RESNET18_224``, benchmarks/eval_throughput.py)."""
    if gpu:
        train, src = known.a100_resnet18_train_images_per_s(224)
        return {"train": train, "teacher_s": 1.0 / (3 * train), "test": 3 * train, "device": GPU,
                "basis": f"GPU {train:,.0f} ResNet-18 training images/s at 224 px [{src}]; a teacher forward and a "
                         "test forward at 1/3 of a training step (FLOPs)"}
    c = known.EVAL_CPU_RESNET18_224
    return {"train": c["train"], "teacher_s": max(0.0, 1.0 / c["train_with_teacher"] - 1.0 / c["train"]),
            "test": c["test_forward"], "device": CPU_CORE,
            "basis": f"CPU {c['train']:.2f} ResNet-18 training images/s per core at 224 px, "
                     f"{c['train_with_teacher']:.2f} with a frozen teacher, {c['test_forward']:.2f} test-forward "
                     f"images/s, measured on the project's 2-core box ({known.EVAL_CPU_SOURCE}); the hours are core-hours (a worker with k threads takes "
                     "about 1/k of them in wall time)"}


SOFT_LABEL, SOFT_LABEL_IMAGENET = "soft-label", "soft-label-imagenet"   # eval/soft_label*.py PROTOCOL (torch-free here)
HARD_LABEL_IMAGENET = "hard-label-imagenet"                            # soft_label_imagenet.HARD_PROTOCOL
RDED_RECIPE = (SOFT_LABEL_IMAGENET, HARD_LABEL_IMAGENET)               # RDED's epochs, test schedule and crop


def _protocol_facts(protocol: str, ipc: int, classes: int, size: int, epochs: int | None,
                    n_evals: int) -> tuple[int, int, int]:
    """(epochs, test passes per trial, training crop in px) of a protocol, from the eval modules
    (run through ``isolated``: they import torch, the driver does not)."""
    from ...eval import soft_label_imagenet
    from ...eval.train import eval_epochs, protocol_epochs
    if protocol in (soft_label_imagenet.PROTOCOL, soft_label_imagenet.HARD_PROTOCOL):   # RDED's recipe: its
        # epochs, its test schedule, a crop
        e = epochs or soft_label_imagenet.EPOCHS
        return e, len(soft_label_imagenet.eval_epochs(e)), soft_label_imagenet.input_size(size)
    e = epochs or protocol_epochs(ipc, classes, size, protocol)
    return e, len(eval_epochs(e, n_evals)), size


def _evaluation_estimate(job: JobConfig, info, data: DataFacts, alternatives: bool = True) -> dict | None:
    """Device-hours of the evaluation per protocol x student x IPC from the throughput model
    (:func:`eval_rates`): per trial, epochs x classes x IPC training images and n_evals test passes
    over the test split, each image costing the ResNet-18 figure scaled by the student's forward
    FLOPs at the job's size (plus a teacher forward of the same size under soft-label); trials =
    (the method + the random-real baseline) x generation seeds x training seeds."""
    from ... import isolated
    from ..evaluate import make_trials
    C = len(data.classes)
    ipc = job.generate.ipc
    ev = job.evaluate
    # the students train at evaluate.image_size (resize + centre crop, 224 px for the ImageNet
    # family), else at the generated image size
    size = ev.image_size or info.image_size
    note = f"at evaluate.image_size {size} px" if ev.image_size else "at the generated image size"
    epochs, n_evals, crop = isolated.call(_protocol_facts, ev.protocol, ipc, C, size, ev.epochs, ev.n_evals)
    if crop != size:
        size, note = crop, note + f", cropped to {crop} px by the protocol"
    trials = make_trials(job)
    rates = eval_rates(ev.gpus_per_worker > 0)
    ref = student_flops("resnet18", 3, 1000, 224)        # the same convolutions as torchvision's ResNet-18
    soft = ev.protocol in (SOFT_LABEL, SOFT_LABEL_IMAGENET)
    train_imgs, test_imgs = epochs * C * ipc, n_evals * data.test
    per_student, hours, train_h, test_h, base_h = {}, 0.0, 0.0, 0.0, 0.0
    for student in ev.students:
        f = student_flops(student, info.image_channels, C, size)
        if f is None or not ref:
            continue
        scale = f / ref
        s_train = scale / rates["train"] + (scale * rates["teacher_s"] if soft else 0.0)
        s_test = scale / rates["test"]
        n = sum(t["student"] == student for t in trials)
        n_base = sum(t["student"] == student and t["kind"] == "random-real" and job.method != "random-real"
                     for t in trials)
        th, sh = n * train_imgs * s_train / 3600, n * test_imgs * s_test / 3600
        per_student[student] = {"protocol": ev.protocol, "ipc": ipc, "student": student, "trials": n,
                                "baseline_trials": n_base, "epochs": epochs, "train_images_per_trial": train_imgs,
                                "test_images_per_trial": test_imgs, "gflop_forward_per_image": round(f / 1e9, 3),
                                "seconds_per_train_image": s_train, "seconds_per_test_image": s_test,
                                "train_hours": round(th, 3), "test_hours": round(sh, 3),
                                "device_hours": round(th + sh, 3)}
        hours += th + sh
        train_h += th
        test_h += sh
        base_h += (th + sh) * n_base / max(1, n)
    basis = (f"per trial: {epochs} epochs x {C:,} classes x IPC {ipc} = {train_imgs:,} training images"
             + (" (each with a frozen teacher forward the student's size)" if soft else "")
             + f" + {n_evals} test passes x {data.test:,} = {test_imgs:,} test images; a student's image costs the "
               f"ResNet-18 figure x its forward FLOPs / ResNet-18's at 224 px ({ref / 1e9:.2f} GFLOP; FLOP scaling "
               f"sees no norm-layer or small-batch cost); {rates['basis']}")
    out = {"protocol": ev.protocol, "ipc": ipc, "trials": len(trials), "epochs": epochs, "n_evals": n_evals,
           "test_images": data.test,
           "image_px": size, "image_px_note": note, "device": rates["device"], "per_student": per_student,
           "train_hours": round(train_h, 3), "test_hours": round(test_h, 3), "baseline_hours": round(base_h, 3),
           "device_hours": round(hours, 3), "device_seconds": hours * 3600, "throughput_basis": basis}
    if alternatives:                                     # the other protocol, same students (for the cuts)
        others = []
        for other in ("hard-label", SOFT_LABEL, SOFT_LABEL_IMAGENET):
            if other == ev.protocol or (other == SOFT_LABEL_IMAGENET and                  # its teacher is ImageNet's
                                        getattr(data.classes, "name", None) not in known.IMAGENET_FAMILY):
                continue
            upd = {"protocol": other, "epochs": None}
            if other == SOFT_LABEL_IMAGENET:                     # it trains torchvision's ResNet-18 (RDED's student)
                upd["students"] = ["resnet18"]
            alt = job.model_copy(update={"evaluate": ev.model_copy(update=upd)})
            a = _evaluation_estimate(alt, info, data, alternatives=False)
            if a:
                others.append({"protocol": other, "epochs": a["epochs"], "students": list(alt.evaluate.students),
                               "device_hours": a["device_hours"]})
        out["other_protocols"] = others
    return out


def evaluation_estimates(job: JobConfig, info, data: DataFacts) -> dict | None:
    """The evaluation's bill: one :func:`_evaluation_estimate` per protocol (``evaluate``, then
    ``evaluate.also``: each trains its own students and random-real baseline), and their sum."""
    per = []
    for name, view in job.evaluations():
        e = _evaluation_estimate(view, info, data)
        if e:
            per.append({"name": name, **e})
    if not per:
        return None
    secs = sum(e["device_seconds"] for e in per)
    return {"protocols": per, "trials": sum(e["trials"] for e in per), "device": per[0]["device"],
            "ipc": job.generate.ipc, "device_hours": round(secs / 3600, 3), "device_seconds": secs}


def evaluation_cuts(job: JobConfig, ev: dict, total_seconds: float) -> dict:
    """The evaluation's share of the job's device time and, when it dominates (> EVAL_DOMINATES_SHARE),
    a message naming the settings that cut it, each with the hours it saves (per protocol, and the
    protocols themselves where the job runs several)."""
    h, total = ev["device_seconds"] / 3600, total_seconds / 3600
    share = ev["device_seconds"] / total_seconds if total_seconds > 0 else 0.0
    out = {"share": round(share, 4), "dominates": share > EVAL_DOMINATES_SHARE}
    if not out["dominates"]:
        return out
    views = dict(job.evaluations())
    first = job.evaluate.first.label
    cuts = []
    if len(ev["protocols"]) > 1:
        cuts.append("the protocols themselves (drop one from evaluate.also, or move another to the top): " + ", ".join(
            f"{e['name']} {hours_text(e['device_seconds'] / 3600)}" for e in ev["protocols"]))
    for e in ev["protocols"]:
        where = "evaluate" if e["name"] == first else f"evaluate.also.{e['name']}"
        cuts += _protocol_cuts(views[e["name"]], e, where, tag=len(ev["protocols"]) > 1,
                               running={x["protocol"] for x in ev["protocols"]})
    out["cuts"] = cuts
    out["message"] = (f"the evaluation is {share:.0%} of the job's {hours_text(total)} of device time "
                      f"({hours_text(h)}): it dominates. Settings that cut it: " + "; ".join(cuts))
    return out


def _protocol_cuts(job: JobConfig, ev: dict, where: str, tag: bool, running: set[str] = frozenset()) -> list[str]:
    """The settings that cut one protocol's bill (``job.evaluate`` is that protocol; ``where`` is
    its place in the job file, ``evaluate`` or ``evaluate.also.<name>``; a cheaper protocol the job
    already runs (``running``) is not offered as a replacement)."""
    h = ev["device_seconds"] / 3600
    E = job.evaluate
    S, T = len(job.generate.seeds), E.train_seeds
    pre = f"[{ev['name']}] " if tag else ""
    cuts = []
    if len(E.students) > 1:
        cuts.append(f"{pre}{where}.students " + str(list(E.students)) + ": " + ", ".join(
            f"{s} {hours_text(c['device_hours'])}" for s, c in ev["per_student"].items()))
    if S > 1:
        cuts.append(f"{pre}generate.seeds ({S}): {hours_text(h / S)} per generation seed (its sets and their "
                    "random-real baselines)")
    if T > 1:
        cuts.append(f"{pre}{where}.train_seeds ({T}): {hours_text(h / T)} per training seed")
    if ev.get("baseline_hours"):
        cuts.append(f"{pre}{where}.baselines: the random-real trials are {hours_text(ev['baseline_hours'])} "
                    "(dropping them loses the gain over random real, IOR)")
    if ev["protocol"] in RDED_RECIPE:
        cuts.append(f"{pre}(not {where}.n_evals: {ev['protocol']} tests on its own schedule, {ev['n_evals']} passes "
                    f"per trial, {hours_text(ev['test_hours'])} in all)")
    else:
        cuts.append(f"{pre}{where}.n_evals ({E.n_evals}): the test passes are {hours_text(ev['test_hours'])} "
                    f"({ev['n_evals']} per trial over {ev['test_images']:,} test images) and scale with n_evals")
    why = "set by the job" if E.epochs else f"the {ev['protocol']} rule at IPC {ev['ipc']}"
    cuts.append(f"{pre}{where}.epochs ({ev['epochs']}, {why}): training is {hours_text(ev['train_hours'])} and "
                "scales with the epochs")
    cheaper = [o for o in ev.get("other_protocols", []) if o["device_hours"] < h and o["protocol"] not in running]
    if cheaper:
        cuts.append(f"{pre}{where}.protocol (" + ev["protocol"] + "): " + ", ".join(
            f"{o['protocol']} ({o['epochs']} epochs, {', '.join(o['students'])}) would take "
            f"{hours_text(o['device_hours'])}" for o in cheaper)
            + " (another protocol: its numbers do not compare with this one's)")
    return cuts
