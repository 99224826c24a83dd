"""The quality benchmark's catalogue: which cells exist and how each one overrides the base job.

A cell = one method (or one ManifoldGD variant, or one ablation setting) at one IPC, evaluated
with the job's hard-label protocol on every generation seed.
"""

from __future__ import annotations

from pathlib import Path

# the main table: every method, every ManifoldGD variant (tangent basis x target rule); the
# ManifoldGD cells pin the paper's strict projection (beta 1) whatever the job file ships
MAIN: list[tuple[str, list[str]]] = [
    ("random-real", ["method=random-real"]),
    ("dit", ["method=dit"]),
    ("mgd3", ["method=mgd3"]),
    ("manifoldgd-expected-leaves", ["method=manifoldgd", "guidance.beta=1.0", "guidance.basis=expected", "coreset.selection=leaves"]),
    ("herding", ["method=herding"]),
    ("kcenter", ["method=kcenter"]),
    ("manifoldgd-noised-leaves", ["method=manifoldgd", "guidance.beta=1.0", "guidance.basis=noised", "coreset.selection=leaves"]),
    ("manifoldgd-reference-leaves", ["method=manifoldgd", "guidance.beta=1.0", "guidance.basis=reference", "coreset.selection=leaves"]),
    ("manifoldgd-expected-levelwise", ["method=manifoldgd", "guidance.beta=1.0", "guidance.basis=expected",
                                       "coreset.selection=levelwise"]),
    ("manifoldgd-noised-levelwise", ["method=manifoldgd", "guidance.beta=1.0", "guidance.basis=noised", "coreset.selection=levelwise"]),
    ("manifoldgd-reference-levelwise", ["method=manifoldgd", "guidance.beta=1.0", "guidance.basis=reference",
                                        "coreset.selection=levelwise"]),
]

# one factor at a time around the base variant (the job file's values are the centre)
ABLATION: list[tuple[str, str, list]] = [
    ("lam_mode", "guidance.lam_mode", [0.03, 0.3]),
    ("beta", "guidance.beta", [0.0, 0.5]),       # 0 = unprojected mode term on the divisive targets
    ("d", "guidance.d", [1]),
    ("K", "guidance.K", [32]),
    ("t_stop", "guidance.t_stop", [10]),         # guidance on for 39 of 50 steps instead of 24
    ("radius", "guidance.radius", [0.3]),
    ("cfg_scale", "sampler.cfg_scale", [1.0, 4.0]),
]


def cell_dir(root: Path, ipc: int, name: str) -> Path:
    return root / f"ipc{ipc}" / name


def cell_overrides(args, name: str, sets: list[str], out: Path) -> list[str]:
    seeds = "[" + ",".join(str(s) for s in args.seeds) + "]"
    ov = [f"generate.ipc={args.ipc}", f"generate.seeds={seeds}", f"output.dir={out}", f"name=q-{name}-ipc{args.ipc}",
          "evaluate.baselines=[]",  # random-real is its own cell: trained once, not once per cell
          f"evaluate.n_evals={args.n_evals}", f"evaluate.train_seeds={args.train_seeds}",
          f"evaluate.num_workers={args.eval_workers}", f"evaluate.cpus_per_worker={args.eval_cpus}"]
    if args.epochs:
        ov.append(f"evaluate.epochs={args.epochs}")
    return ov + list(args.set or []) + sets


def cells_for(part: str, base_cell: str) -> list[tuple[str, list[str]]]:
    if part == "main":
        return MAIN
    if part == "ablation":
        base = dict(MAIN)[base_cell]
        out = [(f"{base_cell}", base)]
        for factor, key, values in ABLATION:
            for v in values:
                out.append((f"abl-{factor}={v}", base + [f"{key}={v}"]))
        return out
    raise SystemExit(f"unknown part {part!r}; expected main or ablation")


