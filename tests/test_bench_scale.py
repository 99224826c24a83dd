"""The scale benchmark's report keeps the committed rows that were not run again."""

import json
import shutil
from pathlib import Path

from benchmarks import scale

COMMITTED = Path(scale.__file__).resolve().parent / "reports" / "scale.json"


def test_report_merges_committed_rows_with_new_ones(tmp_path, monkeypatch):
    details = json.loads(COMMITTED.read_text())["details"]
    by_classes = {r["classes"]: r for r in details}
    reports = tmp_path / "reports"
    reports.mkdir()
    old = [{**by_classes[c], "measured_by": "python -m benchmarks.scale --classes 10,100"} for c in (10, 100)]
    (reports / "scale.json").write_text(json.dumps({"rows": old, "details": old}))
    monkeypatch.setattr(scale, "REPORTS", reports)
    work = tmp_path / "work"
    work.mkdir()
    new_100 = {**by_classes[100], "driver_peak_rss_mb": 1.0}          # 100 measured again: replaces the old
    for r in (by_classes[1000], new_100):
        (work / f"row-{r['classes']}x50-ipc10.log").write_text("noise\nROW " + json.dumps(r) + "\n")
    scale.report(work, "python -m benchmarks.scale --classes 100,1000")
    out = json.loads((reports / "scale.json").read_text())
    got = {r["classes"]: r for r in out["details"]}
    assert sorted(got) == [10, 100, 1000]
    assert got[10]["measured_by"] == "python -m benchmarks.scale --classes 10,100"
    assert got[100]["driver_peak_rss_mb"] == 1.0
    assert got[100]["measured_by"] == got[1000]["measured_by"] == "python -m benchmarks.scale --classes 100,1000"
    assert "more than one invocation" in (reports / "scale.md").read_text()
    shutil.rmtree(work)
