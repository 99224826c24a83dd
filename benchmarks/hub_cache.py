"""A Hugging Face hub cache written by hand, laid out as ``huggingface_hub`` writes it, so
``from_pretrained(repo_id, local_files_only=True)`` and ``HF_HUB_OFFLINE=1`` read it and nothing is
downloaded:

    HUB/models--ORG--NAME/refs/main                       the commit (one line)
    HUB/models--ORG--NAME/blobs/<sha256 | git blob id>    the file bytes (LFS files: sha256)
    HUB/models--ORG--NAME/snapshots/<commit>/<path>       -> a relative link to the blob
    HUB/models--ORG--NAME/trees/<commit>.json             the hub's file listing (optional)

File contents are given as bytes or as paths; paths are streamed (hashed and moved in 1 MiB
chunks, never read whole), so a 3 GB DiT-XL/2 checkpoint costs no memory. Used by the full-size
twin (``benchmarks/fullsize_twin.py``) and by the tests that need a hub cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin")


def _chunks(data: bytes | Path):
    if isinstance(data, (bytes, bytearray)):
        yield bytes(data)
        return
    with open(data, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            yield chunk


def _size(data: bytes | Path) -> int:
    return len(data) if isinstance(data, (bytes, bytearray)) else Path(data).stat().st_size


def hashes_of(data: bytes | Path) -> tuple[str, str]:
    """(sha256, git blob id) in one pass: the hub names an LFS file by the first and lists every
    file's second."""
    h, g = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % _size(data))
    for c in _chunks(data):
        h.update(c)
        g.update(c)
    return h.hexdigest(), g.hexdigest()


def repo_files(src: Path) -> dict[str, Path]:
    """Every file under ``src`` as {relative path: path} (streamed by :func:`write_hub_repo`)."""
    src = Path(src)
    return {str(f.relative_to(src)): f for f in sorted(src.rglob("*")) if f.is_file()}


def write_hub_repo(hub: Path, repo_id: str, files: dict[str, bytes | Path], cached=None, listing: bool = True,
                   move: bool = False) -> str:
    """The cache after ``snapshot_download(repo_id, allow_patterns=...)`` fetched ``cached`` (default:
    every file) of a repo holding ``files``; with ``listing`` also the hub's tree listing of all
    ``files``. ``move``: move path-given files into the blobs (same filesystem) instead of copying.
    Returns the commit: derived from the repo id and the files' sha256, so the same files give the
    same commit."""
    hub = Path(hub)
    storage = hub / f"models--{repo_id.replace('/', '--')}"
    both = {rel: hashes_of(data) for rel, data in files.items()}
    sha, gblob = {k: v[0] for k, v in both.items()}, {k: v[1] for k, v in both.items()}
    commit = hashlib.sha1((repo_id + "".join(sha[k] for k in files)).encode()).hexdigest()
    lfs = {k for k in files if k.endswith(LFS_SUFFIXES)}
    blob_id = {rel: sha[rel] if rel in lfs else gblob[rel] for rel in files}
    sizes = {rel: _size(data) for rel, data in files.items()}
    for rel in (files if cached is None else cached):
        data = files[rel]
        blob = storage / "blobs" / blob_id[rel]
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            if isinstance(data, (bytes, bytearray)):
                blob.write_bytes(data)
            elif move:
                shutil.move(str(data), blob)
            else:
                shutil.copyfile(data, blob)
        link = storage / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    (storage / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    if listing:   # the library's own writer, so the format is the one it reads
        from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
        write_tree_cache(str(storage), commit, {
            rel: TreeCacheEntry(size=sizes[rel], blob_id=gblob[rel],
                                lfs_sha256=sha[rel] if rel in lfs else None,
                                lfs_size=sizes[rel] if rel in lfs else None) for rel in files})
    return commit


def write_hub_cache(hf_home: Path, repos: dict[str, Path], move: bool = False, listing: bool = True) -> dict[str, str]:
    """``{repo_id: folder in the repo's layout}`` -> ``HF_HOME/hub/models--...`` for each; returns
    ``{repo_id: snapshot folder}``. Point ``HF_HOME`` at ``hf_home`` (and set ``HF_HUB_OFFLINE=1``)
    and the repo ids load from here."""
    hub = Path(hf_home) / "hub"
    out = {}
    for repo_id, folder in repos.items():
        commit = write_hub_repo(hub, repo_id, repo_files(folder), move=move, listing=listing)
        out[repo_id] = str(hub / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit)
    return out
