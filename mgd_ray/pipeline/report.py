"""``mgd-ray status`` and ``mgd-ray export``: read a job's output files (no Ray needed).

Export formats: ``imagefolder`` (DIR/<class_name>/<sample_id>.png) and ``hf``, a Hugging Face
dataset directory: the shards (already ``datasets``-native: Image and ClassLabel features in
their schema metadata) under ``data/``, one config per generation seed, and a ``README.md``
dataset card (method, settings, model identity, results, licence of the source data).
"""

from __future__ import annotations

import os

from .store import Store
from .units import decode_png, image_png


def _store(out: str, storage_options: dict | None) -> Store:
    st = Store(out, storage_options)
    if not st.exists("manifest.json"):
        raise FileNotFoundError(f"{out!r} has no manifest.json: not a mgd_ray output directory "
                                f"(expected the output.dir of a job)")
    return st


def job_shards(st: Store, m: dict) -> list[str]:
    """The committed shard files of the job ``m`` (its manifest) describes: shards of a seed or a
    class the job no longer has stay under ``shards/`` but are not the job's."""
    from .units import manifest_shard_names
    names = st.ls("shards", suffix=".parquet")
    mine = manifest_shard_names(m)
    if mine is None:
        return names
    want = {n for v in mine.values() for n in v}
    return [n for n in names if n in want]


def status_text(out: str, storage_options: dict | None = None) -> str:
    st = _store(out, storage_options)
    m = st.read_json("manifest.json")
    shards = job_shards(st, m)
    c = m.get("counts", {})
    lines = [f"job {m.get('name')} ({m.get('method', {}).get('name')}) at {st.uri()}",
             f"  status: {m.get('status')}   runs: {m.get('runs')}   git: {m.get('git_commit')}",
             f"  model: {m.get('model', {}).get('source')}  classes: {len(m.get('classes', []))}",
             f"  shards committed: {len(shards)}" + (f" of {c['units']} units ({c.get('images')} images)"
                                                     if c.get("units") else ""),
             "  timings (s): " + ", ".join(f"{k} {v}" for k, v in m.get("timings", {}).items()),
             "  stages: " + ", ".join(f"{name} {state}" for name, state in stage_states(st, m))]
    if st.exists("results.json"):
        from .evaluate import protocol_results
        from .ranking import ranking_lines, results_ranking
        r = st.read_json("results.json")
        for pr in protocol_results(r):
            lines.append(f"  results [{pr['name']}] ({pr['protocol']} v{pr['protocol_version']}, ipc {pr['ipc']}):")
            for kind, by in pr["results"].items():
                for student, cell in by.items():
                    gain = cell.get("gain_over_random_real")
                    lines.append(f"    {kind:12s} {student:10s} final {100 * cell['final_acc_mean']:5.1f} "
                                 f"± {100 * cell['final_acc_std']:.1f}  best {100 * cell['best_acc_mean']:5.1f} "
                                 f"± {100 * cell['best_acc_std']:.1f}  (n={len(cell['runs'])})"
                                 + (f"  gain {100 * gain:+.1f}" if gain is not None else ""))
            lines += ranking_lines(results_ranking(pr, m), indent="    ")
        dist = r.get("distribution", {}).get("mean")
        if dist:
            lines.append("  distribution (mean over sets): " + ", ".join(
                f"{k} {v:.3g}" for k, v in dist.items() if k in ("fid", "mmd2_rbf_unbiased", "prior_fidelity",
                                                                  "coverage", "recall", "diversity")))
    if st.exists("report.html"):
        lines.append(f"  report: {st.uri('report.html')}")
    if st.exists("failures.parquet"):
        lines.append(f"  unreadable input images: {st.read_table('failures.parquet').num_rows} (failures.parquet)")
    return "\n".join(lines)


def stage_states(st: Store, m: dict) -> list[tuple[str, str]]:
    """(stage, state) for every stage of ``pipeline.stage.STAGES``, read from its files:
    ``complete``, ``started`` (its settings are recorded, its outputs are not complete),
    ``running`` (the manifest says the driver is in it) or ``not run``."""
    from .stage import STAGES
    out = []
    for s in STAGES:
        if m.get("status") == "running" and m.get("stage") == s.name:
            state = "running"
        elif s.name == "generate":
            c = m.get("counts", {})
            n = len(job_shards(st, m))
            state = ("complete" if c.get("units") and n >= c["units"] else
                     f"started ({n} shards)" if n or st.exists(s.dir, s.SETTINGS) else "not run")
        elif s.name == "evaluate":
            trials = sum(len(st.ls(s.dir, d, suffix=".json")) for d in st.ls(s.dir)
                         if not d.startswith("_") and not d.endswith(".json"))     # eval/<protocol>/<trial>.json
            state = ("complete" if st.exists("results.json") else
                     f"started ({trials} trials)" if st.exists(s.dir, s.SETTINGS) else "not run")
        else:
            state = ("complete" if st.exists(s.dir, s.COMPLETE) else
                     "started" if st.exists(s.dir, s.SETTINGS) else "not run")
        out.append((s.name, state))
    return out


def export_imagefolder(out: str, dest: str, storage_options: dict | None = None) -> int:
    st = _store(out, storage_options)
    n = 0
    for name in job_shards(st, st.read_json("manifest.json")):
        for r in st.read_table("shards", name, columns=["sample_id", "class_name", "image"]).to_pylist():
            d = os.path.join(dest, r["class_name"].replace("/", "_"))
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"{r['sample_id']}.png"), "wb") as f:
                f.write(image_png(r["image"]))
            n += 1
    return n


# Licence of each source's data: (Hugging Face licence id, text for the card).
IMAGENET_TERMS = ("other", "ImageNet (ILSVRC-2012) terms of access: non-commercial research and educational "
                           "use only (https://image-net.org/download); the distilled images derive from "
                           "ImageNet images and a generator trained on them.")
DATA_LICENCES = {
    "sklearn-digits": ("cc-by-4.0", "UCI ML Repository, Optical Recognition of Handwritten Digits "
                                    "(Alpaydin & Kaynak, 1998), CC BY 4.0; shipped in scikit-learn as load_digits."),
    "fashion-mnist": ("mit", "Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, Zalando Research), MIT licence."),
}


def data_licence(data: dict) -> tuple[str, str]:
    """(licence id, text) of a job's source data, from the manifest's ``data`` record."""
    from ..known import IMAGENET_FAMILY
    if data.get("source") in DATA_LICENCES:
        return DATA_LICENCES[data["source"]]
    if (data.get("class_list") or {}).get("name") in IMAGENET_FAMILY:
        return IMAGENET_TERMS
    return ("unknown", f"not recorded: the source is your own data ({data.get('source')} at "
                       f"{data.get('root')}); state its licence here before you share this dataset.")


def md_table(head: list, rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows])


def dataset_card(m: dict, results: dict | None, config_yaml: str, seeds: list[int], n_images: int) -> str:
    import json

    import yaml

    from .report_page import RESULTS_HEAD, distribution_rows, protocol_title, results_note, results_rows
    from .units import SHARD_COLUMNS
    lic_id, lic_text = data_licence(m.get("data", {}))
    method, model, data = m.get("method", {}), m.get("model", {}), m.get("data", {})
    meta = {"license": lic_id, "task_categories": ["image-classification"],
            "tags": ["dataset-distillation", "synthetic", "mgd_ray", method.get("name")],
            "configs": [{"config_name": f"seed{s}", "data_files": [{"split": "train", "path": f"data/s{s:03d}-*.parquet"}],
                         **({"default": True} if i == 0 else {})} for i, s in enumerate(seeds)]}
    ipc = m.get("config", {}).get("generate", {}).get("ipc")
    out = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
           f"# {m.get('name')}: a distilled {data.get('source')} dataset ({method.get('name')}, IPC {ipc})", "",
           f"{n_images} images: {len(m.get('classes', []))} classes x {ipc} images per class x {len(seeds)} "
           f"generation seed(s), made by mgd_ray (git {m.get('git_commit')}). Each "
           f"generation seed is one distilled set and one config (`seed<N>`, split `train`):", "",
           "```python", "import datasets",
           f"ds = datasets.load_dataset(\"path/to/this/dir\", \"seed{seeds[0]}\", split=\"train\")  "
           "# image: PIL, label: ClassLabel", "```", "",
           "## Method", "", f"`{method.get('name')}`; the settings that shape the images:", "",
           "```json", json.dumps({k: method.get(k) for k in ("coreset", "guidance", "sampler", "choices")}, indent=1),
           "```", "",
           "## Generator", "", md_table(["field", "value"], [[k, model[k]] for k in
                                                          ("source", "transformer_sha256", "vae_sha256", "num_classes",
                                                           "image_size", "latent_channels", "latent_size")
                                                          if model.get(k) is not None]), "",
           "## Source data and licence", "",
           md_table(["field", "value"], [["source", data.get("source")],
                                         ["class list", (data.get("class_list") or {}).get("name")],
                                         ["rows", ", ".join(f"{k} {v}" for k, v in (data.get("rows") or {}).items())],
                                         ["licence", f"`{lic_id}`: {lic_text}"]]), "",
           "## Results", ""]
    if results:
        from .evaluate import protocol_results
        for pr in protocol_results(results):
            out += [f"### Protocol {protocol_title(pr)}", "", results_note(pr), "",
                    md_table(RESULTS_HEAD, results_rows(pr)), ""]
        d = results.get("distribution")
        if d and "sets" in d:
            head, rows = distribution_rows(d)
            out += [f"Distribution metrics, in the features of the {d.get('feature_space', '')}:", "",
                    md_table(head, rows), ""]
    else:
        out += ["Not evaluated (the job wrote no results.json).", ""]
    out += ["## Columns", "", md_table(["column", "type", "meaning"], [list(c) for c in SHARD_COLUMNS]), "",
            "## Resolved job config", "", "```yaml", config_yaml.strip(), "```", ""]
    return "\n".join(out)


def export_hf(out: str, dest: str, storage_options: dict | None = None) -> int:
    """A Hugging Face dataset directory at ``dest``: ``data/<shard>.parquet`` + ``README.md``.
    Refuses a job whose shards are not all committed, and a ``dest`` that is not empty.
    Returns the number of images."""
    import io

    import pyarrow.parquet as pq

    from .units import SHARD_COLUMNS
    st = _store(out, storage_options)
    m = st.read_json("manifest.json")
    c = m.get("counts", {})
    if not c.get("units") or c.get("units_committed") != c.get("units"):
        raise ValueError(f"{st.uri()} has {c.get('units_committed', 0)} of {c.get('units', '?')} units committed; "
                         f"finish the job (rerun the same distill command) before exporting it")
    names = job_shards(st, m)
    dst = Store(dest)
    if dst.ls():
        raise ValueError(f"{dest} is not empty; export into a new or empty directory (a dataset directory "
                         f"never mixes files of two exports)")
    n, seeds = 0, set()
    for name in names:
        data = st.read_bytes("shards", name)
        f = pq.ParquetFile(io.BytesIO(data))
        if f.schema_arrow.names != [col[0] for col in SHARD_COLUMNS] or b"huggingface" not in (f.schema_arrow.metadata or {}):
            raise ValueError(f"{st.uri('shards', name)} is not in the current shard format (no Image/ClassLabel "
                             f"features); regenerate the job's shards with this version of mgd_ray")
        dst.write_bytes(data, "data", name)
        n += f.metadata.num_rows
        seeds.add(int(name.split("-")[0][1:]))
    cfg = st.read_bytes("config.yaml").decode() if st.exists("config.yaml") else ""
    res = st.read_json("results.json") if st.exists("results.json") else None
    dst.write_bytes(dataset_card(m, res, cfg, sorted(seeds), n).encode(), "README.md")
    return n


__all__ = ["status_text", "export_imagefolder", "export_hf", "dataset_card", "decode_png"]
