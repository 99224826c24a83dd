"""Evaluation throughput: images/s of one ResNet-18 training step at 224 px, with and without a
frozen teacher's forward, and of a test pass (issue "ImageNet-1K results the field can compare",
item 5: the bill before the run).

    python -m benchmarks.eval_throughput [--batch 16] [--steps 3] [--warmup 1] [--threads 1]

(torchvision is needed: run it in the torch 2.14.1 + torchvision 0.29.1 environment.)

Measured on this CPU, random pixels, one torch thread (``--threads``), timed in this process's CPU
seconds (``time.process_time``): a per-core figure that other work on a shared box does not move
(it only makes a step wait, which wall time would count):
1. ``train``: one step of torchvision's ``resnet18`` (batch norm, 1,000 classes) at 224 px:
   forward, cross-entropy, backward, SGD (momentum 0.9) update.
2. ``train+teacher``: the same step plus a frozen torchvision ``resnet18`` teacher's forward
   (eval mode, no gradients) on the same batch and the soft-label protocol's KL at T = 20.
3. ``test forward``: the student in eval mode, no gradients (one batch of a test pass).
4. ``train (mgd_ray resnet18)``: the project's own hard-label ResNet-18 (instance norm, the same
   convolutions) — the cost of its norm layers, which a FLOP count does not see.

The measures are interleaved round by round (``--steps`` timed rounds after ``--warmup`` untimed
ones); each figure is the batch over the median CPU seconds of its steps.
The GPU figure is not measured here (no GPU on this box): it is the one the dry run uses,
``mgd_ray.known.a100_resnet18_train_images_per_s`` (FFCV's published ResNet-18 A100 training time,
brought to 224 px and TF32 as that function states), printed next to a cross-check from NVIDIA's
published ResNet-50 A100 TF32 throughput scaled by the FLOP ratio counted here.
Writes ``reports/eval_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks import machine, md_table, write_report


def _forward_flops(model, size: int) -> float:
    """Forward FLOPs (multiply and add counted separately) per image, counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 3, size, size))
    return float(fc.get_total_flops())


def _interleaved(steps: dict, rounds: int, warmup: int) -> dict[str, list[tuple[float, float]]]:
    """(CPU seconds, wall seconds) per call of each step, the steps interleaved round by round (a load
    change on a shared box then hits every measure alike)."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    out = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            out[k].append((time.process_time() - c0, time.perf_counter() - t0))
    return out


def measure(batch: int = 32, size: int = 224, steps: int = 3, warmup: int = 1, project: bool = True) -> list[dict]:
    import torch
    import torch.nn.functional as F
    import torchvision

    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    student = torchvision.models.resnet18(num_classes=1000)
    teacher = torchvision.models.resnet18(num_classes=1000).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def train_step(with_teacher: bool, model=student, optimiser=opt):
        model.train()
        optimiser.zero_grad(set_to_none=True)
        out = model(x)
        if with_teacher:
            with torch.no_grad():
                t = teacher(x)
            T = 20.0
            loss = F.kl_div(F.log_softmax(out / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True)
        else:
            loss = F.cross_entropy(out, y)
        loss.backward()
        optimiser.step()

    def test_step():
        student.eval()
        with torch.no_grad():
            student(x)

    what = {"train": "torchvision resnet18: forward + CE + backward + SGD step",
            "train+teacher": "the same + frozen torchvision resnet18 teacher forward + KL (T 20)",
            "test forward": "torchvision resnet18, eval mode, no gradients"}
    fns = {"train": lambda: train_step(False), "train+teacher": lambda: train_step(True), "test forward": test_step}
    if project:
        try:
            sys.path.insert(0, str(__import__("benchmarks").REPO))
            from mgd_ray.eval.students import build_student
            own = build_student("resnet18", 3, 1000, size)
            own_opt = torch.optim.SGD(own.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            fns["train (mgd_ray resnet18)"] = lambda: train_step(False, own, own_opt)
            what["train (mgd_ray resnet18)"] = ("the project's hard-label ResNet-18 (instance norm): forward + CE + "
                                                "backward + SGD step")
        except Exception as e:  # noqa: BLE001 - an extra row, never the benchmark's failure
            print(f"(no mgd_ray resnet18 row: {type(e).__name__}: {e})")
    times = _interleaved(fns, steps, warmup)
    rows = []
    for name, t in times.items():
        cpu, wall = [c for c, _ in t], [w for _, w in t]
        rows.append({"measure": name, "what": what[name], "batch": batch, "px": size, "steps": steps,
                     "cpu_seconds_per_step": [round(v, 3) for v in cpu],
                     "wall_seconds_per_step": [round(v, 3) for v in wall],
                     "cpu_s": round(statistics.median(cpu), 3), "wall_s": round(statistics.median(wall), 3),
                     "images_per_s": round(batch / statistics.median(cpu), 3)})
    return rows


def gpu_reference(rn18_flops: float, rn50_flops: float) -> dict:
    """The dry run's GPU figure and a cross-check (both from published numbers, none measured here)."""
    sys.path.insert(0, str(__import__("benchmarks").REPO))
    from mgd_ray import known
    rate, source = known.a100_resnet18_train_images_per_s(224)
    rn50 = known.NVIDIA_RN50_A100_TF32_IMAGES_PER_S
    return {"a100_resnet18_train_images_per_s_224_tf32": round(rate, 1), "source": source,
            "cross_check": {"nvidia_resnet50_a100_tf32_images_per_s": rn50,
                            "flop_ratio_resnet50_over_resnet18": round(rn50_flops / rn18_flops, 3),
                            "resnet18_images_per_s_by_flops": round(rn50 * rn50_flops / rn18_flops, 1),
                            "source": known.NVIDIA_RN50_SOURCE}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the figures are per core)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-project", action="store_true", help="skip the mgd_ray instance-norm ResNet-18 row")
    a = ap.parse_args(argv)
    import torch
    import torchvision

    torch.set_num_threads(a.threads)
    t0 = time.time()
    info = machine() | {"torchvision": torchvision.__version__}
    rows = measure(a.batch, a.size, a.steps, a.warmup, project=not a.no_project)
    rn18 = _forward_flops(torchvision.models.resnet18(num_classes=1000), a.size)
    rn50 = _forward_flops(torchvision.models.resnet50(num_classes=1000), 224)
    by = {r["measure"]: r["images_per_s"] for r in rows}
    teacher_s = 1.0 / by["train+teacher"] - 1.0 / by["train"]      # seconds per image the teacher adds
    derived = {"resnet18_forward_gflop_per_image": round(rn18 / 1e9, 3),
               "resnet50_forward_gflop_per_image_224": round(rn50 / 1e9, 3),
               "train_effective_gflop_per_s": round(by["train"] * 3 * rn18 / 1e9, 1),
               "teacher_seconds_per_image": round(teacher_s, 5),
               "teacher_slowdown": round(by["train"] / by["train+teacher"], 3),
               "test_over_train_speed": round(by["test forward"] / by["train"], 3)}
    if "train (mgd_ray resnet18)" in by:
        derived["instance_norm_slowdown"] = round(by["train"] / by["train (mgd_ray resnet18)"], 3)
    gpu = gpu_reference(rn18, rn50)
    info["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    data = {"command": "python -m benchmarks.eval_throughput " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": info, "torch_threads": torch.get_num_threads(), "rows": rows, "derived": derived,
            "gpu": gpu, "wall_seconds": round(time.time() - t0, 1)}
    cols = ["measure", "batch", "px", "cpu_s", "wall_s", "images_per_s", "what"]
    md = [f"# Evaluation throughput ({info['date']})", "",
          f"`{data['command']}` on {info['cpu_count']} CPU cores ({torch.get_num_threads()} torch threads), torch "
          f"{torch.__version__}, torchvision {torchvision.__version__}; load average {info['loadavg_at_start']} at "
          f"the start, {info['loadavg_at_end']} at the end (a shared box: the figures move with its load). "
          f"Random pixels; the measures interleaved over {a.steps} timed rounds after {a.warmup} warm-up. "
          f"images/s = batch / the median CPU seconds of a step (this process's CPU time, {a.threads} thread(s): "
          f"per core, and unmoved by other work waiting for the cores; wall_s is the median wall time, for the "
          f"record).", "",
          md_table(rows, cols), "",
          f"ResNet-18 forward: {derived['resnet18_forward_gflop_per_image']} GFLOP per image at {a.size} px "
          f"(torch FlopCounterMode); the training step runs at {derived['train_effective_gflop_per_s']} GFLOP/s "
          f"per core counting 3 x forward. The teacher's forward adds {1e3 * teacher_s:.1f} ms per image "
          f"(x{derived['teacher_slowdown']} per step; 4/3 by FLOPs); a test pass runs "
          f"x{derived['test_over_train_speed']} the training step's images/s (3 by FLOPs)."
          + (f" A step of the project's instance-norm ResNet-18 takes x{derived['instance_norm_slowdown']} the time "
             "of torchvision's batch-norm one (the same convolutions; a FLOP count does not see the norm layers)."
             if "instance_norm_slowdown" in derived else ""), "",
          "## The GPU figure the dry run uses (published, not measured here)", "",
          f"**{gpu['a100_resnet18_train_images_per_s_224_tf32']:,.0f} images/s** for a ResNet-18 training step at "
          f"224 px in TF32 on one A100: {gpu['source']}", "",
          f"Cross-check: {gpu['cross_check']['source']}: "
          f"{gpu['cross_check']['nvidia_resnet50_a100_tf32_images_per_s']:,.0f} "
          f"images/s per A100 for ResNet-50 in TF32; x{gpu['cross_check']['flop_ratio_resnet50_over_resnet18']} "
          f"(ResNet-50 / ResNet-18 forward FLOPs, counted here) = "
          f"{gpu['cross_check']['resnet18_images_per_s_by_flops']:,.0f} images/s for ResNet-18.", ""]
    pj, pm = write_report("eval_throughput", data, "\n".join(md))
    print("\n".join(md))
    print(f"wrote {pj} and {pm} ({data['wall_seconds']} s)")


if __name__ == "__main__":
    main()
