"""The store: atomic commits and credential redaction (no Ray, local disk)."""

import os

import pytest

from mgd_ray.pipeline.store import Store, redact


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    st = Store(str(tmp_path))
    st.write_bytes(b"old", "a.bin")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        st.write_bytes(b"new", "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"old"  # the committed file is intact
    assert st.ls(suffix=".bin") == ["a.bin"]            # temp files are never listed


def test_redact_credentials():
    cfg = {"output": {"storage_options": {"key": "AKIA", "secret": "s3cr3t", "endpoint_url": "http://x"}},
           "data": {"root": "s3://b", "storage_options": {"token": "t"}}}
    r = redact(cfg)
    assert r["output"]["storage_options"] == {"key": "***", "secret": "***", "endpoint_url": "http://x"}
    assert r["data"]["storage_options"]["token"] == "***" and r["data"]["root"] == "s3://b"
    assert "s3cr3t" not in str(r)
