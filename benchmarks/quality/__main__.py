"""Command line of the quality benchmark: ``python -m benchmarks.quality {run,diagnose,report}``."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.quality import __doc__ as DOC
from benchmarks.quality.diagnose import run_diagnose
from benchmarks.quality.report import make_report
from benchmarks.quality.run import run_cells


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) the cells of one part at one IPC")
    r.add_argument("job", help="the base job file, e.g. jobs/fashion-mnist.yaml")
    r.add_argument("--part", default="main", choices=["main", "variants", "ablation"])
    r.add_argument("--ipc", type=int, default=10)
    r.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    r.add_argument("--epochs", type=int, default=None, help="student epochs (default: the protocol's rule)")
    r.add_argument("--n-evals", type=int, default=100)
    r.add_argument("--train-seeds", type=int, default=1)
    r.add_argument("--eval-workers", type=int, default=3)
    r.add_argument("--eval-cpus", type=float, default=0.5)
    r.add_argument("--base", default="manifoldgd-expected-leaves", help="ablation centre (a main-table cell)")
    r.add_argument("--only", default=None, help="comma-separated cell names")
    r.add_argument("--root", default="out/bench-quality")
    r.add_argument("--set", action="append", help="extra job override for every cell (key=value)")
    g = sub.add_parser("diagnose", help="diagnostic sets (VAE round trip of real images; decoded targets)")
    g.add_argument("--ipc", type=int, default=10)
    g.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    g.add_argument("--only", default=None)
    g.add_argument("--root", default="out/bench-quality")
    p = sub.add_parser("report", help="write the report from the finished cells")
    p.add_argument("--root", default="out/bench-quality")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--out-dir", default=None, help="default: benchmarks/reports/")
    p.add_argument("--include", action="append", default=[], metavar="REPORT_JSON",
                   help="also read the cells of a committed quality report (repeatable; the root's cells come "
                        "first; a cell on new seeds with the same settings joins its row)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.cmd == "run":
        run_cells(args)
    elif args.cmd == "diagnose":
        run_diagnose(args)
    else:
        pj, pm = make_report(Path(args.root).resolve(), args.dataset, args.out_dir and Path(args.out_dir),
                             [Path(p) for p in args.include])
        print(pm.read_text())
        print(f"wrote {pj} and {pm}")


if __name__ == "__main__":
    main()
