"""Where a job's outputs live: a local directory or ``s3://bucket/prefix`` (fsspec / s3fs).

Every file is committed atomically: local files are written under a temporary name and
renamed into place; object stores make an object visible only when its upload completes, so
a PUT to the final key is already atomic. Readers therefore never see half a shard.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import posixpath
import threading
import time
import uuid
from typing import Any

import fsspec

log = logging.getLogger("mgd_ray")
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
        self.fs.invalidate_cache(p)   # object stores cache listings; other processes write here
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

    def write_table(self, table, *parts: str, metadata: dict[str, str] | None = None):
        """One Parquet file; ``metadata`` goes into its footer (key-value metadata)."""
        import io

        import pyarrow.parquet as pq
        if metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(buf.getvalue(), *parts)

    def read_footer(self, *parts: str) -> dict[str, str]:
        """A Parquet file's key-value metadata; raises when the footer is missing (e.g. truncated)."""
        import pyarrow.parquet as pq
        with self.fs.open(self.path(*parts), "rb") as f:
            md = pq.read_metadata(f).metadata or {}
        return {k.decode(): v.decode() for k, v in md.items()}

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


# ---------------------------------------------------------------------------------------------
class LeaseHeld(RuntimeError):
    """Another driver holds this output directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """``output.dir/_lease.json``: one driver per output directory.

    The holder rewrites its heartbeat every ``ttl / 4`` seconds. Another driver refuses while
    the lease is live and takes it over once it is stale: no heartbeat for ``ttl`` seconds, or
    (on the same host) its process is gone, so a rerun after a killed driver starts at once.
    Local files are created exclusively (O_EXCL); on object stores a read-back after the write
    decides between two drivers that started in the same instant.
    """

    NAME = "_lease.json"

    def __init__(self, store: Store, ttl: float = 120.0):
        self.store, self.ttl = store, float(ttl)
        self.me = {"owner": uuid.uuid4().hex, "host": platform.node(), "pid": os.getpid(),
                   "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ttl": self.ttl}
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name="mgd-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.release()

    def _record(self) -> bytes:
        return json.dumps({**self.me, "heartbeat": time.time()}).encode()

    def _read(self) -> dict | None:
        try:
            return self.store.read_json(self.NAME)
        except (FileNotFoundError, ValueError):
            return None

    def _create(self) -> bool:
        if self.store.is_local:
            path = self.store.path(self.NAME)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._record())
                f.flush()
                os.fsync(f.fileno())
            return True
        if self.store.exists(self.NAME):
            return False
        self.store.write_bytes(self._record(), self.NAME)
        time.sleep(0.5)
        return (self._read() or {}).get("owner") == self.me["owner"]

    def stale(self, cur: dict) -> str | None:
        """Why the lease ``cur`` is stale, or None while it is live."""
        age = time.time() - float(cur.get("heartbeat", 0))
        if age > float(cur.get("ttl", self.ttl)):
            return f"no heartbeat for {age:.0f}s"
        if cur.get("host") == self.me["host"] and not _pid_alive(int(cur.get("pid", -1))):
            return f"its driver (pid {cur.get('pid')}) is gone"
        return None

    def acquire(self):
        for _ in range(3):
            if self._create():
                return
            cur = self._read()
            if cur is None:
                continue  # released meanwhile
            why = self.stale(cur)
            if why is None:
                age = time.time() - float(cur.get("heartbeat", 0))
                raise LeaseHeld(
                    f"{self.store.uri()} is in use by another driver (host {cur.get('host')}, pid {cur.get('pid')}, "
                    f"started {cur.get('started')}, heartbeat {age:.0f}s ago). Two drivers must not write one "
                    f"output.dir: wait for that run to finish or stop it, or use another output.dir. A lease "
                    f"expires {cur.get('ttl', self.ttl):.0f}s after its driver stops (at once on the same host).")
            log.warning("taking over the lease on %s: %s", self.store.uri(), why)
            self.store.rm(self.NAME)
        raise LeaseHeld(f"could not take the lease on {self.store.uri()}: other drivers keep taking it")

    def _beat(self):
        while not self._stop.wait(self.ttl / 4):
            try:
                cur = self._read()
                if cur and cur.get("owner") != self.me["owner"]:
                    log.error("the lease on %s was taken over by host %s pid %s", self.store.uri(),
                              cur.get("host"), cur.get("pid"))
                    return
                self.store.write_bytes(self._record(), self.NAME)
            except Exception as e:  # an unreachable store: keep trying, the run itself will notice
                log.warning("lease heartbeat failed: %s", e)

    def release(self):
        try:
            if (self._read() or {}).get("owner") == self.me["owner"]:
                self.store.rm(self.NAME)
        except Exception as e:
            log.warning("could not release the lease on %s: %s", self.store.uri(), e)
