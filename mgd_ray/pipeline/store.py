"""Where a job's outputs live: a local directory or ``s3://bucket/prefix`` (fsspec / s3fs).

Every file is committed atomically: local files are written under a temporary name and
renamed into place; object stores make an object visible only when its upload completes, so
a PUT to the final key is already atomic. Readers therefore never see half a shard.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

import fsspec

SECRET_WORDS = ("key", "secret", "token", "password", "credential")


def redact(obj: Any) -> Any:
    """Copy of a config tree with credential-like values replaced (never log credentials)."""
    if isinstance(obj, dict):
        return {k: ("***" if any(w in str(k).lower() for w in SECRET_WORDS) and v not in (None, "", {})
                    else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


class Store:
    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.is_local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol

    # -- paths ---------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if parts else self.root

    def uri(self, *parts: str) -> str:
        """Full URI usable by other libraries (s3://... or an absolute local path)."""
        p = self.path(*parts)
        return p if self.is_local else f"{self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol}://{p}"

    def arrow_fs(self):
        import pyarrow.fs as pafs
        if self.is_local:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    # -- operations ------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def makedirs(self, *parts: str):
        if self.is_local:
            os.makedirs(self.path(*parts), exist_ok=True)

    def ls(self, *parts: str, suffix: str = "") -> list[str]:
        p = self.path(*parts)
        if not self.fs.exists(p):
            return []
        names = [posixpath.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False)]
        return sorted(n for n in names if n.endswith(suffix) and ".tmp-" not in n)

    def write_bytes(self, data: bytes, *parts: str):
        dest = self.path(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        else:
            with self.fs.open(dest, "wb") as f:
                f.write(data)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open(self.path(*parts), "rb") as f:
            return f.read()

    def write_json(self, obj: Any, *parts: str):
        self.write_bytes(json.dumps(obj, indent=1, default=str).encode(), *parts)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_table(self, table, *parts: str):
        import io

        import pyarrow.parquet as pq
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(buf.getvalue(), *parts)

    def read_table(self, *parts: str, **kw):
        import pyarrow.parquet as pq
        with self.fs.open(self.path(*parts), "rb") as f:
            return pq.read_table(f, **kw)

    def rm(self, *parts: str, recursive: bool = True):
        p = self.path(*parts)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=recursive)

    def mtime(self, *parts: str):
        info = self.fs.info(self.path(*parts))
        return info.get("mtime") or info.get("LastModified") or info.get("last_modified")
