"""Bad input at the door: checks that need the opened data source (or the Ray cluster), run
before anything is encoded or written, each refusing with one message that names the problem and
the fix (a user error: exit 2).

- ``door_checks(job, source)`` (called by ``preflight``): output.dir and data.root must not
  contain each other; every selected class has train images, and as many as the coreset needs
  (``generate.ipc`` distinct latents per class: every method but plain ``dit``); the evaluation's
  weight files (soft-label teacher, metrics classifier) are readable, and the ImageNet family's FID
  Inception-v3 weights are in place (``check_inception_weights``).
- ``check_cluster_output(job)`` (call it once the driver has attached to Ray, before writing): a
  local ``output.dir`` is refused on a cluster whose nodes span several machines, unless the path
  is on a shared (network) filesystem. ``check_output_shared`` is the rule itself, on a node list.

Checks of the job file alone (duplicate seeds, an empty output.dir, alias bombs, an empty file)
are validators in ``mgd_ray.config``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from ..config import JobConfig, JobError
from ..data import DataError

# filesystem types (as /proc/mounts names them) that every node of a cluster can mount at one path
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "ceph", "cephfs", "glusterfs", "gpfs",
                        "beegfs", "9p", "virtiofs", "afs", "panfs", "wekafs", "orangefs", "ocfs2", "gfs2"})


def door_checks(job: JobConfig, source) -> None:
    """Every data-dependent refusal, cheapest first; raises JobError / DataError / ModelError."""
    check_output_location(job)
    check_class_sizes(job, source)
    check_eval_weights(job)
    check_hub_teacher(job, source)
    check_inception_weights(job)


# ---- output.dir vs the data ----------------------------------------------------------------
def _endpoint(storage_options: dict | None) -> str:
    so = storage_options or {}
    return str(so.get("endpoint_url") or (so.get("client_kwargs") or {}).get("endpoint_url") or "")


def location(url: str, storage_options: dict | None = None) -> tuple[str, tuple[str, ...]]:
    """(store, path parts) of a local path or a URL, comparable between data.root and output.dir:
    local paths resolved (``~``, ``..``, symlinks), URLs by scheme + endpoint + bucket/key parts."""
    if "://" in url and not url.startswith("file://"):
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{_endpoint(storage_options)}", tuple(p for p in rest.split("/") if p)
    path = url[len("file://"):] if url.startswith("file://") else url
    return "local", Path(os.path.realpath(os.path.expanduser(path))).parts


def data_tree(job: JobConfig) -> str | None:
    """The directory (or URL prefix) the data source reads under, for the sources that read one
    (imagefolder, parquet); a parquet root with ``{split}`` reads under the directory before it."""
    root = job.data.root
    if job.data.source not in ("imagefolder", "parquet") or not root:
        return None
    if "{split}" in root:
        head = root.split("{split}", 1)[0]
        root = head.rstrip("/") if head.endswith("/") else head.rsplit("/", 1)[0]
        root = root or "/"
    return root


def check_output_location(job: JobConfig) -> None:
    """output.dir must not be data.root, lie inside it, or contain it."""
    tree = data_tree(job)
    if tree is None:
        return
    out = job.output.dir
    o_store, o_parts = location(out, job.output.storage_options)
    d_store, d_parts = location(tree, job.data.storage_options)
    if o_store != d_store:
        return
    elsewhere = f"--set output.dir=out/{job.name} (any directory outside {tree})"
    if o_parts == d_parts:
        raise JobError(f"output.dir {out!r} is the data source's own directory (data.root {job.data.root!r}): "
                       f"the job's Parquet shards and PNG previews would land among the {job.data.source} data, "
                       f"and the next run would read them as data. Give the outputs a directory of their own: "
                       f"{elsewhere}")
    if o_parts[:len(d_parts)] == d_parts:
        raise JobError(f"output.dir {out!r} lies inside the data source's tree (data.root {job.data.root!r}): "
                       f"the job's Parquet shards and PNG previews would land among the {job.data.source} data, "
                       f"and the next run would read them as data. Put output.dir outside it: {elsewhere}")
    if d_parts[:len(o_parts)] == o_parts:
        raise JobError(f"data.root {job.data.root!r} lies inside output.dir {out!r}: the job's own outputs "
                       f"(and what --fresh discards) would share one tree with its input data. Move the data out "
                       f"of {out}, or choose another output.dir, e.g. --set output.dir=out/{job.name}")


# ---- class sizes ---------------------------------------------------------------------------
def _class_counts(source) -> dict[str, int]:
    if hasattr(source, "class_counts"):
        return source.class_counts("train")
    import numpy as np
    labels = source.select("train")[2]
    counts = np.bincount(labels, minlength=len(source.classes))
    return {n: int(c) for n, c in zip(source.classes.names, counts)}


def _listing(counts: dict[str, int], limit: int = 8) -> str:
    items = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))
    shown = ", ".join(f"{n!r} has {c}" for n, c in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_class_sizes(job: JobConfig, source) -> None:
    """Every selected class needs train images; every method with a coreset (all but plain dit)
    needs at least ``generate.ipc`` of them per class: each of the ipc targets (or real images)
    comes from a distinct latent of the class (``method.coreset.build_coreset``), and a class
    with fewer was found only after the whole encode, on every rerun."""
    counts = _class_counts(source)
    empty = {n: c for n, c in counts.items() if c == 0}
    if empty:
        raise DataError(f"{len(empty)} selected class(es) have no train images in data source "
                        f"{job.data.source!r}: {', '.join(repr(n) for n in list(empty)[:10])}"
                        f"{' ...' if len(empty) > 10 else ''}; a class without images has nothing to distil. "
                        f"Add their images, or leave them out with data.classes")
    method = job.coreset_method
    if method is None:      # plain DiT samples from noise: the class's images are not selected from
        return
    ipc = job.generate.ipc
    short = {n: c for n, c in counts.items() if c < ipc}
    if not short:
        return
    if job.generative:
        need = (f"{job.method} builds {ipc} coreset targets per class ({method}), each from at least one "
                f"distinct latent of that class")
    else:
        need = f"{job.method} selects {ipc} distinct real images per class ({method} coreset)"
    fits = min(counts.values())
    limit = job.data.limit_per_class
    more = (f", or raise data.limit_per_class (now {limit})" if limit is not None and limit < ipc
            else ", or add images to those classes")
    raise DataError(f"generate.ipc={ipc} does not fit the data: {need}, but {len(short)} class(es) have fewer "
                    f"train images ({_listing(short)}). Lower the IPC to at most {fits} (--set "
                    f"generate.ipc={fits}), leave those classes out with data.classes{more}. "
                    f"Nothing was encoded")


# ---- evaluation weights --------------------------------------------------------------------
def check_eval_weights(job: JobConfig) -> None:
    """The soft-label teachers and the metrics classifier are read after hours of generation; a
    damaged weights file among them is refused now (``models.check_safetensors``)."""
    if not job.evaluate.enabled:
        return
    from ..models import ModelError, check_safetensors, resolve_model_path
    protocols = job.evaluate.protocols
    dirs = [p.teacher for p in protocols if p.protocol == "soft-label" and p.teacher]
    if job.evaluate.classifier:
        dirs.append(job.evaluate.classifier)
    try:
        path, local = resolve_model_path(job.model.generator)
    except ModelError:
        path, local = "", False          # preflight's model loading says what is wrong with it
    if local and (job.evaluate.metrics or any(p.protocol == "soft-label" and not p.teacher for p in protocols)):
        dirs.append(str(Path(path) / "classifier"))
    for d in dict.fromkeys(dirs):
        check_safetensors(d)


def check_hub_teacher(job: JobConfig, source=None) -> None:
    """soft-label-imagenet: each such protocol's teacher (``teacher`` = ``hub:ORG/NAME``) must be in the
    local hub cache, readable (``models.check_safetensors``), and the job's classes must be ImageNet-1K
    wnids (the teacher's classes). Reads the cache only; nothing is downloaded. TeacherNotFetched names
    the fetch command."""
    ev = job.evaluate
    teachers = [p.teacher for p in ev.protocols if p.protocol == "soft-label-imagenet"] if ev.enabled else []
    if not teachers:
        return
    from ..models import check_safetensors
    from ..teachers import teacher_weights_path
    for t in dict.fromkeys(teachers):
        check_safetensors(teacher_weights_path(t).parent)
    if source is not None:
        from ..teachers import imagenet_index
        imagenet_index(list(source.classes.names))


def check_inception_weights(job: JobConfig) -> None:
    """Distribution metrics in Inception-v3 features (the ImageNet family, ``mgd_ray.inception.uses_inception``):
    the FID weights must be where ``mgd-ray models fetch`` puts them and be the pinned file (sha256) or a
    declared stand-in. Reads the local file only; InceptionNotFetched names the fetch command."""
    from ..inception import check_weights, uses_inception
    if uses_inception(job):
        check_weights()


# ---- a local output.dir on a multi-machine cluster ------------------------------------------
def _unescape_mount(s: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    import re
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def fs_type(path: str, mounts: str | None = None) -> str:
    """The filesystem type of ``path`` (its nearest existing ancestor): the longest mount point
    that contains it in ``mounts`` (the text of /proc/mounts; read when None). '' when unknown."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return ""
    p = os.path.realpath(os.path.expanduser(path))
    best, kind = "", ""
    for line in mounts.splitlines():
        f = line.split()
        if len(f) < 3:
            continue
        mp = _unescape_mount(f[1])
        inside = p == mp or p.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= len(best):
            best, kind = mp, f[2]
    return kind


def is_shared_fs(kind: str) -> bool:
    return kind in NETWORK_FS or (kind.startswith("fuse.") and kind not in ("fuse.portal", "fuse.lxcfs"))


def _host(node: dict) -> str:
    return str(node.get("NodeManagerAddress") or node.get("NodeManagerHostname") or node.get("NodeID") or "?")


def check_output_shared(output_dir: str, nodes: Iterable[dict[str, Any]], mounts: str | None = None) -> None:
    """Refuse a local ``output.dir`` when the alive Ray ``nodes`` (``ray.nodes()`` entries) run on
    more than one machine and the path is not on a network filesystem: the workers elsewhere would
    write latents and shards to their own disks, where the driver and the next stage never see them.
    Several nodes on one machine (a local multi-raylet cluster) share its disk and pass."""
    if "://" in output_dir and not output_dir.startswith("file://"):
        return                                        # object storage: every node reaches it
    alive = [n for n in nodes if n.get("Alive", n.get("alive", True))]
    hosts = sorted({_host(n) for n in alive})
    if len(hosts) <= 1:
        return
    path = output_dir[len("file://"):] if output_dir.startswith("file://") else output_dir
    kind = fs_type(path, mounts)
    if is_shared_fs(kind):
        return
    raise JobError(
        f"output.dir {output_dir!r} is a local path, but the Ray cluster this job runs on has {len(alive)} alive "
        f"nodes on {len(hosts)} machines ({', '.join(hosts[:4])}{' ...' if len(hosts) > 4 else ''}): workers on "
        f"the other machines would write latents and shards to their own disks, out of the driver's sight. Use "
        f"object storage, --set output.dir=s3://bucket/prefix (output.storage_options for the endpoint and "
        f"credentials), or a filesystem mounted at the same path on every node (NFS, Lustre, CephFS, ...; this "
        f"path is on {('a ' + repr(kind)) if kind else 'an unknown'} filesystem, not a network one)")


def check_cluster_output(job: JobConfig) -> None:
    """``check_output_shared`` on the cluster the driver is attached to (nothing when Ray is not
    initialised). Call it right after ``ray.init``, before the first write under output.dir."""
    import ray
    if not ray.is_initialized():
        return
    check_output_shared(job.output.dir, ray.nodes())
