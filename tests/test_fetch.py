"""``mgd-ray models fetch``: what a job needs from the hub, and the offline proof after the fetch.

The hub cache is written here exactly as huggingface_hub lays it out (``models--ORG--NAME/refs/main``
= a commit, ``blobs/<etag>``, ``snapshots/<commit>/<path>`` -> the blob, ``trees/<commit>.json`` the
hub's file listing) with tiny random models of the real classes under the real repo ids; the
DiT repo's transformer config carries the legacy ``_class_name: Transformer2DModel`` as the real
one does. Nothing is downloaded (HF_HUB_OFFLINE=1, see conftest)."""

import hashlib
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mgd_ray.config import load_job

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
DIT, VAE = "facebook/DiT-XL-2-256", "stabilityai/sd-vae-ft-mse"
TEACHER = "timm/resnet18.tv_in1k"      # the soft-label-imagenet teacher of jobs/imagenet1k.yaml
IMAGENET_JOBS = ["imagenet1k", "imagenette", "imagewoof", "imagenet100"]


# ---- a hub cache, laid out as huggingface_hub writes it --------------------------------------------
def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _git_blob(b: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()


def repo_files(src: Path) -> dict[str, bytes]:
    return {str(f.relative_to(src)): f.read_bytes() for f in sorted(src.rglob("*")) if f.is_file()}


from benchmarks.hub_cache import write_hub_repo  # noqa: E402 - shared with benchmarks/fullsize_twin.py


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """Tiny stand-ins of the two hub repos, with the files the real ones have beside the ones we load
    (pickled .bin copies, the DiT repo's own vae/, scheduler/ and model_index.json)."""
    import torch

    from mgd_ray.models import build_vae, save_generator, tiny_models
    base = tmp_path_factory.mktemp("repos")
    dit, dit_vae = tiny_models(num_classes=1000, image_channels=3, image_size=8, seed=0)
    d = save_generator(dit, dit_vae, base / "dit", legacy_class_name=True)
    (d / "scheduler").mkdir()
    (d / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    torch.save(dit.state_dict(), d / "transformer" / "diffusion_pytorch_model.bin")
    torch.save(dit_vae.state_dict(), d / "vae" / "diffusion_pytorch_model.bin")
    torch.manual_seed(1)
    vae = build_vae(3, (16, 32), 4, sample_size=8, scaling_factor=0.18215)   # not the DiT repo's vae/
    vae.save_pretrained(base / "vae")
    torch.save(vae.state_dict(), base / "vae" / "diffusion_pytorch_model.bin")
    dit.save_pretrained(base / "dit-sharded" / "transformer", max_shard_size="20KB")
    from tests.test_soft_label_imagenet import teacher_files
    return {DIT: repo_files(d), VAE: repo_files(base / "vae"), "sharded": repo_files(base / "dit-sharded"),
            TEACHER: teacher_files()}


@pytest.fixture(scope="module")
def inception_stand_in(tmp_path_factory) -> bytes:
    """The FID Inception-v3 network with random weights (the ImageNet jobs' metrics fetch its file)."""
    from mgd_ray import inception as spec
    from mgd_ray.eval.inception import write_stand_in
    return write_stand_in(tmp_path_factory.mktemp("inception") / spec.FILE_NAME).read_bytes()


@pytest.fixture
def hub(offline_hf, tmp_path, monkeypatch, inception_stand_in):
    """An empty hub cache that this process and its children use, offline (conftest's ``offline_hf``);
    and a torch hub directory already holding the FID Inception weights, pinned here as the stand-in's
    (so the fetch finds them and downloads nothing; tests/test_inception_metrics.py fetches them)."""
    import hashlib

    from huggingface_hub import constants

    from mgd_ray import inception as spec
    assert constants.HF_HUB_OFFLINE
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    spec.weights_path().parent.mkdir(parents=True)
    spec.weights_path().write_bytes(inception_stand_in)
    monkeypatch.setattr(spec, "SHA256", hashlib.sha256(inception_stand_in).hexdigest())
    monkeypatch.setattr(spec, "SIZE", len(inception_stand_in))
    return offline_hf


def selected(files, patterns) -> list[str]:
    """What snapshot_download keeps of a repo's files for these patterns (the library's filter)."""
    from huggingface_hub.utils import filter_repo_objects
    return sorted(filter_repo_objects(list(files), allow_patterns=patterns))


def fetched_cache(hub, repos, listing=True, drop=()):
    """The cache a fetch of jobs/imagenet1k.yaml leaves: only the pattern-selected files (minus ``drop``)."""
    from mgd_ray.hub import required_models
    commits = {}
    for m in required_models(load_job(ROOT / "jobs" / "imagenet1k.yaml")):
        keep = [f for f in selected(repos[m.repo_id], m.allow_patterns) if (m.repo_id, f) not in drop]
        commits[m.repo_id] = write_hub_repo(hub, m.repo_id, repos[m.repo_id], keep, listing)
    return commits


def run_cli(args):
    from typer.testing import CliRunner

    from mgd_ray.cli import app
    return CliRunner().invoke(app, args)


# ---- what a job needs ------------------------------------------------------------------------------
def test_required_models_of_imagenet1k():
    from mgd_ray.hub import required_models
    ms = {m.repo_id: m for m in required_models(load_job(ROOT / "jobs" / "imagenet1k.yaml"))}
    assert set(ms) == {DIT, VAE, TEACHER}
    assert ms[TEACHER].allow_patterns == ["config.json", "model.safetensors"]
    assert all(m.revision == "main" for m in ms.values())
    assert [(c.role, c.subfolder) for c in ms[DIT].components] == [("transformer", "transformer")]
    assert [(c.role, c.subfolder) for c in ms[VAE].components] == [("vae", None)]
    assert ms[DIT].allow_patterns == ["transformer/config.json",
                                      "transformer/diffusion_pytorch_model-*-of-*.safetensors",
                                      "transformer/diffusion_pytorch_model.safetensors",
                                      "transformer/diffusion_pytorch_model.safetensors.index.json"]
    assert ms[VAE].allow_patterns == ["config.json", "diffusion_pytorch_model-*-of-*.safetensors",
                                      "diffusion_pytorch_model.safetensors",
                                      "diffusion_pytorch_model.safetensors.index.json"]
    assert not any(p.endswith(".bin") for m in ms.values() for p in m.allow_patterns)


def test_the_cluster_fetch_covers_every_imagenet_job():
    """The clusters fetch for jobs/imagenet1k.yaml; every ImageNet-family job needs no more."""
    from mgd_ray.hub import required_models
    ref = {(m.repo_id, m.revision, p) for m in required_models(load_job(ROOT / "jobs" / "imagenet1k.yaml"))
           for p in m.allow_patterns}
    for name in IMAGENET_JOBS:
        need = {(m.repo_id, m.revision, p) for m in required_models(load_job(ROOT / "jobs" / f"{name}.yaml"))
                for p in m.allow_patterns}
        assert need and need <= ref, name
    # the twin's models are a local directory it makes itself (not a repo id, though it has a slash)
    from mgd_ray.hub import local_models
    twin = load_job(ROOT / "jobs" / "imagenet1k-twin.yaml")
    assert required_models(twin) == [] and [lm.spec for lm in local_models(twin)] == [twin.model.generator]


def test_required_models_follow_the_loader(tiny_prior, tmp_path):
    from mgd_ray.hub import local_models, required_models
    digits = ROOT / "jobs" / "digits.yaml"
    # a prior: nothing to fetch
    job = load_job(digits)
    assert required_models(job) == [] and [lm.spec for lm in local_models(job)] == ["prior:digits"]
    # a hub generator without model.vae: its transformer/ and its vae/ (what load_generator reads)
    job = load_job(digits, [f"model.generator={DIT}"])
    (m,) = required_models(job)
    assert m.repo_id == DIT and [(c.role, c.subfolder) for c in m.components] == [
        ("transformer", "transformer"), ("vae", "vae")]
    assert "vae/config.json" in m.allow_patterns and "vae/diffusion_pytorch_model.safetensors" in m.allow_patterns
    # a local generator with a hub VAE: only the VAE repo
    job = load_job(digits, [f"model.generator={tiny_prior}", f"model.vae={VAE}"])
    assert [m.repo_id for m in required_models(job)] == [VAE]
    assert [lm.path for lm in local_models(job)] == [str(tiny_prior)]
    # a soft-label teacher is a local directory: listed, never fetched
    job = load_job(digits, ["evaluate.protocol=soft-label", f"evaluate.teacher={tmp_path}/teacher"])
    assert required_models(job) == []
    assert any("teacher" in lm.role and lm.path == f"{tmp_path}/teacher" for lm in local_models(job))


def test_dry_run_prints_what_would_be_fetched(hub):
    r = run_cli(["models", "fetch", str(ROOT / "jobs" / "imagenet1k.yaml"), "--dry-run"])
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)
    assert p["cache_dir"] == str(hub) and [m["repo_id"] for m in p["fetch"]] == [DIT, VAE, TEACHER]
    assert p["check_teachers"] == [f"hub:{TEACHER}"]
    assert p["check_loads"] == [{"generator": DIT, "vae": VAE, "dtype": "bfloat16"}]
    assert not any(hub.iterdir())


# ---- the patterns are exactly what the loader opens ------------------------------------------------
def test_patterns_are_exactly_what_the_loader_reads(hub, repos):
    """A snapshot holding only the pattern-selected files loads through load_generator; without any
    one of them it does not; .bin copies, the DiT repo's vae/, scheduler/ and model_index.json are
    never selected."""
    from mgd_ray.hub import required_models
    from mgd_ray.models import ModelError, load_generator
    ms = {m.repo_id: m for m in required_models(load_job(ROOT / "jobs" / "imagenet1k.yaml"))}
    assert selected(repos[DIT], ms[DIT].allow_patterns) == ["transformer/config.json",
                                                            "transformer/diffusion_pytorch_model.safetensors"]
    assert selected(repos[VAE], ms[VAE].allow_patterns) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert {"model_index.json", "vae/diffusion_pytorch_model.safetensors",
            "transformer/diffusion_pytorch_model.bin"} <= set(repos[DIT])   # there, and left out

    def load(drop=()):
        for d in hub.iterdir():
            shutil.rmtree(d)
        fetched_cache(hub, repos, drop=drop)
        return load_generator(DIT, VAE, allow_download=False)

    tr, vae, info = load()
    assert type(tr).__name__ == "DiTTransformer2DModel" and info.num_classes == 1000
    assert info.scaling_factor == pytest.approx(0.18215)          # the VAE repo's config, not DiT's vae/
    for repo in (DIT, VAE):
        for f in selected(repos[repo], ms[repo].allow_patterns):
            with pytest.raises(ModelError):
                load(drop=[(repo, f)])


def test_sharded_weights_are_selected_and_load(hub, repos):
    from mgd_ray.hub import required_models
    from mgd_ray.models import load_generator
    (m,) = [m for m in required_models(load_job(ROOT / "jobs" / "imagenet1k.yaml")) if m.repo_id == DIT]
    files = dict(repos["sharded"])
    shards = [f for f in files if re.search(r"-\d{5}-of-\d{5}\.safetensors$", f)]
    assert len(shards) >= 2 and "transformer/diffusion_pytorch_model.safetensors.index.json" in files
    assert selected(files, m.allow_patterns) == sorted(files)      # config, index, every shard
    write_hub_repo(hub, DIT, files)
    write_hub_repo(hub, VAE, repos[VAE], selected(repos[VAE], ["config.json", "diffusion_pytorch_model.safetensors"]))
    tr, _, _ = load_generator(DIT, VAE, allow_download=False)
    assert tr.config.num_embeds_ada_norm == 1000


# ---- the fetch command, offline --------------------------------------------------------------------
def test_fetch_finds_loads_and_proves_offline(hub, repos):
    """Offline, the fetch finds the cached snapshots, prints each selected file with its size and
    sha256 (matching the hub's listing), loads the models through load_generator and says which
    weights it loaded: the VAE repo's root, not the DiT repo's vae/."""
    from mgd_ray.hub import fetch_models
    commits = fetched_cache(hub, repos)
    lines = []
    rep = fetch_models([load_job(ROOT / "jobs" / "imagenet1k.yaml")], echo=lines.append)
    out = "\n".join(lines)
    assert rep["offline"] is True and not rep["problems"] and all(r["hub_listing"] for r in rep["repos"])
    assert "HF_HUB_OFFLINE=1" in out and "loaded offline with mgd_ray.models.load_generator" in out
    for repo, files in ((DIT, ["transformer/config.json", "transformer/diffusion_pytorch_model.safetensors"]),
                        (VAE, ["config.json", "diffusion_pytorch_model.safetensors"])):
        assert f"{repo}@main = commit {commits[repo]}" in out
        for f in files:
            b = repos[repo][f]
            line = next(ln for ln in lines if ln.strip().startswith(f + " "))
            assert f"{len(b):,} B" in line and _sha256(b) in line and "= hub listing" in line
        assert sorted(f["path"] for r in rep["repos"] if r["repo_id"] == repo for f in r["files"]) == sorted(files)
    assert ".bin" not in out and "model_index.json" not in out
    ld, teacher, inception = rep["loads"]
    assert teacher["architecture"] == "torchvision.models.resnet18" and teacher["num_classes"] == 1000
    from mgd_ray import inception as spec                 # the metrics' network: the file in place, loaded strictly
    assert inception["strict"] and inception["weights_sha256"] == spec.SHA256[:16]
    assert ld["transformer"] == "DiTTransformer2DModel" and ld["vae"] == "AutoencoderKL"
    assert ld["num_classes"] == 1000 and ld["latent_size"] == 4 and ld["scaling_factor"] == pytest.approx(0.18215)
    t_sha = _sha256(repos[DIT]["transformer/diffusion_pytorch_model.safetensors"])[:16]
    v_sha = _sha256(repos[VAE]["diffusion_pytorch_model.safetensors"])[:16]
    assert (ld["transformer_sha256"], ld["vae_sha256"]) == (t_sha, v_sha)
    assert f"transformer {t_sha}, vae {v_sha}" in out


@pytest.mark.parametrize("listing", [True, False])
@pytest.mark.parametrize("repo,missing", [(VAE, "diffusion_pytorch_model.safetensors"),
                                          (DIT, "transformer/config.json")])
def test_fetch_with_a_file_missing_exits_2_naming_it(hub, repos, listing, repo, missing):
    fetched_cache(hub, repos, listing=listing, drop=[(repo, missing)])
    r = run_cli(["models", "fetch", str(ROOT / "jobs" / "imagenet1k.yaml")])
    assert r.exit_code == 2, r.output
    err = r.stderr
    assert f"{repo}@" in err and f"missing {missing}" in err and "Fix:" in err
    assert "loaded offline" not in r.output


def test_fetch_of_a_repo_not_in_the_cache_exits_2(hub, repos):
    r = run_cli(["models", "fetch", str(ROOT / "jobs" / "imagenet1k.yaml"), "--check-only"])
    assert r.exit_code == 2
    assert f"{DIT}@main: not in the cache" in r.stderr and f"{VAE}@main: not in the cache" in r.stderr


def test_fetch_detects_a_file_that_differs_from_the_hub(hub, repos):
    commits = fetched_cache(hub, repos)
    f = hub / f"models--{VAE.replace('/', '--')}" / "snapshots" / commits[VAE] / "config.json"
    blob = f.resolve()
    blob.write_text(blob.read_text().replace("0.18215", "0.5"))      # a changed file, same name
    r = run_cli(["models", "fetch", str(ROOT / "jobs" / "imagenet1k.yaml")])
    assert r.exit_code == 2 and "config.json differs from the hub" in r.stderr
    assert "!= HUB LISTING" in r.output


def test_the_check_really_is_offline():
    """The check's process refuses every internet connection (here: to a listening local port)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    code = ("import socket; from mgd_ray.hub import _block_network; _block_network()\n"
            f"socket.create_connection(('127.0.0.1', {srv.getsockname()[1]}), timeout=5)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    srv.close()
    assert r.returncode != 0 and "network use during the offline model check" in r.stderr


# ---- every cluster setup command that touches models runs through the real CLI ---------------------
MODEL_WORDS = re.compile(r"DiT-XL|sd-vae|huggingface|snapshot_download|\bhf\b|hf_hub|models fetch")


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ; && || | and if/then/fi), redirections dropped."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    cmds, cur, skip = [], [], False
    for tok in lex:
        if skip:
            skip = False
        elif tok in (";", "&&", "||", "|", "(", ")", "&"):
            cmds.append(cur)
            cur = []
        elif re.fullmatch(r"\d?(>>|>|<|>&)", tok):
            skip = True
        elif not cur and tok in ("if", "then", "else", "fi", "do", "done", "!"):
            continue
        else:
            cur.append(tok)
    return [c for c in cmds + [cur] if c]


def cluster_model_commands() -> dict[str, list[list[str]]]:
    out = {}
    for name in ("aws.yaml", "gcp.yaml"):
        cfg = yaml.safe_load((CLUSTER / name).read_text())
        lines = [c for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                             "worker_setup_commands") for c in cfg.get(k) or []]
        for t in cfg["available_node_types"].values():
            lines += t.get("worker_setup_commands") or []
        out[name] = [c for ln in lines for c in shell_commands(ln)]
    text = re.sub(r"\\\n", " ", (CLUSTER / "Dockerfile").read_text())
    out["Dockerfile"] = [c for ln in text.splitlines() if ln.startswith("RUN ")
                         for c in shell_commands(ln[4:])]
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text()) if d]
    strings = []

    def walk(x, key=""):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, k)
        elif isinstance(x, list):
            for v in x:
                walk(v, key)
        elif isinstance(x, str) and key in ("entrypoint", "command", "args"):
            strings.append(x)
    walk(docs)
    out["kuberay.yaml"] = [c for s in strings for c in shell_commands(s)]
    return {k: [c for c in v if MODEL_WORDS.search(" ".join(c))] for k, v in out.items()}


def test_no_raw_hub_download_remains():
    for name in ("aws.yaml", "gcp.yaml", "Dockerfile", "kuberay.yaml"):
        text = (CLUSTER / name).read_text()
        assert not re.search(r"\bhf\s+download\b|huggingface-cli|snapshot_download", text), name


def test_cluster_model_commands_run_through_the_cli(hub, repos, monkeypatch, capsys):
    """aws.yaml, gcp.yaml and the Dockerfile each fetch the models with the product's command; each
    command, split as the shell splits it, parses with the real CLI, and runs against the cache
    (commands that come to the same arguments, job paths resolved, run once)."""
    import typer

    from mgd_ray.cli import app
    cmds = cluster_model_commands()
    assert cmds["kuberay.yaml"] == []                     # its image (the Dockerfile) holds the models
    fetched_cache(hub, repos)
    monkeypatch.chdir(ROOT)                               # the Dockerfile's WORKDIR holds the repository
    click_cmd = typer.main.get_command(app)
    ran = {}
    for where in ("aws.yaml", "gcp.yaml", "Dockerfile"):
        assert cmds[where], f"{where}: no command fetches the models"
        for argv in cmds[where]:
            assert Path(argv[0]).name == "mgd-ray" and argv[1:3] == ["models", "fetch"], (where, argv)
            args = [str(ROOT / a[len("~/mgd_ray/"):]) if a.startswith("~/mgd_ray/") else a for a in argv[1:]]
            ctx = click_cmd.make_context("mgd-ray", list(args), resilient_parsing=False)   # the real parser
            sub = ctx.command.get_command(ctx, args[0]).make_context("models", args[1:], parent=ctx)
            fetch = sub.command.get_command(sub, args[1]).make_context("fetch", args[2:], parent=sub)
            jobs = fetch.params["jobs"]
            assert jobs and all(Path(j).is_file() for j in jobs), (where, argv)
            key = tuple(str(Path(a).resolve()) if a in jobs else a for a in args)
            if key not in ran:
                capsys.readouterr()
                ran[key] = click_cmd.main(args, prog_name="mgd-ray", standalone_mode=False)
                out = capsys.readouterr().out
                assert "loaded offline with mgd_ray.models.load_generator" in out, (where, out)
            assert ran[key] in (None, 0), (where, argv, ran[key])
