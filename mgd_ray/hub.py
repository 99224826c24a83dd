"""What a job needs from the Hugging Face Hub, fetching it, and proving the fetch (``mgd-ray models fetch``).

:func:`required_models` derives from a job the hub repos it loads and, per repo, the file patterns
its loader opens. The parts come from :func:`mgd_ray.models.generator_parts` (the function
``load_generator`` itself uses: the generator's ``transformer/``; ``model.vae`` at its root, or the
generator's ``vae/`` when ``model.vae`` is unset) and the file names from diffusers' own constants
(``config.json``; ``diffusion_pytorch_model.safetensors``, or its ``.index.json`` and shards). Only
safetensors: pickled ``.bin`` weights are never fetched. For ``facebook/DiT-XL-2-256`` +
``stabilityai/sd-vae-ft-mse`` that is ``transformer/config.json`` + the transformer's safetensors,
and the VAE repo's root ``config.json`` + safetensors; nothing else (the DiT repo's ``vae/``,
``scheduler/`` and ``model_index.json`` are never read: the product builds its own scheduler).
Priors (``prior:<name>``) and local directories (also ``evaluate.teacher`` / ``evaluate.classifier``,
which are local directories by contract) need no fetch and are listed as such.

:func:`fetch_models` downloads with ``huggingface_hub.snapshot_download(repo_id, revision=...,
allow_patterns=[...])`` and then proves the result in a fresh subprocess that runs with
``HF_HUB_OFFLINE=1`` and with outgoing internet connections blocked: it resolves each repo's
snapshot from the cache (``refs/<revision>`` -> ``snapshots/<commit>``), lists every file the
patterns select with its size and sha256, compares them with the hub's file listing where the cache
holds one (LFS files by sha256, small files by git blob id), checks the files the loader needs are
all there, and loads each job's models with ``mgd_ray.models.load_generator(allow_download=False)``.
Anything missing or different: :class:`FetchError` (the CLI exits 2) naming the file and the fix.

One file a job may load is not a hub repo: the FID Inception-v3 weights of an ImageNet-family job with
distribution metrics (``plan``'s ``files``: torch-fidelity's release file, pinned URL + size + sha256,
``mgd_ray/inception.py``). The fetch downloads it to torch.hub's checkpoints directory (kept when the pinned
file is already there); the offline check verifies its size and sha256 and loads it into torch-fidelity's
network with network use blocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .models import ModelError, diffusers_files

DEFAULT_REVISION = "main"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class FetchError(ModelError):
    """A model the job needs is missing, differs from the hub, or does not load after the fetch."""


# ---- what a job needs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Component:
    """One model loaded from a hub repo: ``role`` (transformer, vae, ...) in ``subfolder``, and the
    names of the files its loader opens (:func:`diffusers_files`, filled in by :meth:`diffusers`)."""

    role: str
    subfolder: str | None
    file_names: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @classmethod
    def diffusers(cls, role: str, subfolder: str | None) -> "Component":
        return cls(role, subfolder, tuple(diffusers_files(subfolder).items()))

    @classmethod
    def teacher(cls, role: str) -> "Component":
        """The soft-label-imagenet teacher: ``model.safetensors`` (torchvision's key names) + ``config.json``
        at the repo root, loaded into ``torchvision.models.resnet18`` (``mgd_ray/teachers.py``)."""
        from .teachers import TEACHER_CONFIG, TEACHER_WEIGHTS
        return cls(role, None, (("config", TEACHER_CONFIG), ("weights", TEACHER_WEIGHTS)))

    @property
    def files(self) -> dict[str, str]:
        return dict(self.file_names)

    @property
    def allow_patterns(self) -> tuple[str, ...]:
        return tuple(self.files.values())


@dataclass(frozen=True)
class HubModel:
    """A hub repo a job loads: the revision and the components read from it."""

    repo_id: str
    revision: str = DEFAULT_REVISION
    components: tuple[Component, ...] = ()

    @property
    def allow_patterns(self) -> list[str]:
        return sorted({p for c in self.components for p in c.allow_patterns})

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "revision": self.revision, "allow_patterns": self.allow_patterns,
                "components": [{"role": c.role, "subfolder": c.subfolder, "files": c.files} for c in self.components]}

    @classmethod
    def from_dict(cls, d: dict) -> "HubModel":
        return cls(d["repo_id"], d["revision"], tuple(
            Component(c["role"], c["subfolder"], tuple(c["files"].items())) for c in d["components"]))


@dataclass(frozen=True)
class LocalModel:
    """A model the job uses that needs no fetch: a shipped prior or a local directory."""

    role: str
    spec: str
    path: str


def _is_hub_id(spec: str) -> bool:
    """Not a prior or an existing directory, and shaped like a repo id (``org/name``): a relative
    path such as ``out/twin/models`` that does not exist yet is a local directory, not a repo."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .models import resolve_model_path
    if resolve_model_path(spec)[1]:
        return False
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


TEACHER_ROLE = "soft-label-imagenet teacher"


def _hub_teachers(job) -> list[str]:
    """The job's hub teachers (``teacher`` = ``hub:ORG/NAME[@REV]`` of each soft-label-imagenet
    protocol, ``evaluate`` and ``evaluate.also``) when its evaluation runs."""
    from .teachers import is_hub_teacher
    if not job.evaluate.enabled:
        return []
    out = [p.teacher for p in job.evaluate.protocols
           if p.protocol == "soft-label-imagenet" and is_hub_teacher(p.teacher)]
    return list(dict.fromkeys(out))


def _job_parts(job) -> list[tuple[str, str, str | None]]:
    """(role, spec, subfolder) of every model the job loads: the generator's parts, each
    soft-label-imagenet teacher (a hub repo: ``TEACHER_ROLE``, spec ``ORG/NAME@REV``); a soft-label
    protocol's ``teacher`` and ``evaluate.classifier`` are local directories (their loaders take nothing else)."""
    from .models import generator_parts
    from .teachers import parse_teacher
    parts = [(f"generator {role}", spec, sub) for role, spec, sub in
             generator_parts(job.model.generator, job.model.vae)]
    ev = job.evaluate
    for t in _hub_teachers(job):
        repo, rev = parse_teacher(t)
        parts.append((TEACHER_ROLE, f"{repo}@{rev}", None))
    for p in ev.protocols if ev.enabled else []:
        if p.protocol == "soft-label" and p.teacher:
            parts.append(("soft-label teacher (local directory)", p.teacher, None))
    if ev.enabled and ev.classifier:
        parts.append(("feature classifier (local directory)", ev.classifier, None))
    return parts


def required_models(job, revision: str = DEFAULT_REVISION) -> list[HubModel]:
    """The hub repos ``job`` loads, each with the patterns of exactly the files its loader opens."""
    by_repo: dict[tuple[str, str], list[Component]] = {}
    for role, spec, sub in _job_parts(job):
        if role == TEACHER_ROLE:
            repo, _, rev = spec.partition("@")
            by_repo.setdefault((repo, rev), []).append(Component.teacher("teacher"))
            continue
        if role.endswith("(local directory)") or not _is_hub_id(spec):
            continue
        comps = by_repo.setdefault((spec, revision), [])
        c = Component.diffusers(role.removeprefix("generator "), sub)
        if c not in comps:
            comps.append(c)
    return [HubModel(repo, rev, tuple(comps)) for (repo, rev), comps in by_repo.items()]


def local_models(job) -> list[LocalModel]:
    """What the job loads from the package or local disk (nothing to fetch), one entry per path."""
    from .models import resolve_model_path
    out: dict[str, LocalModel] = {}
    for role, spec, _ in _job_parts(job):
        if role == TEACHER_ROLE:
            continue
        if role.endswith("(local directory)"):
            path = str(Path(os.path.expanduser(spec)))
        elif not _is_hub_id(spec):
            path = resolve_model_path(spec)[0] if spec.startswith("prior:") else str(Path(os.path.expanduser(spec)))
        else:
            continue
        prev = out.get(path)
        out[path] = LocalModel(role if prev is None else f"{prev.role}, {role}", spec, path)
    return list(out.values())


def merge(models: Iterable[HubModel]) -> list[HubModel]:
    """One entry per (repo, revision), components united (several jobs fetched at once)."""
    acc: dict[tuple[str, str], list[Component]] = {}
    for m in models:
        comps = acc.setdefault((m.repo_id, m.revision), [])
        comps.extend(c for c in m.components if c not in comps)
    return [HubModel(r, rev, tuple(c)) for (r, rev), c in acc.items()]


def hub_cache_dir() -> str:
    """The hub cache this process's huggingface_hub would use, read from the environment now
    (the library reads it once at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def plan(jobs) -> dict:
    """What ``fetch`` would do (``--dry-run``): no network, nothing written."""
    hub = merge(m for j in jobs for m in required_models(j))
    local = list(dict.fromkeys(lm for j in jobs for lm in local_models(j)))
    return {"cache_dir": hub_cache_dir(), "fetch": [m.to_dict() for m in hub],
            "local": [{"role": lm.role, "spec": lm.spec, "path": lm.path, "exists": Path(lm.path).exists()}
                      for lm in local],
            "check_loads": _loads(jobs),
            "check_teachers": sorted({t for j in jobs for t in _hub_teachers(j)}),
            "files": _files(jobs)}


def _files(jobs) -> list[dict]:
    """Files the jobs load that are not hub repos, each a pinned URL + sha256: the FID Inception-v3 weights
    of an ImageNet-family job with distribution metrics (``mgd_ray/inception.py``)."""
    from .inception import file_entry, uses_inception
    return [file_entry()] if any(uses_inception(j) for j in jobs) else []


def _loads(jobs) -> list[dict]:
    return list({(j.model.generator, j.model.vae, j.model.dtype): {
        "generator": j.model.generator, "vae": j.model.vae, "dtype": j.model.dtype} for j in jobs}.values())


# ---- fetch, then prove it offline ---------------------------------------------------------------
def fetch_models(jobs, *, download: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Download what ``jobs`` need into the hub cache (and the pinned files of ``plan``'s ``files``, the FID
    Inception weights, to their paths), then check it offline in a subprocess (files, sizes, sha256, the hub
    listing, a load through ``load_generator``; the files' pinned sha256 and a load). Returns the check's
    report; raises :class:`FetchError` when something is missing, differs, or does not load."""
    p = plan(jobs)
    cache = p["cache_dir"]
    errors: dict[str, str] = {}
    for m in p["fetch"]:
        name = f"{m['repo_id']}@{m['revision']}"
        echo(f"{'fetch' if download else 'check'} {name}: {', '.join(m['allow_patterns'])}")
        if not download:
            continue
        try:
            from huggingface_hub import snapshot_download
            snapshot_download(m["repo_id"], revision=m["revision"], allow_patterns=m["allow_patterns"],
                              cache_dir=cache)
        except Exception as e:  # noqa: BLE001 - reported; the offline check below decides
            errors[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:500] if str(e).strip() else ''}"
            echo(f"  download did not complete ({errors[name]}); checking what the cache holds")
    for f in p.get("files", []):
        echo(f"{'fetch' if download else 'check'} {f['role']}: {f['url']} -> {f['path']} (sha256 {f['sha256']})")
        if not download:
            continue
        try:
            from .inception import download as download_file
            echo(f"  {download_file(f, echo=echo)}")
        except Exception as e:  # noqa: BLE001 - reported; the offline check below decides
            errors[f["path"]] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:500] if str(e).strip() else ''}"
            echo(f"  download did not complete ({errors[f['path']]}); checking what is on disk")
    for lm in p["local"]:
        echo(f"local {lm['role']}: {lm['spec']} ({lm['path']}{'' if lm['exists'] else ', not on this machine'})")
    report = _run_check(p, cache, echo)
    if report.get("problems"):
        hint = ("" if not errors else " Download errors: " + "; ".join(f"{k}: {v}" for k, v in errors.items()) + ".")
        raise FetchError(
            "after the fetch, the Hugging Face cache " + cache + " does not hold what the job loads:\n  "
            + "\n  ".join(report["problems"]) + "\n" + hint.strip()
            + "\nFix: rerun `mgd-ray models fetch JOB.yaml` where huggingface.co is reachable (HF_HUB_OFFLINE unset; "
              "HF_TOKEN set for gated repos), or point model.generator / model.vae at local directories in the "
              "diffusers layout. Only safetensors weights are fetched; a repo that has only pickled .bin weights "
              "needs a converted copy."
            + "".join(f"\nThe {f['role']} come from {f['url']}: rerun where github.com is reachable, or copy that "
                      f"file (sha256 {f['sha256']}) to {f['path']} (TORCH_HOME moves it)." for f in p.get("files", [])))
    report["download_errors"] = errors
    return report


def _run_check(p: dict, cache: str, echo) -> dict:
    here = str(Path(__file__).resolve().parents[1])   # the child checks with this very code
    path = [here] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=cache, HF_HUB_DISABLE_TELEMETRY="1",
               DIFFUSERS_VERBOSITY="error", PYTHONPATH=os.pathsep.join(path))
    with tempfile.TemporaryDirectory(prefix="mgd-ray-fetch-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "report.json"
        spec.write_text(json.dumps(p))
        proc = subprocess.Popen([sys.executable, "-m", "mgd_ray.hub", str(spec), str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            echo(line.rstrip("\n"))
        rc = proc.wait()
        report = json.loads(out.read_text()) if out.is_file() else {}
    if rc not in (0, 2) or not report:
        raise RuntimeError(f"the offline model check ended with exit status {rc} and no report (see its output above)")
    return report


# ---- the offline check (runs as `python -m mgd_ray.hub SPEC REPORT`, HF_HUB_OFFLINE=1) ----------
def _block_network():
    """Refuse every outgoing internet connection in this process: offline means offline."""
    import socket

    def refuse(self, address, *a, **k):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network use during the offline model check (to {address!r})")
        return _connect(self, address, *a, **k)

    _connect = socket.socket.connect
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse


def _sha256(path: Path) -> str:
    from .models import hash_file
    return hash_file(path).hexdigest()


def _git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _commit_of(storage: Path, revision: str) -> str | None:
    if _COMMIT.match(revision):
        return revision
    ref = storage / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else None


def check_repo(m: HubModel, cache: str) -> dict:
    """Files, sizes and hashes of one repo's cached snapshot, and what is missing or differs."""
    from huggingface_hub.utils import filter_repo_objects
    storage = Path(cache) / f"models--{m.repo_id.replace('/', '--')}"
    rec = {"repo_id": m.repo_id, "revision": m.revision, "commit": None, "snapshot": None, "files": [], "missing": [],
           "hub_listing": False, "problems": []}
    commit = _commit_of(storage, m.revision)
    snap = storage / "snapshots" / commit if commit else None
    if snap is None or not snap.is_dir():
        rec["problems"].append(f"{m.repo_id}@{m.revision}: not in the cache (no {storage / 'refs' / m.revision}"
                               f"{'' if commit is None else ' snapshot ' + commit})")
        return rec
    rec.update(commit=commit, snapshot=str(snap))
    present = sorted(str(f.relative_to(snap)) for f in snap.rglob("*") if f.is_file())
    selected = list(filter_repo_objects(present, allow_patterns=m.allow_patterns))
    listing = _hub_listing(storage, commit)
    rec["hub_listing"] = listing is not None
    for name in selected:
        f = snap / name
        entry = {"path": name, "size": f.stat().st_size, "sha256": _sha256(f)}
        hub = (listing or {}).get(name)
        if hub is not None:
            if hub.lfs_sha256 is not None:      # an LFS file: the hub's sha256 of the content
                entry["hub_sha256"] = hub.lfs_sha256
                ok = hub.lfs_sha256 == entry["sha256"] and hub.lfs_size in (None, entry["size"])
            else:                               # a small file kept in git: its blob id
                entry["hub_blob_id"] = hub.blob_id
                ok = hub.blob_id == _git_blob_id(f)
            entry["matches_hub"] = ok
            if not ok:
                rec["problems"].append(f"{m.repo_id}@{commit[:12]}: {name} differs from the hub's file listing "
                                       f"(sha256 {entry['sha256']}); delete it from the cache and fetch again")
        rec["files"].append(entry)
    missing: dict[str, str] = {}
    for c in m.components:          # what the loader opens
        need = [c.files["config"]]
        if c.files.get("index") and c.files["index"] in present:
            idx = json.loads((snap / c.files["index"]).read_text())
            prefix = f"{c.subfolder}/" if c.subfolder else ""
            need += sorted({prefix + s for s in idx.get("weight_map", {}).values()})
        else:
            need.append(c.files["weights"])
        for name in need:
            if name not in present:
                missing[name] = f"the {c.role}'s {'config' if name.endswith('.json') else 'safetensors weights'}"
    if listing is not None:   # the hub said these exist at this commit: each must be here too
        for name in filter_repo_objects(sorted(listing), allow_patterns=m.allow_patterns):
            if name not in present:
                missing.setdefault(name, "listed on the hub at this commit")
    rec["missing"] = sorted(missing)
    rec["problems"] += [f"{m.repo_id}@{commit[:12]}: missing {name} ({why})" for name, why in sorted(missing.items())]
    return rec


def _hub_listing(storage: Path, commit: str) -> dict | None:
    """The hub's file listing at ``commit`` as snapshot_download cached it (``trees/<commit>.json``:
    size, git blob id, LFS sha256 per file), else None (an older client, or a hand-made cache).
    huggingface_hub's public ``get_cached_repo_tree`` drops the LFS sha256, hence its reader."""
    try:
        from huggingface_hub._tree_cache import read_tree_cache
        return read_tree_cache(str(storage), commit)
    except Exception:  # noqa: BLE001 - no listing to compare with
        return None


def _check_file(f: dict, report: dict) -> list[str]:
    """One pinned file (``plan``'s ``files``): present, of the pinned size and sha256."""
    path = Path(f["path"])
    rec = {"path": str(path), "url": f["url"], "expected_sha256": f["sha256"], "present": path.is_file()}
    report.setdefault("files", []).append(rec)
    if not path.is_file():
        return [f"{f['role']}: missing {path} (from {f['url']})"]
    rec.update(size=path.stat().st_size, sha256=_sha256(path))
    ok = rec["size"] == f["size"] and rec["sha256"] == f["sha256"]
    print(f"{f['role']}: {path}  {rec['size']:>15,} B  sha256 {rec['sha256']}{'  = pinned' if ok else '  != PINNED'}")
    if not ok:
        return [f"{f['role']}: {path} is not the pinned file (sha256 {rec['sha256']}, {rec['size']:,} B; expected "
                f"{f['sha256']}, {f['size']:,} B); delete it and fetch again"]
    return []


def _check_main(spec_path: str, report_path: str) -> int:
    import warnings
    _block_network()
    # diffusers' own hub calls pass an argument huggingface_hub 2.x deprecates: noise, not ours to fix
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
    from huggingface_hub import constants
    p = json.loads(Path(spec_path).read_text())
    report = {"offline": constants.HF_HUB_OFFLINE, "cache_dir": p["cache_dir"], "repos": [], "loads": [],
              "problems": []}

    def done(code):
        Path(report_path).write_text(json.dumps(report, indent=1))
        return code

    if not constants.HF_HUB_OFFLINE:
        report["problems"].append("the check did not run offline (HF_HUB_OFFLINE is not set for it)")
        return done(2)
    print(f"offline check (HF_HUB_OFFLINE=1, no network) of the cache {p['cache_dir']}")
    for d in p["fetch"]:
        rec = check_repo(HubModel.from_dict(d), p["cache_dir"])
        report["repos"].append(rec)
        report["problems"] += rec["problems"]
        if rec["commit"]:
            print(f"{rec['repo_id']}@{rec['revision']} = commit {rec['commit']}  ({rec['snapshot']})")
        for f in rec["files"]:
            hub = {True: "  = hub listing", False: "  != HUB LISTING"}.get(f.get("matches_hub"), "")
            print(f"  {f['path']:<58} {f['size']:>15,} B  sha256 {f['sha256']}{hub}")
    for f in p.get("files", []):
        report["problems"] += _check_file(f, report)
    if report["problems"]:
        for prob in report["problems"]:
            print(f"PROBLEM: {prob}")
        return done(2)
    from .models import load_generator
    for ld in p["check_loads"]:
        name = ld["generator"] + (f" + {ld['vae']}" if ld["vae"] else "")
        try:
            tr, vae, info = load_generator(ld["generator"], ld["vae"], allow_download=False, dtype=ld["dtype"],
                                           device="cpu")
        except ModelError as e:
            report["problems"].append(f"{name}: does not load offline: {e}")
            print(f"PROBLEM: {report['problems'][-1]}")
            return done(2)
        n_t, n_v = (sum(x.numel() for x in m.parameters()) for m in (tr, vae))
        rec = {"models": name, "dtype": ld["dtype"], "transformer": type(tr).__name__, "vae": type(vae).__name__,
               "transformer_params": n_t, "vae_params": n_v, **info.to_dict()}
        report["loads"].append(rec)
        print(f"loaded offline with mgd_ray.models.load_generator: {name} ({ld['dtype']}): {rec['transformer']} "
              f"{n_t:,} params, {info.num_classes} classes, latent {info.latent_channels}x{info.latent_size}x"
              f"{info.latent_size}; {rec['vae']} {n_v:,} params, image {info.image_size} px, scaling factor "
              f"{info.scaling_factor}; weights sha256[:16] transformer {info.transformer_sha256}, "
              f"vae {info.vae_sha256}")
        del tr, vae
    for spec in p.get("check_teachers", []):
        from .eval.soft_label_imagenet import load_teacher
        from .teachers import TEACHER_ARCH, TEACHER_CLASSES, teacher_weights_path
        try:
            weights = teacher_weights_path(spec)
            net = load_teacher(spec)
        except (OSError, ValueError) as e:
            report["problems"].append(f"{spec}: does not load offline: {e}")
            print(f"PROBLEM: {report['problems'][-1]}")
            return done(2)
        n = sum(x.numel() for x in net.parameters())
        rec = {"teacher": spec, "architecture": f"torchvision.models.{TEACHER_ARCH}", "strict": True,
               "num_classes": int(net.fc.out_features), "params": n, "weights_sha256": _sha256(weights)[:16]}
        report["loads"].append(rec)
        print(f"loaded offline into torchvision.models.{TEACHER_ARCH} (strict): {spec}, {n:,} params, "
              f"{rec['num_classes']} classes (expected {TEACHER_CLASSES}); weights sha256[:16] {rec['weights_sha256']}")
        del net
    for f in p.get("files", []):
        try:
            from .eval.inception import load_inception
            net = load_inception(f["path"], pinned=f["sha256"])
        except Exception as e:  # noqa: BLE001 - an unpicklable or mismatched file: reported, exit 2
            report["problems"].append(f"{f['path']}: does not load offline: {e}")
            print(f"PROBLEM: {report['problems'][-1]}")
            return done(2)
        n = sum(x.numel() for x in net.parameters())
        rec = {"file": f["path"], "architecture": "torch_fidelity FeatureExtractorInceptionV3", "strict": True,
               "params": n, "weights_sha256": net.weights["sha256"][:16]}
        report["loads"].append(rec)
        print(f"loaded offline into torch_fidelity's FeatureExtractorInceptionV3 (strict, torch.load weights_only): "
              f"{f['path']}, {n:,} params; weights sha256[:16] {rec['weights_sha256']}")
        del net
    return done(0)


if __name__ == "__main__":
    sys.exit(_check_main(*sys.argv[1:3]))
