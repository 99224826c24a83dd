"""The scale benchmark's report keeps the committed rows that were not run again."""

import json
import shutil
from pathlib import Path

from benchmarks import scale

COMMITTED = Path(scale.__file__).resolve().parent / "reports" / "scale.json"


def test_report_merges_committed_rows_with_new_ones(tmp_path, monkeypatch):
    details = json.loads(COMMITTED.read_text())["details"]
    by_classes = {r["classes"]: r for r in details if r["ipc"] == 10}
    reports = tmp_path / "reports"
    reports.mkdir()
    old = [{**by_classes[c], "measured_by": "python -m benchmarks.scale --classes 10,100"} for c in (10, 100)]
    (reports / "scale.json").write_text(json.dumps({"rows": old, "details": old}))
    monkeypatch.setattr(scale, "REPORTS", reports)
    work = tmp_path / "work"
    work.mkdir()
    new_100 = {**by_classes[100], "driver_peak_rss_mb": 1.0}          # 100 measured again: replaces the old
    for r in (by_classes[1000], new_100):
        (work / f"row-{r['classes']}x50-ipc10.log").write_text(
            "CMD python -m benchmarks.scale --classes 100,1000\nnoise\nROW " + json.dumps(r) + "\n")
    scale.report(work, "python -m benchmarks.scale --classes 1000 --ipc50-at 1000")
    out = json.loads((reports / "scale.json").read_text())
    got = {r["classes"]: r for r in out["details"]}
    assert sorted(got) == [10, 100, 1000]
    assert got[10]["measured_by"] == "python -m benchmarks.scale --classes 10,100"
    assert got[100]["driver_peak_rss_mb"] == 1.0
    assert got[100]["measured_by"] == got[1000]["measured_by"] == "python -m benchmarks.scale --classes 100,1000"
    assert "more than one invocation" in (reports / "scale.md").read_text()
    shutil.rmtree(work)


def _first_row_and_reports(tmp_path, monkeypatch) -> tuple[dict, Path]:
    """The committed report's first row (without its ``measured_by``) and an empty reports folder
    the benchmark writes to."""
    row = {k: v for k, v in json.loads(COMMITTED.read_text())["details"][0].items() if k != "measured_by"}
    reports = tmp_path / "reports"
    reports.mkdir()
    monkeypatch.setattr(scale, "REPORTS", reports)
    return row, reports


def test_a_row_keeps_the_command_that_measured_it(tmp_path, monkeypatch):
    """A later invocation that finds a finished row in the work directory does not claim it."""
    row, reports = _first_row_and_reports(tmp_path, monkeypatch)
    (tmp_path / f"row-{row['classes']}x50-ipc10.log").write_text(
        "CMD python -m benchmarks.scale --classes 10\nROW " + json.dumps(row) + "\n")
    scale.report(tmp_path, "python -m benchmarks.scale --classes 10 --ipc50-at 10")
    got = json.loads((reports / "scale.json").read_text())["details"]
    assert [r["measured_by"] for r in got] == ["python -m benchmarks.scale --classes 10"]


def test_a_row_without_evaluation_says_so(tmp_path, monkeypatch):
    assert "evaluate.enabled=false" in scale.row_overrides(tmp_path, ["n01440764"], tmp_path, 50, 5, evaluate=False)
    assert "evaluate.enabled=false" not in scale.row_overrides(tmp_path, ["n01440764"], tmp_path, 50, 5)
    details = json.loads(COMMITTED.read_text())["details"]
    by_classes = {r["classes"]: r for r in details if r["ipc"] == 10}
    noeval = {**by_classes[1000], "ipc": 50, "evaluate_measured": False,
              "stage_seconds": {**by_classes[1000]["stage_seconds"], "evaluate": None},
              "items": {**by_classes[1000]["items"], "evaluate": 300000},
              "seconds_per_item": {**by_classes[1000]["seconds_per_item"], "evaluate": None}}
    reports = tmp_path / "reports"
    reports.mkdir()
    monkeypatch.setattr(scale, "REPORTS", reports)
    scale.write_reports([by_classes[10], by_classes[1000], noeval], {}, "cmd")
    md = (reports / "scale.md").read_text()
    row50 = [ln for ln in md.splitlines() if ln.startswith("| 1000 | 50 | 50 |")]
    assert len(row50) == 1 and "| off |" in row50[0]
    fit = scale.fixed_and_per_item([by_classes[10], by_classes[1000], noeval], "evaluate")
    assert f"~{(fit[0] + fit[1] * 300000) / 3600:.1f} h" in md      # the estimate uses the measured rows only


def test_notes_are_kept_and_measure_nothing(tmp_path, monkeypatch):
    row, reports = _first_row_and_reports(tmp_path, monkeypatch)
    (tmp_path / "row-10x50-ipc10.log").write_text("ROW " + json.dumps(row) + "\n")   # a log without CMD
    scale.main(["--classes", "10", "--ipc50-at", "", "--work", str(tmp_path), "--note", "box shared"])
    scale.main(["--classes", "10", "--ipc50-at", "", "--work", str(tmp_path), "--note", "second"])
    out = json.loads((reports / "scale.json").read_text())
    assert out["notes"] == ["box shared", "second"]
    assert out["details"][0]["measured_by"] == "python -m benchmarks.scale --classes 10 --ipc50-at  --work " + str(tmp_path)
    assert "- box shared" in (reports / "scale.md").read_text()
