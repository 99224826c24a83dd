"""Where a job's outputs live: a local directory or ``s3://bucket/prefix`` (fsspec / s3fs).

Every file is committed atomically: local files are written under a temporary name and
renamed into place; object stores make an object visible only when its upload completes, so
a PUT to the final key is already atomic. Readers therefore never see half a shard.

One driver at a time writes an output directory (``Lease``). A ``Store`` made with
``fence=EPOCH`` (``store.fenced(epoch)``, ``lease.fenced()``) checks before every commit that the
lease still has that epoch, and raises ``LeaseLost`` when another driver has taken it over.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import platform
import posixpath
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

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
    """``fence``: the lease epoch this writer works under (``Lease.epoch``), or None (unfenced).

    A fenced store checks, right before each commit (``write_bytes``/``write_json``/
    ``write_table``/``rm``), that ``_lease.json`` still has that epoch, and raises ``LeaseLost``
    otherwise: one small read of the lease per commit. A window remains between that check and
    the commit becoming visible (a local rename: microseconds; an S3 PUT: its upload time), so a
    writer that stalls longer than the lease's ttl inside it can still land one commit after a
    take-over. Ray workers rebuild the store as ``Store(dir, storage_options, fence=epoch)``.
    """

    def __init__(self, url: str, storage_options: dict | None = None, fence: int | None = None):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.is_local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol
        self.fence = None if fence is None else int(fence)
        self._holder: Lease | None = None      # in the driver: its Lease, whose heartbeat may have seen the loss
        self._io: _LeaseIO | None = None

    def __getstate__(self):
        return {**self.__dict__, "_holder": None, "_io": None}   # both are per-process

    def fenced(self, epoch: int) -> Store:
        """This store, committing only while ``_lease.json`` has ``epoch`` (else ``LeaseLost``)."""
        return Store(self.url, self.storage_options, fence=epoch)

    def lease_io(self) -> _LeaseIO:
        if self._io is None:
            self._io = _lease_io(self, Lease.NAME)
        return self._io

    def check_fence(self):
        """Raise ``LeaseLost`` unless the lease is still at this store's epoch (no-op when unfenced).

        Called by every commit; call it yourself before committing a file written another way."""
        if self.fence is None:
            return
        if self._holder is not None and self._holder.lost:
            raise LeaseLost(f"{self.uri()}: {self._holder.lost_reason}; this driver must stop writing here")
        seen = self.lease_io().read()
        rec = seen.record if seen else {}
        if seen is None or rec.get("released") or _epoch(rec) != self.fence:
            now = ("gone" if seen is None else "released" if rec.get("released") else
                   f"at epoch {_epoch(rec)}, held by host {rec.get('host')} pid {rec.get('pid')}")
            raise LeaseLost(f"{self.uri()}: the lease this writer holds (epoch {self.fence}) is {now}; another "
                            f"driver owns output.dir now, so this one must stop writing here")

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
            try:
                self.check_fence()      # as late as possible: right before the rename commits
            except BaseException:
                os.unlink(tmp)
                raise
            os.replace(tmp, dest)
        else:
            self.check_fence()
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
        self.check_fence()
        if self.fs.exists(p):
            self.fs.rm(p, recursive=recursive)

    def mtime(self, *parts: str):
        info = self.fs.info(self.path(*parts))
        return info.get("mtime") or info.get("LastModified") or info.get("last_modified")


# ---------------------------------------------------------------------------------------------
def job_store(job) -> Store:
    """The store of a job's ``output.dir`` as a worker of its driver sees it: fenced with the
    driver's lease epoch (``output.lease_epoch``), so a worker of a driver whose lease was taken
    over (an orphan of a killed driver, say) can no longer commit there."""
    o = job.output
    return Store(o.dir, o.storage_options, fence=o.lease_epoch)


class LeaseHeld(RuntimeError):
    """Another driver holds this output directory."""


class LeaseLost(RuntimeError):
    """This writer's lease epoch is no longer the lease's: another driver took ``output.dir`` over
    (or the lease was released). Nothing more may be committed; stop."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _epoch(rec: dict) -> int:
    try:
        return int(rec.get("epoch", 0))
    except (TypeError, ValueError):
        return -1


def _parse(data: bytes) -> dict:
    try:
        rec = json.loads(data)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


def _precondition_failed(e: BaseException) -> bool:
    """An S3 error (as s3fs raises it) that says a conditional write lost: 412, or 409 when S3
    saw two conditional writes to one key at once."""
    resp = getattr(e.__cause__, "response", None) or getattr(e, "response", None) or {}
    code = (resp.get("Error") or {}).get("Code")
    status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


@dataclass
class _Seen:
    """The lease object as read: its record, its version token and its age by the store's clock."""
    record: dict
    token: str              # S3: the ETag; a local file: the MD5 of its bytes
    age: float | None       # seconds since it was written, by the store's clock (None: ask ``age``)
    mtime: float | None = None


class _LeaseIO:
    """Compare-and-swap on one small object. ``create`` and ``replace`` return the new version
    token, or None where the object was not in the expected state (another writer came first)."""

    cas = True

    def read(self) -> _Seen | None:
        raise NotImplementedError

    def create(self, data: bytes) -> str | None:
        raise NotImplementedError

    def replace(self, data: bytes, token: str) -> str | None:
        raise NotImplementedError

    def age(self, seen: _Seen) -> float:
        return float(seen.age if seen.age is not None else 0.0)

    def verify(self) -> bool:
        """Whether the store honours the conditions (checked once per acquisition)."""
        return True


class _LocalLeaseIO(_LeaseIO):
    """A local (or NFS) file. Writers hold ``flock`` on ``NAME.lock`` while they compare and swap,
    and rename a complete temporary file into place, so readers (fence checks, which take no
    lock) see the old record or the new one, never a partial one."""

    def __init__(self, path: str):
        self.path, self.lock_path = path, path + ".lock"

    def read(self) -> _Seen | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return _Seen(_parse(data), hashlib.md5(data).hexdigest(), None, mtime)

    def age(self, seen: _Seen) -> float:
        """The filesystem's now (the mtime of a probe file created next to the lease) minus the
        lease's mtime: on NFS both come from the server, not from this host's clock."""
        probe = f"{self.path}.tmp-now-{uuid.uuid4().hex[:8]}"
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            now = os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            os.unlink(probe)
        return now - float(seen.mtime or 0.0)

    @contextmanager
    def _locked(self):
        import fcntl
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)    # releases the flock

    def _put(self, data: bytes) -> str:
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return hashlib.md5(data).hexdigest()

    def create(self, data: bytes) -> str | None:
        with self._locked():
            return None if os.path.exists(self.path) else self._put(data)

    def replace(self, data: bytes, token: str) -> str | None:
        with self._locked():
            cur = self.read()
            return self._put(data) if cur is not None and cur.token == token else None


class _S3LeaseIO(_LeaseIO):
    """An S3 object, written through the store's own s3fs client (its endpoint, credentials and
    extra request arguments). ``create``: PUT with ``If-None-Match: *``; ``replace``: PUT with
    ``If-Match: <ETag>`` (S3 conditional writes; also moto's server). The age is the response's
    ``Date`` minus the object's ``Last-Modified``, both stamped by the store (1 s resolution)."""

    def __init__(self, fs, path: str):
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)

    def _get(self, key: str):
        async def get():
            try:
                r = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=key)
            except FileNotFoundError:
                return None
            try:
                return await r["Body"].read(), r
            finally:
                r["Body"].close()
        from fsspec.asyn import sync
        return sync(self.fs.loop, get)

    def read(self) -> _Seen | None:
        got = self._get(self.key)
        if got is None:
            return None
        data, r = got
        modified = r["LastModified"]
        date = (r.get("ResponseMetadata") or {}).get("HTTPHeaders", {}).get("date")
        age = (email.utils.parsedate_to_datetime(date) - modified).total_seconds() if date else None
        return _Seen(_parse(data), r["ETag"], age, modified.timestamp())

    def age(self, seen: _Seen) -> float:
        if seen.age is not None:
            return seen.age
        key = f"{self.key}.tmp-now-{uuid.uuid4().hex[:8]}"     # no Date header: ask a probe object
        self.fs.call_s3("put_object", Bucket=self.bucket, Key=key, Body=b"")
        try:
            now = self.fs.call_s3("head_object", Bucket=self.bucket, Key=key)["LastModified"].timestamp()
        finally:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=key)
        return now - float(seen.mtime or 0.0)

    def _put(self, data: bytes, key: str | None = None, missing_ok: bool = False, **cond) -> str | None:
        try:
            r = self.fs.call_s3("put_object", Bucket=self.bucket, Key=key or self.key, Body=data,
                                ContentType="application/json", **cond)
        except OSError as e:
            if isinstance(e, FileExistsError) or _precondition_failed(e) or (missing_ok and isinstance(e, FileNotFoundError)):
                return None
            raise
        return r["ETag"]

    def create(self, data: bytes) -> str | None:
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, token: str) -> str | None:
        return self._put(data, missing_ok=True, IfMatch=token)   # If-Match on a missing key: 404

    def verify(self) -> bool:
        key = f"{self.key}.tmp-cas-{uuid.uuid4().hex[:8]}"
        try:
            if self._put(b"{}", key, IfNoneMatch="*") is None:
                return False
            honoured = (self._put(b"{}", key, IfNoneMatch="*") is None
                        and self._put(b"{}", key, IfMatch='"' + "0" * 32 + '"') is None)
        except OSError as e:     # e.g. 501 NotImplemented for the conditional headers
            log.debug("conditional-write probe failed: %s", type(e).__name__)
            return False
        finally:
            try:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=key)
            except Exception:
                pass
        return honoured


class _PlainLeaseIO(_LeaseIO):
    """Any other filesystem, or an S3-compatible store that ignores conditional writes: check,
    then write. Two drivers starting in the same instant can both win; each one's fence and
    heartbeat then stop the one whose record was overwritten. The age compares clocks."""

    cas = False

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path

    def read(self) -> _Seen | None:
        self.fs.invalidate_cache(self.path)
        try:
            data = self.fs.cat_file(self.path)
            info = self.fs.info(self.path)
        except FileNotFoundError:
            return None
        m = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
        m = m.timestamp() if hasattr(m, "timestamp") else (float(m) if m else None)
        rec = _parse(data)
        age = time.time() - (m if m is not None else float(rec.get("heartbeat", 0)))
        return _Seen(rec, hashlib.md5(data).hexdigest(), age, m)

    def _put(self, data: bytes) -> str:
        self.fs.pipe_file(self.path, data)
        return hashlib.md5(data).hexdigest()

    def create(self, data: bytes) -> str | None:
        return None if self.read() is not None else self._put(data)

    def replace(self, data: bytes, token: str) -> str | None:
        cur = self.read()
        return self._put(data) if cur is not None and cur.token == token else None


def _lease_io(store: Store, name: str) -> _LeaseIO:
    path = store.path(name)
    if store.is_local:
        return _LocalLeaseIO(path)
    protos = store.fs.protocol if isinstance(store.fs.protocol, (tuple, list)) else (store.fs.protocol,)
    if "s3" in protos or "s3a" in protos:
        return _S3LeaseIO(store.fs, path)
    return _PlainLeaseIO(store.fs, path)


class Lease:
    """``output.dir/_lease.json``: one driver per output directory, also on S3 and after a driver dies.

    Every change of the lease is a compare-and-swap: it is created only where none exists (S3
    ``If-None-Match: *``; locally under ``flock``) and replaced only while it is still the
    version read (S3 ``If-Match: <ETag>``; locally the content's MD5, under ``flock``). Of
    drivers racing to acquire it, or to take over a stale one, exactly one wins. Each acquisition
    or take-over increments ``epoch``; a released lease stays as a ``"released": true`` record,
    so the epoch keeps counting. ``fenced()`` gives a store that commits only while the lease is
    at this epoch (``Store.check_fence``); Ray workers use ``Store(dir, options, fence=epoch)``.

    The holder rewrites the lease every ``ttl / 4`` s, as a compare-and-swap on its own last
    version. When that fails because another driver took over, ``lost`` turns true, ``on_lost``
    is called, and the holder's fenced store refuses every further commit at once (``LeaseLost``).

    Expiry compares no two machines' clocks: a lease is stale once the *store's* clock says it
    was last written more than its ``ttl`` ago (S3: the response's ``Date`` minus the object's
    ``Last-Modified``; a local or NFS directory: the mtime of a probe file created next to it
    minus the lease's mtime), or at once when its holder ran on this host and its process is gone.
    Assumed: the store's clock is steady (one clock, or the NTP-synced servers of S3) and resolves
    1 s or better, so ``ttl`` should be well above 1 s; and nobody deletes ``_lease.json`` by hand
    while a driver runs (the epoch would start again at 1).
    """

    NAME = "_lease.json"

    def __init__(self, store: Store, ttl: float = 120.0, on_lost: Callable[[str], Any] | None = None):
        self.store, self.ttl, self.on_lost = store, float(ttl), on_lost
        self.me = {"owner": uuid.uuid4().hex, "host": platform.node(), "pid": os.getpid(),
                   "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ttl": self.ttl}
        self.epoch: int | None = None
        self.lost_reason: str | None = None
        self._io = _lease_io(store, self.NAME)
        self._token: str | None = None
        self._seq = 0
        self._lost = threading.Event()
        self._mu = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.acquire()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="mgd-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.release()

    @property
    def lost(self) -> bool:
        """True once this driver no longer holds the lease (taken over, or released)."""
        return self._lost.is_set()

    def fenced(self, store: Store | None = None) -> Store:
        """A store (default: the lease's) whose commits check this lease's epoch; in this process it
        refuses at once, without a read, after the heartbeat has seen the lease taken over."""
        if self.epoch is None:
            raise RuntimeError("acquire the lease before fencing a store with it")
        s = (store or self.store).fenced(self.epoch)
        s._holder = self
        return s

    # -- records ---------------------------------------------------------------------------
    def _record(self, epoch: int, seq: int, released: bool = False) -> bytes:
        # "heartbeat" is this host's clock, for people reading the file; expiry never uses it
        rec = {**self.me, "epoch": epoch, "seq": seq, "heartbeat": time.time()}
        if released:
            rec["released"] = True
        return json.dumps(rec).encode()

    def _mine(self, rec: dict, epoch: int, seq: int) -> bool:
        return rec.get("owner") == self.me["owner"] and _epoch(rec) == epoch and rec.get("seq") == seq

    def _read(self) -> dict | None:
        seen = self._io.read()
        return seen.record if seen else None

    def _why_stale(self, seen: _Seen) -> str | None:
        rec = seen.record
        if rec.get("released"):
            return "released"
        try:
            pid = int(rec.get("pid", -1))
        except (TypeError, ValueError):
            pid = -1
        if rec.get("host") == self.me["host"] and not _pid_alive(pid):
            return f"its driver (pid {rec.get('pid')}) is gone"
        seen.age = self._io.age(seen)
        ttl = float(rec.get("ttl", self.ttl))
        if seen.age > ttl:
            return f"no heartbeat for {seen.age:.0f}s by the store's clock (ttl {ttl:.0f}s)"
        return None

    def stale(self, cur: dict | None = None) -> str | None:
        """Why the lease now in the store is stale, or None while it is live. (``cur`` is accepted
        for old callers; the store's own copy and modification time decide.)"""
        seen = self._io.read()
        return "there is none" if seen is None else self._why_stale(seen)

    # -- acquire / heartbeat / release -----------------------------------------------------
    def acquire(self) -> int:
        """Take the lease (a fresh one, a released one, or a stale one); -> its epoch.
        Raises ``LeaseHeld`` while another driver holds it."""
        if self._io.cas and not self._io.verify():
            log.error("the object store of %s ignores conditional writes (If-None-Match / If-Match): "
                      "one driver per output.dir is not guaranteed there", self.store.uri())
            self._io = _PlainLeaseIO(self.store.fs, self.store.path(self.NAME))
        for _ in range(5):
            seen = self._io.read()
            if seen is None:
                if self._take(1, self._io.create):
                    return self.epoch
                continue
            why = self._why_stale(seen)
            if why is None:
                rec = seen.record
                raise LeaseHeld(
                    f"{self.store.uri()} is in use by another driver (host {rec.get('host')}, pid {rec.get('pid')}, "
                    f"started {rec.get('started')}, heartbeat {seen.age:.0f}s ago). Two drivers must not write one "
                    f"output.dir: wait for that run to finish or stop it, or use another output.dir. A lease "
                    f"expires {float(rec.get('ttl', self.ttl)):.0f}s after its driver stops (at once on the same host).")
            if why != "released":
                log.warning("taking over the lease on %s (epoch %d, host %s, pid %s): %s", self.store.uri(),
                            _epoch(seen.record), seen.record.get("host"), seen.record.get("pid"), why)
            if self._take(max(_epoch(seen.record), 0) + 1, lambda d, t=seen.token: self._io.replace(d, t)):
                return self.epoch
        raise LeaseHeld(f"could not take the lease on {self.store.uri()}: other drivers keep taking it")

    def _take(self, epoch: int, put: Callable[[bytes], str | None]) -> bool:
        token = put(self._record(epoch, 0))
        if token is None:   # another driver came first, or our write landed and its answer was lost
            seen = self._io.read()
            if not (seen and self._mine(seen.record, epoch, 0)):
                return False
            token = seen.token
        with self._mu:
            self.epoch, self._seq, self._token = epoch, 0, token
            self.lost_reason = None
            self._lost.clear()
        log.info("holding the lease on %s (epoch %d)", self.store.uri(), epoch)
        return True

    def heartbeat(self) -> bool:
        """Rewrite the lease (a compare-and-swap on our last version). False, and ``lost``, once
        another driver has taken it over."""
        with self._mu:
            if self.epoch is None or self.lost:
                return False
            seq = self._seq + 1
            token = self._io.replace(self._record(self.epoch, seq), self._token)
            if token is None:
                seen = self._io.read()
                if not (seen and self._mine(seen.record, self.epoch, seq)):
                    self._mark_lost(seen)
                    return False
                token = seen.token
            self._seq, self._token = seq, token
            return True

    def _mark_lost(self, seen: _Seen | None):
        rec = seen.record if seen else {}
        self.lost_reason = ("the lease was deleted" if seen is None else
                            f"the lease was taken over by host {rec.get('host')} pid {rec.get('pid')} "
                            f"(epoch {_epoch(rec)}; this driver held epoch {self.epoch})")
        self._lost.set()
        log.error("%s: %s; this driver stops committing there", self.store.uri(), self.lost_reason)
        if self.on_lost:
            try:
                self.on_lost(self.lost_reason)
            except Exception:
                log.exception("lease on_lost callback failed")

    def _beat(self):
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self.heartbeat():
                    return
            except Exception as e:  # an unreachable store: keep trying; the run's own commits will notice
                log.warning("lease heartbeat on %s failed: %s: %s", self.store.uri(), type(e).__name__, e)

    def release(self):
        """Mark the lease released (a compare-and-swap: only while still ours); this driver's fenced
        stores refuse further commits."""
        self._stop.set()
        with self._mu:
            if self.epoch is None or self.lost:
                return
            try:
                self._io.replace(self._record(self.epoch, self._seq + 1, released=True), self._token)
            except Exception as e:
                log.warning("could not release the lease on %s: %s: %s", self.store.uri(), type(e).__name__, e)
            self.lost_reason = "the lease was released"
            self._lost.set()
