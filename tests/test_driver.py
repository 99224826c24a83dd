"""The driver's small pieces (the whole walk runs in test_pipeline.py)."""

from mgd_ray.config import job_from_dict


def test_relative_output_dir_becomes_absolute(tmp_path, monkeypatch):
    from mgd_ray.pipeline.driver import absolute_output
    monkeypatch.chdir(tmp_path)
    j = absolute_output(job_from_dict({"output": {"dir": "out/digits"}}))
    assert j.output.dir == str(tmp_path / "out" / "digits")
    assert absolute_output(job_from_dict({"output": {"dir": "s3://b/p"}})).output.dir == "s3://b/p"


def test_log_lines_follow_the_current_stdout(monkeypatch):
    import io
    import logging
    import sys

    from mgd_ray.pipeline.driver import setup_logging
    setup_logging()
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    logging.getLogger("mgd_ray").info("hello from the test")
    assert "hello from the test" in buf.getvalue()
