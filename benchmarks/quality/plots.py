"""The quality benchmark's figures: accuracy against IPC, the ablation panels, and a side-by-side
sample grid (first image of each class per main-table method)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.quality.cells import ABLATION, MAIN, cell_dir
from benchmarks.quality.maths import ablation_centre


def plot(rows: list[dict], root: Path, dataset: str, out_dir: Path) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    main_names = [n for n, _ in MAIN]
    by = {}
    for r in rows:
        if r["cell"] in main_names:
            by.setdefault((r["cell"], r["protocol"]), []).append(r)
    if by:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colours = {n: f"C{i % 10}" for i, n in enumerate(main_names)}
        for (name, protocol), rs in sorted(by.items(), key=lambda kv: (kv[0][1], main_names.index(kv[0][0]))):
            rs.sort(key=lambda r: r["ipc"])
            soft = protocol == "soft-label"
            ax.errorbar([r["ipc"] for r in rs], [r["final_mean"] for r in rs], yerr=[r["final_std"] for r in rs],
                        marker="s" if soft else "o", linestyle="--" if soft else "-", capsize=3,
                        color=colours[name], label=f"{name} (soft)" if soft else name)
        ax.set_xscale("log")
        ax.set_xlabel("images per class")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"{dataset}: ConvNet-3, {' and '.join(sorted({p for _, p in by}))}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        p = out_dir / f"quality-{dataset}-acc-vs-ipc.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    abl = [r for r in rows if r["cell"].startswith("abl-")]
    if abl:
        ran = {r["cell"].split("=")[0][4:] for r in abl}
        factors = [a for a in ABLATION if a[0] in ran]   # factors with no finished cell are not drawn
        fig, axes = plt.subplots(1, len(factors), figsize=(2.6 * len(factors), 3), sharey=True, squeeze=False)
        axes = axes[0]
        centre = ablation_centre(rows, abl)
        for ax, (factor, key, _vals) in zip(axes, factors):
            pts = [(float(r["cell"].split("=", 1)[1]), r["final_mean"]) for r in abl
                   if r["cell"].split("=")[0] == f"abl-{factor}"]
            if centre:
                sec, k = key.split(".")
                pts.append((float(centre["config"][sec][k]), centre["final_mean"]))
            pts.sort()
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
            ax.set_title(factor)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("final acc (%)")
        fig.tight_layout()
        p = out_dir / f"quality-{dataset}-ablation.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        out.append(p)
    grid = sample_grid(root, rows, plt, dataset, out_dir)
    if grid:
        out.append(grid)
    return out


def sample_grid(root: Path, rows: list[dict], plt, dataset: str, out_dir: Path) -> Path | None:
    """Side by side: per main-table method at IPC 10 (else the smallest IPC the root holds images of), the
    first image of each class (of its first seed)."""
    import pyarrow.parquet as pq

    from mgd_ray.pipeline.units import decode_png
    main_names = [n for n, _ in MAIN]
    ipcs = sorted({r["ipc"] for r in rows if r["cell"] in main_names
                   and (cell_dir(root, r["ipc"], r["cell"]) / "shards").is_dir()})
    if not ipcs:
        return None
    ipc = 10 if 10 in ipcs else ipcs[0]
    shards = {n: sorted((cell_dir(root, ipc, n) / "shards").glob("s*-*.parquet")) for n in main_names}
    cells = [n for n in main_names if shards[n]]
    if not cells:
        return None
    per = 3
    fig, axes = plt.subplots(len(cells), 10 * per // per, figsize=(10 * 0.9, len(cells) * 0.95), squeeze=False)
    for i, name in enumerate(cells):
        imgs = {}
        first = shards[name][0].name.split("-")[0]        # the cell's first generation seed ("s000")
        for f in (f for f in shards[name] if f.name.startswith(first + "-")):
            for r in pq.read_table(f, columns=["label", "image"]).to_pylist():
                imgs.setdefault(r["label"], r["image"])
        for c in range(10):
            ax = axes[i][c]
            ax.axis("off")
            if c in imgs:
                a = decode_png(imgs[c])
                ax.imshow(a.squeeze(-1) if a.shape[-1] == 1 else a, cmap="gray")
        label = name if first == "s000" else f"{name} (seed {int(first[1:])})"
        axes[i][0].text(-2, 14, label, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(left=0.25, wspace=0.05, hspace=0.05)
    p = out_dir / f"quality-{dataset}-samples-ipc{ipc}.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p
