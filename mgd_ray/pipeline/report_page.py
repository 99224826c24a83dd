"""``report.html``: one self-contained page per job, built from its output files only.

Sections (each a ``<section id=...>``): ``summary`` (job, status, data, model), ``preview`` (the
first distilled set's images, a row per class, each above a row of real train images of that
class, embedded as data URIs), ``results`` (accuracy per dataset kind and student, with the paired
gain over random real), ``distribution`` (the distribution metrics per set), ``timings`` (per
stage) and ``config`` (the resolved job file). Nothing is fetched when the page is opened.

The page is built from the output directory alone, so ``mgd-ray report OUT`` rebuilds it anywhere
(also from ``s3://``, without the data source or its credentials). The real images come from
``preview/real.parquet``, which the generate stage writes beside the preview grids
(:func:`write_real_preview`: a few real train images per class, read from the source while the job
has it open); an output directory without that file gets a page without the real rows.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import re

import numpy as np

from .store import Store
from .units import image_png

THUMB = 64          # images larger than this are shrunk for the page (the shards keep the originals)
MAX_IMAGES = 2000   # preview images on the page at most (10 per class up to 200 classes)
REAL_PREVIEW = ("preview", "real.parquet")  # real train images beside the distilled rows

log = logging.getLogger("mgd_ray")

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{margin:0 0 4px}h2{border-bottom:2px solid #d6dbe6;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d6dbe6;padding:4px 8px;text-align:right}
th{background:#eef1f7}td.l,th.l{text-align:left}.muted{color:#6b7385}
.pos{color:#17803d}.neg{color:#b42318}
.grid td{padding:2px;border:none;text-align:left}.grid td.name{padding-right:10px;white-space:nowrap}
.grid img{width:64px;height:64px;image-rendering:pixelated;background:#000;display:block}
.grid td.kind{color:#6b7385;font-size:12px;padding-right:8px}.grid tr.real td{padding-bottom:10px}
pre{background:#f6f7fa;border:1px solid #d6dbe6;padding:10px;overflow:auto;font-size:12px}
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def pct(mean: float, std: float | None = None, signed: bool = False) -> str:
    s = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return s if std is None else f"{s} ± {100 * std:.1f}"


def paired_gains(results: dict) -> dict:
    """``{(kind, student): {mean, std, n}}``: final accuracy minus random real's, paired on
    (set_seed, train_seed) — the same training seed on the same-index set — then averaged."""
    base = results.get("results", {}).get("random-real", {})
    out = {}
    for kind, by_student in results.get("results", {}).items():
        if kind == "random-real":
            continue
        for student, cell in by_student.items():
            ref = {(r["set_seed"], r["train_seed"]): r["final_acc"] for r in base.get(student, {}).get("runs", [])}
            d = np.array([r["final_acc"] - ref[(r["set_seed"], r["train_seed"])] for r in cell["runs"]
                          if (r["set_seed"], r["train_seed"]) in ref], dtype=float)
            if len(d):
                out[(kind, student)] = {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                                        "n": int(len(d))}
    return out


def thumbnail(png: bytes) -> bytes:
    """PNG bytes, shrunk to fit THUMB x THUMB when larger (the page stays small at 256 px)."""
    from PIL import Image
    im = Image.open(io.BytesIO(png))
    if max(im.size) <= THUMB:
        return png
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def per_class_shown(n_classes: int) -> int:
    """Images per class on the page (distilled and real alike): 10, fewer past 200 classes."""
    return max(1, min(10, MAX_IMAGES // max(1, n_classes)))


def preview_images(store: Store, n_classes: int, gen_seed: int) -> dict[int, list[tuple[str, bytes]]]:
    """``{label: [(sample_id, PNG bytes)]}`` of one distilled set, first images of each class;
    reads only the first shard(s) of each class (of the job's ``n_classes``: shards of a class the
    job no longer has are not read)."""
    per_class = per_class_shown(n_classes)
    by_label: dict[int, list[str]] = {}
    for name in store.ls("shards", suffix=".parquet"):
        if name.startswith(f"s{gen_seed:03d}-c") and int(name.split("-")[1][1:]) < n_classes:
            by_label.setdefault(int(name.split("-")[1][1:]), []).append(name)  # s<seed>-c<label>-t<start>
    out = {}
    for label, names in sorted(by_label.items()):
        rows = []
        for name in names:
            rows += store.read_table("shards", name, columns=["sample_id", "image"]).to_pylist()
            if len(rows) >= per_class:
                break
        rows.sort(key=lambda r: int(r["sample_id"].rsplit("-i", 1)[1]))
        out[label] = [(r["sample_id"], image_png(r["image"])) for r in rows[:per_class]]
    return out


def real_preview_table(job, source, info):
    """A pyarrow table ``label, class_name, id, image`` (PNG thumbnails): per class, the first
    ``per_class_shown`` images (by id) of the random-real baseline subset of the first generation
    seed (the IPC real images that baseline trains on), read from the source with the encoder's
    geometry. Reads only those images (at most MAX_IMAGES), not the split."""
    import pyarrow as pa

    from .evaluate import random_real_subset
    names = list(source.classes.names)
    per_class = min(per_class_shown(len(names)), int(job.generate.ipc))
    _, _, labels = source.select("train")
    idx = random_real_subset(np.asarray(labels), int(job.generate.ipc), int(job.generate.seeds[0]))
    keep = np.concatenate([idx[labels[idx] == c][:per_class] for c in np.unique(labels[idx])]) if len(idx) else idx
    mode = job.encode.preprocess
    # pad / none: the generator's images are cropped back to the native size, so show real ones there too
    size = None if mode in ("pad", "none") else (job.encode.image_size or info.image_size)
    a = source.arrays_at("train", np.sort(keep), image_size=size, mode="center-crop" if mode == "none" else mode)
    from .units import png_bytes
    lab = [int(x) for x in a["label"]]
    return pa.table({"label": pa.array(lab, pa.int64()), "class_name": [names[x] for x in lab],
                     "id": pa.array([int(x) for x in a["id"]], pa.int64()),
                     "image": pa.array([thumbnail(png_bytes(im)) for im in a["image"]], pa.binary())})


def write_real_preview(store: Store, job, source, info) -> bool:
    """Write ``preview/real.parquet`` (see :func:`real_preview_table`) unless it is there; a
    failure is logged, never raised (the page then shows the distilled rows alone)."""
    try:
        if store.exists(*REAL_PREVIEW):
            return True
        store.write_table(real_preview_table(job, source, info), *REAL_PREVIEW)
        return True
    except Exception as e:  # noqa: BLE001 - a preview must never fail the stage
        log.warning(f"preview: no real-image preview for report.html ({type(e).__name__}: {e})")
        return False


def real_images(store: Store) -> dict[int, list[tuple[int, bytes]]] | None:
    """``{label: [(id, PNG bytes)]}`` from ``preview/real.parquet``; None when it is missing."""
    if not store.exists(*REAL_PREVIEW):
        return None
    out: dict[int, list] = {}
    for r in store.read_table(*REAL_PREVIEW, columns=["label", "id", "image"]).to_pylist():
        out.setdefault(int(r["label"]), []).append((int(r["id"]), r["image"]))
    return out


def class_title(label: int, name: str) -> str:
    """A class's row header: its name, after its label only where the two differ (digits' class
    ``"3"`` is label 3: shown once)."""
    return str(name) if str(name) == str(label) else f"{label} {name}"


def table(head: list[str] | None, rows: list[list], left: int = 1) -> str:
    def cells(tag, vals):
        return "".join(f"<{tag}{' class=l' if i < left else ''}>{esc(v)}</{tag}>" for i, v in enumerate(vals))
    thead = f"<thead><tr>{cells('th', head)}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>" + "".join(f"<tr>{cells('td', r)}</tr>" for r in rows) + "</tbody></table>"


# ---- sections -------------------------------------------------------------------------------
def summary_section(m: dict, failures: int | None) -> str:
    cfg, data, model = m.get("config", {}), m.get("data", {}), m.get("model", {})
    cl = data.get("class_list") or {}
    rows = [["status", m.get("status")], ["method", (m.get("method") or {}).get("name")],
            ["data", f"{data.get('source')} ({cl.get('name', '')}, {len(m.get('classes', []))} classes)"],
            ["images per class (IPC)", cfg.get("generate", {}).get("ipc")],
            ["generation seeds", cfg.get("generate", {}).get("seeds")],
            ["generator", f"{model.get('source')} (transformer sha256 {model.get('transformer_sha256')}, "
                          f"VAE sha256 {model.get('vae_sha256')})"],
            ["git commit", m.get("git_commit")], ["runs", m.get("runs")],
            ["started / finished", f"{m.get('started')} / {m.get('finished', '-')}"]]
    if failures is not None:
        rows.append(["unreadable input images", f"{failures} (failures.parquet)"])
    return (f"<section id=summary><h1>{esc(m.get('name'))}</h1><p class=muted>mgd_ray job report</p>"
            + table(None, rows, left=2) + "</section>")


def _img(alt: str, png: bytes) -> str:
    return (f"<td><img alt='{esc(alt)}' title='{esc(alt)}' src='data:image/png;base64,"
            f"{base64.b64encode(thumbnail(png)).decode()}'></td>")


def preview_section(store: Store, m: dict) -> str:
    classes = m.get("classes", [])
    seeds = m.get("config", {}).get("generate", {}).get("seeds") or [0]
    imgs = preview_images(store, len(classes), int(seeds[0]))
    if not imgs:
        return "<section id=preview><h2>Distilled images</h2><p>no shards committed yet</p></section>"
    real = real_images(store)
    rows = []
    for label, name in enumerate(classes):
        tds = "".join(_img(sid, png) for sid, png in imgs.get(label, []))
        rows.append(f"<tr data-label={label}><td class=name>{esc(class_title(label, name))}</td>"
                    f"<td class=kind>distilled</td>{tds}</tr>")
        if real is not None:
            tds = "".join(_img(f"real {name} (train id {i})", png) for i, png in real.get(label, []))
            rows.append(f"<tr class=real data-real={label}><td class=name></td><td class=kind>real</td>{tds}</tr>")
    shown = sum(len(v) for v in imgs.values())
    note = (f"generation seed {seeds[0]}: the first {shown} distilled images, a row per class"
            + (f"; below each, real train images of the class (the first of the random-real baseline's "
               f"set for seed {seeds[0]})" if real is not None else
               "; no real-image rows (preview/real.parquet is missing: rerun the job to add it)"))
    return (f"<section id=preview><h2>Distilled images</h2><p class=muted>{esc(note)}</p>"
            f"<table class=grid>{''.join(rows)}</table></section>")


RESULTS_HEAD = ["dataset", "student", "runs", "final acc", "best acc", "gain over random real"]


def results_rows(r: dict) -> list[list]:
    """Rows under RESULTS_HEAD: accuracy in % (mean ± std over runs) and the paired gain."""
    gains = paired_gains(r)
    rows = []
    for kind, by_student in r["results"].items():
        for student, c in by_student.items():
            g = gains.get((kind, student))
            rows.append([kind, student, len(c["runs"]), pct(c["final_acc_mean"], c["final_acc_std"]),
                         pct(c["best_acc_mean"], c["best_acc_std"]),
                         f"{pct(g['mean'], g['std'], signed=True)} (n={g['n']})" if g else "-"])
    return rows


def protocol_title(r: dict) -> str:
    """One protocol's heading: its name, and its kind and version where the name is not the kind."""
    name, kind = r.get("name") or r.get("protocol"), r.get("protocol")
    return f"{name}" + (f" ({kind} v{r.get('protocol_version')})" if name != kind else f" v{r.get('protocol_version')}")


def results_note(r: dict) -> str:
    return (f"protocol {r.get('protocol')} v{r.get('protocol_version')}, IPC {r.get('ipc')}; accuracy in % "
            f"(mean ± std over runs); gain = final accuracy minus random real's, paired on (set seed, "
            f"training seed). {r.get('note', '')}")


def distribution_rows(d: dict) -> tuple[list[str], list[list]]:
    """(head, rows): a row per numeric metric, a column per distilled set and their mean."""
    first = next(iter(d["sets"].values()))
    keys = [k for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    cols = [(f"set {s}", v) for s, v in d["sets"].items()] + ([("mean", d["mean"])] if d.get("mean") else [])
    rows = [[k] + [f"{v[k]:.4g}" if k in v else "" for _, v in cols] for k in keys]
    return ["metric"] + [name for name, _ in cols], rows


def results_section(r: dict | None, m: dict | None = None) -> str:
    """Every evaluation protocol's results apart (``results.json``'s ``protocols``, in the job's
    order): its name and version, its accuracies beside its own random-real baseline, its ranking."""
    if r is None:
        return "<section id=results><h2>Results</h2><p>not evaluated (no results.json)</p></section>"
    from .evaluate import protocol_results
    parts = []
    for pr in protocol_results(r):
        slug = re.sub(r"[^a-z0-9-]", "-", str(pr.get("name") or pr.get("protocol")).lower())
        parts.append(f"<h3 id=results-{esc(slug)}>Protocol {esc(protocol_title(pr))}</h3>"
                     f"<p class=muted>{esc(results_note(pr))}</p>"
                     + table(RESULTS_HEAD, results_rows(pr), left=2) + ranking_html(pr, m))
    return "<section id=results><h2>Results</h2>" + "".join(parts) + "</section>"


def ranking_html(r: dict, m: dict | None = None) -> str:
    """DD-Ranking's IOR / HLR / score per student (pipeline/ranking.py), final accuracy, with each
    full-data figure's source and why a cell is not reported."""
    from .ranking import ROW_HEAD, results_ranking, row_cells
    block = results_ranking(r, m)
    rows = block.get("rows") or []
    if not rows:
        return ""
    notes = sorted({f"{x['student']}: full data {x['full_data_source']}" for x in rows if x.get("full_data_source")}
                   | {f"{x['dataset']} / {x['student']}: {x['note']}" for x in rows if x.get("note")})
    return ("<h4>Ranking metrics</h4><p class=muted>" + esc(block.get("definition", "")) +
            f"; w = {esc(block.get('weight_ior'))}; on the final accuracy, in % (the score in [0, 1]).</p>"
            + table(ROW_HEAD, [row_cells(x) for x in rows], left=4)
            + "".join(f"<p class=muted>{esc(n)}</p>" for n in notes))


FEATURE_SPACE = re.compile(r"real-data classifier (?P<dir>\S+) \((?P<acc>\S+) test acc\)")


def feature_space_text(d: dict, m: dict) -> str:
    """Where the distribution metrics were measured, for a person: results.json records
    ``real-data classifier <its directory's name> (<test accuracy> test acc)`` (the name is
    ``classifier`` for the one shipped beside the prior, and the accuracy a raw fraction)."""
    raw = str(d.get("feature_space", ""))
    got = FEATURE_SPACE.fullmatch(raw.strip())
    if not got:
        return f"in the features of the {raw}" if raw else ""
    own = ((m.get("config") or {}).get("evaluate") or {}).get("classifier")
    try:
        acc = f"{100 * float(got['acc']):.1f} % on the real test set"
    except ValueError:
        acc = "test accuracy not recorded"
    if own:
        return f"in the features of the real-data classifier {own} ({acc})"
    prior = (m.get("model") or {}).get("source") or "the prior"
    return f"in the features of the real-data classifier shipped beside {prior} ({got['dir']}/; {acc})"


def distribution_section(r: dict | None, m: dict | None = None) -> str:
    d = (r or {}).get("distribution")
    if not d or "sets" not in d:
        why = (d or {}).get("skipped", "not computed")
        return f"<section id=distribution><h2>Distribution metrics</h2><p>{esc(why)}</p></section>"
    head, rows = distribution_rows(d)
    return (f"<section id=distribution><h2>Distribution metrics</h2><p class=muted>"
            f"{esc(feature_space_text(d, m or {}))}</p>" + table(head, rows) + "</section>")


def timings_section(m: dict) -> str:
    rates = {k: m[k].get("images_per_s") for k in ("encode", "generate") if isinstance(m.get(k), dict)}
    rows = [[k, f"{v:.2f}", rates.get(k, "") or ""] for k, v in m.get("timings", {}).items()]
    return ("<section id=timings><h2>Timings</h2><p class=muted>seconds per stage in the last run that ran "
            "it (0 = reused from cache)</p>" + table(["stage", "seconds", "images/s"], rows) + "</section>")


def config_section(config_yaml: str | None) -> str:
    return ("<section id=config><h2>Resolved config</h2><p class=muted>config.yaml (credentials redacted)</p>"
            f"<pre>{esc(config_yaml or 'missing')}</pre></section>")


def build_html(store: Store) -> str:
    if not store.exists("manifest.json"):
        raise FileNotFoundError(f"{store.uri()!r} has no manifest.json: not a mgd_ray output directory "
                                f"(expected the output.dir of a job)")
    m = store.read_json("manifest.json")
    r = store.read_json("results.json") if store.exists("results.json") else None
    cfg = store.read_bytes("config.yaml").decode() if store.exists("config.yaml") else None
    fails = store.read_table("failures.parquet").num_rows if store.exists("failures.parquet") else None
    body = "".join([summary_section(m, fails), preview_section(store, m), results_section(r, m),
                    distribution_section(r, m), timings_section(m), config_section(cfg)])
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{esc(m.get('name'))} - mgd_ray report"
            f"</title><style>{CSS}</style></head><body>{body}</body></html>\n")


def write_report(out: str, storage_options: dict | None = None) -> str:
    """(Re)build ``report.html`` in a job's output dir (local or s3://); returns its URI."""
    store = Store(out, storage_options)
    store.write_bytes(build_html(store).encode(), "report.html")
    return store.uri("report.html")
