"""The quality benchmark's catalogue: which cells exist and how each one overrides the base job.

A cell = one method (or one ManifoldGD variant, or one ablation setting) at one IPC, evaluated
with the job's protocol on every generation seed (each report row records which: ``protocol``).
"""

from __future__ import annotations

from pathlib import Path

# the main table: every method, every ManifoldGD variant (tangent basis x target rule); the
# ManifoldGD cells pin the paper's whole strict rule (beta 1, constant, d 3, K 12, no projection
# window) whatever the job file ships, except manifoldgd-default, which runs the job file's shipped
# guidance settings
STRICT = ["method=manifoldgd", "guidance.beta=1.0", "guidance.beta_schedule=constant", "guidance.basis=expected",
          "guidance.d=3", "guidance.K=12", "guidance.t_project=null", "coreset.selection=leaves"]
MAIN: list[tuple[str, list[str]]] = [
    ("random-real", ["method=random-real"]),
    ("dit", ["method=dit"]),
    ("mgd3", ["method=mgd3"]),
    ("manifoldgd-expected-leaves", STRICT),
    ("manifoldgd-default", ["method=manifoldgd"]),
    ("herding", ["method=herding"]),
    ("kcenter", ["method=kcenter"]),
    ("manifoldgd-noised-leaves", STRICT + ["guidance.basis=noised"]),
    ("manifoldgd-reference-leaves", STRICT + ["guidance.basis=reference"]),
    ("manifoldgd-expected-levelwise", STRICT + ["coreset.selection=levelwise"]),
    ("manifoldgd-noised-levelwise", STRICT + ["guidance.basis=noised", "coreset.selection=levelwise"]),
    ("manifoldgd-reference-levelwise", STRICT + ["guidance.basis=reference", "coreset.selection=levelwise"]),
]

# variants that keep the mode pull (issue 10 §3), each one change from the paper-strict cell
VARIANTS: list[tuple[str, list[str]]] = [
    ("var-d8", STRICT + ["guidance.d=8", "guidance.K=16"]),
    ("var-d16", STRICT + ["guidance.d=16", "guidance.K=32"]),
    ("var-d32", STRICT + ["guidance.d=32", "guidance.K=64"]),
    ("var-d64", STRICT + ["guidance.d=64", "guidance.K=128"]),
    ("var-ramp", STRICT + ["guidance.beta_schedule=ramp"]),
    ("var-members", STRICT + ["guidance.basis=members", "guidance.d=8", "guidance.K=16"]),
    ("var-window", STRICT + ["guidance.t_project=37"]),
    ("var-members-window", STRICT + ["guidance.basis=members", "guidance.d=8", "guidance.K=16", "guidance.t_project=37"]),
    # a stronger mode pull (λ_mode 0.1 is MGD3's published value): the members basis keeps the pull's
    # direction to the cluster, so a larger λ moves samples further toward their targets; MGD3 at the
    # same λ is the control that says whether a gain is the projection's or only the larger λ's
    # (measured at IPC 10 on the 22k prior: λ 0.2 lifts members by 1.0 and MGD3 by 0.2, inside the
    # seed noise; λ 0.3 costs both ~2.5 points, off-manifold; benchmarks/README.md)
    ("var-members-lam0.2", STRICT + ["guidance.basis=members", "guidance.d=8", "guidance.K=16", "guidance.lam_mode=0.2"]),
    ("var-members-lam0.3", STRICT + ["guidance.basis=members", "guidance.d=8", "guidance.K=16", "guidance.lam_mode=0.3"]),
    ("var-mgd3-lam0.2", ["method=mgd3", "guidance.lam_mode=0.2"]),
    ("var-mgd3-lam0.3", ["method=mgd3", "guidance.lam_mode=0.3"]),
]
# the "variant" field of a report cell (issue 10 §2): ManifoldGD cells by rule, ablations by name
VARIANT_OF = {"manifoldgd-expected-leaves": "paper-strict", "manifoldgd-reference-leaves": "reference",
              "manifoldgd-default": "default"}

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
    if part == "variants":
        return VARIANTS
    if part == "ablation":
        base = dict(MAIN)[base_cell]
        out = [(f"{base_cell}", base)]
        for factor, key, values in ABLATION:
            for v in values:
                out.append((f"abl-{factor}={v}", base + [f"{key}={v}"]))
        return out
    raise SystemExit(f"unknown part {part!r}; expected main, variants or ablation")




def cell_variant(name: str, method: str) -> str:
    """paper-strict | reference | default | the ablation's or variant's name; "" for non-ManifoldGD cells."""
    if name.startswith(("abl-", "var-")):
        return name[4:]
    if method != "manifoldgd":
        return ""
    return VARIANT_OF.get(name, name.removeprefix("manifoldgd-"))
