"""Where a result came from: the git commit of the code that made it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str:
    """Short commit hash of the checkout this package runs from, or "unknown" (an installed wheel)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"
