"""The field's ranking metrics next to the raw accuracy (DD-Ranking; torch-free).

DD-Ranking (Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset Distillation", arXiv
2505.13300; github.com/NUS-HPC-AI-Lab/DD-Ranking, README section "Label-Robust Score (LRS)";
the package ``ddranking`` 0.2.0, ``ddranking/metrics/soft_label.py`` and ``hard_label.py``,
``compute_metrics``) ranks a distilled set by two accuracy differences and one score:

- HLR, hard-label recovery: ``Acc(real, hard) - Acc(syn, hard)``: how far a student trained on
  the distilled set with hard labels stays below the same student trained on the full real
  training set (lower is better).
- IOR, improvement over random: ``Acc(syn, any) - Acc(rdm, any)``: the gain over random real
  images (the same number per class) under the same evaluation protocol ("any": the method's own,
  hard or soft labels): ``results.json``'s ``gain_over_random_real``, paired run by run.
- the score (DD-Ranking's Label-Robust Score, LRS; "DD-Ranking score" in its earlier docs):
  ``alpha = w * IOR - (1 - w) * HLR`` with ``w = 0.5`` (the leaderboard's default: "both IOR and
  HLR are equally important"), normalised ``(e^alpha - e^-1) / (e - e^-1)``, which maps
  ``alpha`` in [-1, 1] to [0, 1].
- DD-Ranking computes the three per evaluation run and reports their mean and std over runs; so
  do we, a run being a (generation seed, training seed) pair of this job, paired with random
  real's run of the same pair (``report_page.paired_gains``'s pairing). The std here is the
  sample std (ddof 1, as the rest of ``results.json``); ``ddranking`` uses numpy's default (ddof 0).

Accuracies are fractions (0.605, not 60.5): the normalisation only maps [-1, 1] to [0, 1] on
fractions, as the README's "normalized to [0, 1]" and evaluation.md say. (``ddranking`` 0.2.0
itself feeds its percentages, ``acc1`` x 100, into ``np.exp``: an IOR of 10 points gives
``alpha`` = 5 and a "score" of 63; we follow the documented definition, not that.)

Why not the ``ddranking`` package (0.2.0 is installable here: ``pip download ddranking``): it is a
training harness, not a metrics library. Its ``compute_metrics`` trains its own students (its
networks, loaders, augmentation and learning-rate search) on image tensors or folders, and the
three formulas are four lines inside that loop, not a function to call with accuracies; our trials
are trained by Ray Train on our Parquet shards under our named protocols, and recomputing them
with its recipes would be a different protocol. It also pins ``numpy<2`` and ``scipy<1.16``
(ours: numpy 2.4, scipy 1.17) and pulls in timm and kornia. So the same formulas are computed
here from the committed trial records, and tests/test_ranking.py checks them against worked
numbers (see there for which).

Full-data accuracy (for HLR) comes only from :data:`FULL_DATA`, each figure with its source.
Where none is known for the dataset and student, HLR and the score are not reported and the row
says why. ``ddranking`` caches its own full-data figures (``REAL_DATA_ACC_CACHE``:
"ImageNet1K-ResNet-18-BN": 56.5, "TinyImageNet-ResNet-18-BN": 46.4, no source given); we use
torchvision's published 69.758 for its batch-norm ResNet-18 instead, so an HLR here is not
numerically comparable with ddranking's for ImageNet-1K.

HLR needs the hard-label accuracy of the distilled set. Under ``hard-label`` that is the
protocol's own runs. Under ``soft-label`` it is the same job's hard-label protocol's runs of the
same student (a job may run several protocols, ``evaluate.also``), paired by (set seed, training
seed) with the soft-label IOR for the score; without one the row says so. ``soft-label-imagenet``
trains torchvision's batch-norm ResNet-18, whose hard-label counterpart is ``hard-label-imagenet`` (the
same recipe with hard labels; the paper's ``hard-label`` protocol trains the instance-norm ``resnet18``,
another network): a job that runs both gets HLR and the score against torchvision's full-data 69.758.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_WEIGHT = 0.5          # w: DD-Ranking's leaderboard default
HARD_LABEL = "hard-label"
SOFT_LABEL_IMAGENET = "soft-label-imagenet"
HARD_LABEL_IMAGENET = "hard-label-imagenet"       # RDED's recipe with hard labels: torchvision's student
HARD_PROTOCOLS = (HARD_LABEL, HARD_LABEL_IMAGENET)
TORCHVISION_PROTOCOLS = (SOFT_LABEL_IMAGENET, HARD_LABEL_IMAGENET)   # a student name is torchvision's network
DEFINITION = ("DD-Ranking (Li et al. 2025, arXiv 2505.13300): IOR = acc(syn) - acc(random real), same protocol; "
              "HLR = acc(full real data, hard labels) - acc(syn, hard labels); score (LRS) = "
              "(e^a - e^-1)/(e - e^-1), a = w*IOR - (1-w)*HLR; per (set seed, training seed) run, then mean and "
              "sample std; accuracies as fractions")


def ior(acc_syn: float, acc_random: float) -> float:
    """Improvement over random: the distilled set's accuracy minus random real's (same protocol)."""
    return float(acc_syn) - float(acc_random)


def hlr(acc_full: float, acc_syn_hard: float) -> float:
    """Hard-label recovery: full-data hard-label accuracy minus the distilled set's hard-label one."""
    return float(acc_full) - float(acc_syn_hard)


def score(ior_: float, hlr_: float, weight: float = DEFAULT_WEIGHT) -> float:
    """DD-Ranking's Label-Robust Score: ``(e^a - e^-1) / (e - e^-1)``, ``a = w IOR - (1 - w) HLR``."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if abs(ior_) > 1 or abs(hlr_) > 1:
        raise ValueError(f"IOR {ior_} / HLR {hlr_}: accuracies are fractions (0.605, not 60.5); a difference of "
                         "two fractions is within [-1, 1]")
    a = weight * float(ior_) - (1.0 - weight) * float(hlr_)
    return (math.exp(a) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


@dataclass(frozen=True)
class FullData:
    """A published accuracy of a network trained on the whole real training set with hard labels,
    and where the job's student is that network: the protocols under which the student's name means
    it, and the ``evaluate.image_size`` values (None = native size) that give its test view."""
    accuracy: float            # fraction
    protocols: tuple[str, ...]
    image_sizes: tuple[int | None, ...]
    source: str
    note: str = ""


# (dataset, student) -> the full-data figure. dataset: ``data.source`` for the built-in sources,
# the class list's name for an ImageNet-family folder. Only figures with a source; add one with it.
FULL_DATA: dict[tuple[str, str], FullData] = {
    ("fashion-mnist", "convnet3"): FullData(
        0.935, ("hard-label", "soft-label"), (None, 28),
        "evaluation.md's Fashion-MNIST table, 'full training set 93.5' (DC: Zhao, Mopuri & Bilen, ICLR 2021, "
        "Table 1, ConvNet on the whole training set)",
        "ConvNet-3 (width 128, instance norm), as the DC protocol trains it"),
    ("imagenet1k", "resnet18"): FullData(
        0.69758, ("soft-label-imagenet", "hard-label-imagenet"), (256,),
        "torchvision ResNet18_Weights.IMAGENET1K_V1, acc@1 69.758 "
        "(pytorch.org/vision/stable/models/generated/torchvision.models.resnet18.html)",
        "torchvision's batch-norm ResNet-18 (the soft-label-imagenet and hard-label-imagenet student) by its "
        "reference recipe (90 epochs, "
        "SGD), tested at 256 px centre-cropped to 224 as that protocol tests; the hard-label protocols' "
        "instance-norm resnet18 has no published full-data figure"),
}


def dataset_key(data: dict) -> str | None:
    """The :data:`FULL_DATA` dataset of a job's ``data`` config, or None when its test set or its
    classes are not the whole dataset's (a full-data figure would not compare)."""
    if data.get("classes") is not None or data.get("test_limit_per_class") is not None:
        return None
    if data.get("source") in ("imagefolder", "parquet"):
        return data.get("class_list")
    return data.get("source")


def full_data(data: dict, student: str, image_size: int | None, protocol: str) -> tuple[FullData | None, str]:
    """(the full-data figure for this dataset, student and protocol, or None; why not when None)."""
    key = dataset_key(data)
    if key is None:
        return None, "no full-data accuracy: the job's classes or test set are a subset of the dataset's"
    fd = FULL_DATA.get((key, student))
    if fd is None or protocol not in fd.protocols:
        return None, (f"no published full-data accuracy known for {student} on {key} under {protocol} "
                      "(ranking.FULL_DATA)")
    if image_size not in fd.image_sizes:
        return None, (f"the full-data accuracy of {student} on {key} is for evaluate.image_size "
                      f"{' or '.join(str(x) for x in fd.image_sizes)}, this job's is {image_size}")
    return fd, ""


def _mean_std(v: list[float]) -> tuple[float | None, float | None]:
    if not v:
        return None, None
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd


def _metrics(runs: list[dict], base: list[dict], metric: str, full: float | None, hard_runs: list[dict] | None,
             w: float) -> dict:
    """IOR, HLR and the score per paired run, then mean/std, for one accuracy (final or best).
    ``hard_runs``: the same student's hard-label runs on the distilled sets (the runs themselves
    under the hard-label protocol; another protocol's of this job otherwise), paired by (set seed,
    training seed); None: no hard-label accuracy, so no HLR."""
    ref = {(r["set_seed"], r["train_seed"]): r[metric] for r in base}
    paired = [r for r in runs if (r["set_seed"], r["train_seed"]) in ref]
    pairs = [(r[metric], ref[(r["set_seed"], r["train_seed"])]) for r in paired]
    acc, _ = _mean_std([r[metric] for r in runs])
    out = {"accuracy": acc, "random_real_accuracy": _mean_std([b for _, b in pairs])[0] if pairs else None,
           "n_pairs": len(pairs)}
    iors = [ior(s, b) for s, b in pairs]
    out["ior"], out["ior_std"] = _mean_std(iors)
    hard = {(r["set_seed"], r["train_seed"]): r[metric] for r in hard_runs or []}
    both = [(ior(r[metric], ref[(r["set_seed"], r["train_seed"])]), hlr(full, hard[(r["set_seed"], r["train_seed"])]))
            for r in paired if (r["set_seed"], r["train_seed"]) in hard] if full is not None else []
    if both:
        out["hlr"], out["hlr_std"] = _mean_std([h for _, h in both])
        out["score"], out["score_std"] = _mean_std([score(i, h, w) for i, h in both])
    else:
        out.update(hlr=None, hlr_std=None, score=None, score_std=None)
    return out


def same_network(protocol: str, other: str) -> bool:
    """Whether a student name means the same network under the two protocols: hard-label and
    soft-label build ours (``eval.students``), soft-label-imagenet and hard-label-imagenet torchvision's."""
    return (protocol in TORCHVISION_PROTOCOLS) == (other in TORCHVISION_PROTOCOLS)


def ranking(results: dict, data: dict, image_size: int | None, weight: float = DEFAULT_WEIGHT,
            hard: dict | None = None, hard_image_size: int | None = None) -> dict:
    """The ``ranking`` block of one protocol's results (``results.json``'s ``protocols`` entries):
    a row per (dataset kind, student) other than the random-real baseline, with the protocol and
    IPC, the accuracy, random real's under the same protocol, IOR, HLR and the score; each for the
    final accuracy (``final``) and the best over the periodic evaluations (``best``, what DD-Ranking
    takes: it is optimistic). HLR needs the distilled sets' hard-label accuracy and a full-data one:
    under the hard-label protocol its own runs; under another, ``hard`` (the same job's hard-label
    protocol's results, trained at ``hard_image_size``) when it ran the same network."""
    proto, ipc = results.get("protocol"), results.get("ipc")
    base = results.get("results", {}).get("random-real", {})
    hard_cells = (hard or {}).get("results", {})
    rows = []
    for kind, by_student in results.get("results", {}).items():
        if kind == "random-real":
            continue
        for student, cell in by_student.items():
            notes = []
            if proto in HARD_PROTOCOLS:
                fd, why = full_data(data, student, image_size, proto)
                hard_runs = cell["runs"]
            else:
                h = hard_cells.get(kind, {}).get(student)
                hard_proto = (hard or {}).get("protocol")
                hard_runs = h["runs"] if h and same_network(proto, hard_proto) else None
                fd, why = full_data(data, student, hard_image_size if hard_runs else image_size,
                                    hard_proto if hard_runs else proto)
                if hard_runs is None:
                    why = (f"HLR needs the sets' hard-label accuracy of {student}; this job's protocol {proto} is not "
                           f"hard-label and no hard-label protocol of the job trained the same network")
                    if fd is not None:
                        notes.append(why + ": HLR and the score not reported")
                else:
                    notes.append(f"HLR from the job's hard-label protocol {hard.get('name', hard_proto)} ({hard_proto}) "
                                 f"runs of {student}")
            row = {"protocol": proto, "protocol_version": results.get("protocol_version"), "ipc": ipc,
                   "dataset": kind, "student": student,
                   "full_data_accuracy": fd.accuracy if fd else None, "full_data_source": fd.source if fd else None}
            if results.get("name") and results.get("name") != proto:
                row["protocol_name"] = results["name"]
            b = base.get(student, {}).get("runs", [])
            for metric, name in (("final_acc", "final"), ("best_acc", "best")):
                row[name] = _metrics(cell["runs"], b, metric, fd.accuracy if fd else None, hard_runs, weight)
            if not b:
                notes.insert(0, f"no random-real runs of {student} in this job: IOR not reported")
            if fd is None:
                notes.append(why + ": HLR and the score not reported")
            if notes:
                row["note"] = "; ".join(notes)
            rows.append(row)
    return {"definition": DEFINITION, "weight_ior": weight, "rows": rows}


def fmt_pct(v: float | None, signed: bool = False) -> str:
    """A fraction as percentage points for a table ('-' when not reported)."""
    if v is None:
        return "-"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


def row_cells(row: dict, basis: str = "final") -> list[str]:
    """One ranking row as table cells: protocol, IPC, dataset, student, accuracy, random real,
    IOR, full-data accuracy, HLR, score (percentages; the score as a number in [0, 1])."""
    m = row[basis]
    sc = "-" if m["score"] is None else f"{m['score']:.3f}"
    return [row["protocol"], row["ipc"], row["dataset"], row["student"], fmt_pct(m["accuracy"]),
            fmt_pct(m["random_real_accuracy"]), fmt_pct(m["ior"], signed=True), fmt_pct(row["full_data_accuracy"]),
            fmt_pct(m["hlr"]), sc]


ROW_HEAD = ["protocol", "IPC", "dataset", "student", "acc", "random real", "IOR", "full data", "HLR", "score"]


def results_ranking(results: dict, manifest: dict | None = None) -> dict:
    """``results["ranking"]``; for a results.json written before it existed, computed from its runs
    and the manifest's resolved config (the same function, the same inputs)."""
    if "ranking" in results:
        return results["ranking"]
    cfg = (manifest or {}).get("config") or {}
    return ranking(results, cfg.get("data") or {}, (cfg.get("evaluate") or {}).get("image_size"))


def ranking_lines(block: dict, indent: str = "  ") -> list[str]:
    """``mgd-ray status`` lines: a row per dataset kind and student (final accuracy), then its note."""
    rows = block.get("rows") or []
    if not rows:
        return []
    out = [f"{indent}ranking (DD-Ranking, w {block.get('weight_ior', DEFAULT_WEIGHT)}; final accuracy, %; "
           f"score in [0, 1]):"]
    for row in rows:
        c = row_cells(row)
        out.append(f"{indent}  {c[2]:12s} {c[3]:10s} {c[0]} ipc {c[1]}: acc {c[4]}  random real {c[5]}  IOR {c[6]}"
                   f"  full data {c[7]}  HLR {c[8]}  score {c[9]}")
        if row.get("full_data_source"):
            out.append(f"{indent}    full data: {row['full_data_source']}")
        if row.get("note"):
            out.append(f"{indent}    ({row['note']})")
    return out


__all__ = ["ior", "hlr", "score", "FullData", "FULL_DATA", "full_data", "dataset_key", "ranking", "row_cells",
           "ROW_HEAD", "DEFAULT_WEIGHT", "DEFINITION", "results_ranking", "ranking_lines"]
