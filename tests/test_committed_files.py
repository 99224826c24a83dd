"""Committed text records carry no absolute path of the machine that made them."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = {".py", ".md", ".json", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".sh", ".html", ".csv"}
# where this project's machines keep checkouts, outputs and temporary files
MACHINE_PREFIXES = ("/work/", "/root/", "/tmp/")


def committed_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True,
                               timeout=60).stdout.split()
        files = [ROOT / n for n in names]
    except (OSError, subprocess.SubprocessError):   # no git: every file outside ignored trees
        files = [p for p in ROOT.rglob("*") if not {".git", ".venv", "out"} & set(p.relative_to(ROOT).parts)]
    return [p for p in files if p.is_file() and (p.suffix in TEXT or p.name in ("Makefile", "Dockerfile", "run"))]


def test_no_committed_file_holds_an_absolute_path_of_this_machine():
    me = Path(__file__).resolve()
    prefixes = set(MACHINE_PREFIXES) | {str(ROOT) + "/", str(Path.home()) + "/"}
    files = committed_text_files()
    assert any(p.name == "prior.json" for p in files) and any(p.suffix == ".md" for p in files)
    bad = []
    for p in files:
        if p == me:
            continue
        text = p.read_text(errors="replace")
        bad += [f"{p.relative_to(ROOT)}: {pre}" for pre in sorted(prefixes) if pre != "//" and pre in text]
    assert not bad, "absolute paths of this machine in committed files (make them relative to the repo):\n" + \
        "\n".join(bad)
