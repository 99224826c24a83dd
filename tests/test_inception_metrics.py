"""The ImageNet family's distribution metrics in Inception-v3 FID features (torch-fidelity), and their weights.

The stand-in is torch-fidelity's own ``FeatureExtractorInceptionV3`` (full size, 23.9 M parameters) with random
weights, saved by ``mgd_ray.eval.inception.write_stand_in`` where ``mgd-ray models fetch`` puts the real file
(torch.hub's checkpoints directory under a TORCH_HOME of the test's own), in the released file's legacy torch
format, so the run's loading path (``torch.load(weights_only=True)`` + the library's strict load) is the real
one. The cost on this 2-core machine: ~20 forwards at 299 px (0.2-0.8 s each) and two FIDs of 2048-d features
(5-17 s each, dimension-bound); the end-to-end test takes 25-85 s, depending on what else runs.
Nothing downloads: sockets are blocked while the metrics run, and only the file the test wrote is there."""

import hashlib
import io
import json
import re
import socket
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mgd_ray import inception as spec
from mgd_ray.config import job_from_dict, load_job

ROOT = Path(__file__).resolve().parents[1]
WNIDS = ["n03888257", "n01440764", "n02102040"]          # tests/test_imagenet_twin.py's imagefolder
SIZE = 32
N_TRAIN = 2                                              # train images per class: 6 real images in all


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def stand_in_bytes(tmp_path_factory):
    """One stand-in for the module (write_stand_in), copied where each test wants it."""
    from mgd_ray.eval.inception import write_stand_in
    p = write_stand_in(tmp_path_factory.mktemp("standin") / spec.FILE_NAME, seed=0)
    return p.read_bytes(), spec.stand_in_marker(p).read_text()


def place_stand_in(stand_in_bytes, marker: bool = True) -> Path:
    p = spec.weights_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(stand_in_bytes[0])
    if marker:
        spec.stand_in_marker(p).write_text(stand_in_bytes[1])
    return p


@pytest.fixture
def no_network(monkeypatch):
    """Every outgoing internet connection of this process fails (hub.py's _block_network, undone after)."""
    def refuse(self, address, *a, **k):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network use in a test (to {address!r})")
        return connect(self, address, *a, **k)
    connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def twin_job(data_root: Path, out: Path, extra=()):
    return job_from_dict({}, [
        "data.source=imagefolder", f"data.root={data_root}", "data.class_list=imagenet1k",
        f"data.classes=[{', '.join(WNIDS)}]", f"encode.image_size={SIZE}", "encode.preprocess=center-crop",
        "generate.ipc=2", "generate.seeds=[0, 1]", "generate.targets_per_unit=2", f"output.dir={out}", *extra])


@pytest.fixture
def twin(tmp_path):
    from mgd_ray.data import open_source
    from tests.test_imagenet_twin import make_imagefolder
    data = make_imagefolder(tmp_path / "imagenet", n_train=N_TRAIN)
    job = twin_job(data, tmp_path / "out")
    return job, open_source(job.data)


# ---- the library and the pins ------------------------------------------------------------------------
def test_the_pins_are_the_librarys():
    import torch_fidelity
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    assert spec.URL == URL_INCEPTION_V3 and torch_fidelity.__version__ == spec.LIBRARY_VERSION
    assert f'"torch-fidelity=={spec.LIBRARY_VERSION}"' in (ROOT / "pyproject.toml").read_text()
    assert spec.SHA256.startswith(spec.FILE_NAME.rsplit("-", 1)[1].split(".")[0])    # torch.hub's name convention


def test_which_jobs_use_inception(tmp_path):
    def uses(*sets):
        return spec.uses_inception(job_from_dict({}, list(sets)))
    for name in ("imagenet1k", "imagenet100", "imagenette", "imagewoof", "in100"):
        assert uses(f"data.class_list={name}"), name
    for name in ("imagenette", "imagewoof", "imagenet100"):        # the shipped jobs, metrics on
        assert spec.uses_inception(load_job(ROOT / "jobs" / f"{name}.yaml", ["evaluate.metrics=true"])), name
    wnids, other = tmp_path / "wnids.txt", tmp_path / "mine.txt"
    wnids.write_text("n01440764\nn02102040\n")
    other.write_text("cat\ndog\n")
    assert uses(f"data.class_list={wnids}") and not uses(f"data.class_list={other}")
    assert not uses()                                                       # digits
    assert not uses("data.source=fashion-mnist")
    assert uses("evaluate.features=inception")                              # forced
    assert not uses("data.class_list=imagenette", "evaluate.features=classifier")
    assert not uses("data.class_list=imagenette", "evaluate.metrics=false")
    assert not uses("data.class_list=imagenette", "evaluate.enabled=false")
    assert spec.weights_path() == spec.torch_hub_dir() / "checkpoints" / spec.FILE_NAME


def test_real_subset_is_class_balanced_and_seeded():
    from mgd_ray.pipeline.metrics import real_subset
    labels = np.repeat(np.arange(1000), 30)
    idx = real_subset(labels, 1000)
    assert len(idx) == 10_000 and (np.bincount(labels[idx], minlength=1000) == 10).all()
    assert np.array_equal(idx, real_subset(labels, 1000)) and not np.array_equal(idx, real_subset(labels, 1000, seed=1))
    small = np.repeat(np.arange(3), 6)
    assert np.array_equal(real_subset(small, 3), np.arange(18))            # fewer than the share: all of them


# ---- end to end on the twin --------------------------------------------------------------------------
def write_shards(store, seed: int, imgs, labels, names):
    """A distilled set as the generate stage writes it: one shard per class (``s{seed}-c{label}``)."""
    from mgd_ray.pipeline.units import png_bytes, sample_id, shard_table
    for c in np.unique(labels):
        rows = [dict(sample_id=sample_id(seed, int(c), i), label=int(c), class_name=names[int(c)],
                     target_id=f"t{i}", seed=i, gen_seed=seed, method="test", image=png_bytes(img),
                     height=img.shape[0], width=img.shape[1], channels=img.shape[2])
                for i, img in enumerate(imgs[labels == c])]
        store.write_table(shard_table(rows, names), "shards", f"s{seed:03d}-c{int(c):04d}.parquet")


def test_metrics_end_to_end_in_the_stand_in_inception(twin, torch_home, stand_in_bytes, no_network, tmp_path,
                                                       monkeypatch):
    """compute_distribution on the twin: real reference features equal the library's own network loaded from
    the same file (its own loader, its own resize to 299 px); a set of real images scores a lower FID than a set
    of noise; the reference features are cached (keyed by the weights) and read back; the shard-by-shard
    reading (several chunks) scores every image."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from mgd_ray.pipeline import metrics as M
    from mgd_ray.pipeline.store import Store
    job, source = twin
    w = place_stand_in(stand_in_bytes)
    store = Store(str(tmp_path / "out"))
    info = SimpleNamespace(image_size=SIZE, path=str(tmp_path / "no-prior"), source="twin")
    real = source.arrays("train", image_size=SIZE, mode="center-crop")
    rng = np.random.default_rng(0)
    near = np.clip(real["image"].astype(int) + rng.integers(-8, 9, real["image"].shape), 0, 255).astype(np.uint8)
    one = np.unique(real["label"], return_index=True)[1]                 # one image per class
    noise = rng.integers(0, 256, real["image"][one].shape, dtype=np.uint8)
    names = list(source.classes.names)
    write_shards(store, 0, near, real["label"], names)
    write_shards(store, 1, noise, real["label"][one], names)
    monkeypatch.setattr(M, "CHUNK", 5)                 # several reads of the real set and of the shards
    out = M.compute_distribution(job, store, source, info)

    assert "STAND-IN" in out["feature_space"] and "torch-fidelity 0.4.0" in out["feature_space"]
    f = out["features"]
    assert f["standard"] is False and f["weights_sha256"] == hashlib.sha256(w.read_bytes()).hexdigest()
    n = 3 * N_TRAIN
    assert f["real_images"] == n and f["layer"] == "2048" and f["device"] == "cpu"
    s0, s1 = out["sets"]["0"], out["sets"]["1"]
    assert s0["feature_dim"] == 2048 and s0["n_real"] == n and s0["n_syn"] == n and s1["n_syn"] == 3
    assert s0["fid"] < 0.5 * s1["fid"], (s0["fid"], s1["fid"])
    assert "prior_fidelity" not in s0                  # no real-data classifier of these classes
    (cache,) = (tmp_path / "out" / "latents").glob("_real_features_inception_*.npy")
    assert f["weights_sha256"][:16] in cache.name
    f_real = np.load(cache)

    # the reference: torch-fidelity's network built by the library from the same file (its own path loader)
    ref_net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(w))
    with torch.no_grad():                               # (a few images: the real network is slow on 2 cores)
        ref = ref_net(torch.from_numpy(real["image"][one]).permute(0, 3, 1, 2).contiguous())[0].numpy()
    assert f_real.shape == (n, 2048) and np.allclose(f_real[one], ref, rtol=1e-4, atol=1e-4)
    assert np.abs(ref).max() > 1e-3                    # the stand-in's features are not flat

    # the second run reads the cached reference features (reading the real images now fails)
    from mgd_ray.eval.inception import load_inception
    monkeypatch.setattr(type(source), "arrays_at", lambda *a, **k: pytest.fail("real features not cached"))
    cached, _ = M._real_inception(store, source, job, info, load_inception(), 25)
    assert np.array_equal(cached, f_real)
    assert [p.name for p in w.parent.iterdir()] and set(p.name for p in torch_home.rglob("*") if p.is_file()) == {
        spec.FILE_NAME, spec.FILE_NAME + spec.STAND_IN_SUFFIX}          # nothing else came into torch.hub


def test_small_data_keeps_the_classifier(tmp_path, torch_home):
    """digits: the real-data classifier's features, no Inception weights needed (none exist here)."""
    import mgd_ray
    from mgd_ray.data import open_source
    from mgd_ray.pipeline.metrics import compute_distribution
    from mgd_ray.pipeline.store import Store
    job = job_from_dict({}, ["data.limit_per_class=3", f"output.dir={tmp_path / 'o'}"])
    source = open_source(job.data)
    a = source.arrays("train")
    info = SimpleNamespace(path=str(Path(mgd_ray.__file__).parent / "priors" / "digits"), source="prior:digits",
                           image_size=8)
    out = compute_distribution(job, Store(str(tmp_path / "o")), source, info, sets={0: (a["image"], a["label"])})
    assert out["feature_space"].startswith("real-data classifier") and "features" not in out
    assert not spec.weights_path().exists()


# ---- the door ----------------------------------------------------------------------------------------
def test_door_refuses_missing_or_foreign_weights_naming_the_fetch(twin, torch_home, stand_in_bytes):
    from mgd_ray.pipeline.door import check_inception_weights, door_checks
    job, source = twin
    with pytest.raises(spec.InceptionNotFetched, match=r"mgd-ray models fetch JOB.yaml") as e:
        door_checks(job, source)
    assert str(spec.weights_path()) in str(e.value)
    assert isinstance(e.value, FileNotFoundError)      # the CLI's user errors: exit 2
    w = place_stand_in(stand_in_bytes, marker=False)   # not the pinned file, not declared a stand-in
    with pytest.raises(spec.InceptionNotFetched, match="not the pinned file"):
        check_inception_weights(job)
    place_stand_in(stand_in_bytes)                      # declared: accepted
    door_checks(job, source)
    spec.stand_in_marker(w).write_text(json.dumps({"sha256": "0" * 64}))   # a marker of another file
    with pytest.raises(spec.InceptionNotFetched):
        check_inception_weights(job)
    w.unlink()
    # the same job with metrics off, or in the classifier's features, needs no weights
    check_inception_weights(job.model_copy(update={"evaluate": job.evaluate.model_copy(update={"metrics": False})}))
    check_inception_weights(job.model_copy(update={"evaluate": job.evaluate.model_copy(
        update={"features": "classifier"})}))


# ---- mgd-ray models fetch ----------------------------------------------------------------------------
def run_cli(args):
    from typer.testing import CliRunner

    from mgd_ray.cli import app
    return CliRunner().invoke(app, args)


def test_dry_run_lists_the_inception_weights(offline_hf, torch_home):
    r = run_cli(["models", "fetch", str(ROOT / "jobs" / "imagenette.yaml"), "--set", "evaluate.metrics=true",
                 "--dry-run"])
    assert r.exit_code == 0, r.output
    (f,) = json.loads(r.stdout)["files"]
    assert f == {"role": spec.ROLE, "url": spec.URL, "sha256": spec.SHA256, "size": spec.SIZE,
                 "path": str(torch_home / "hub" / "checkpoints" / spec.FILE_NAME), "exists": False}
    for extra in (["--set", "evaluate.metrics=false"], ["--set", "evaluate.metrics=true", "--set",
                                                        "evaluate.features=classifier"]):
        r = run_cli(["models", "fetch", str(ROOT / "jobs" / "imagenette.yaml"), *extra, "--dry-run"])
        assert r.exit_code == 0 and json.loads(r.stdout)["files"] == [], (extra, r.output)
    r = run_cli(["models", "fetch", str(ROOT / "jobs" / "digits.yaml"), "--dry-run"])
    assert json.loads(r.stdout)["files"] == []
    assert not torch_home.exists()


def inception_only_job(tiny_prior, tmp_path, extra=()):
    """A job whose only fetchable need is the Inception file (a local prior; an ImageNet class list)."""
    return job_from_dict({}, [f"model.generator={tiny_prior}", "data.source=imagefolder", f"data.root={tmp_path}/d",
                              "data.class_list=imagenette", *extra])


def test_fetch_checks_and_loads_the_file_offline(offline_hf, torch_home, tiny_prior, tmp_path, stand_in_bytes,
                                                 monkeypatch):
    """With the file in place (the pinned sha256 made the stand-in's here), the fetch downloads nothing and its
    offline child (network blocked) checks size + sha256 and loads it into torch-fidelity's network."""
    from mgd_ray.hub import FetchError, fetch_models
    w = place_stand_in(stand_in_bytes)
    monkeypatch.setattr(spec, "SHA256", hashlib.sha256(stand_in_bytes[0]).hexdigest())
    monkeypatch.setattr(spec, "SIZE", len(stand_in_bytes[0]))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded a present file"))
    lines = []
    rep = fetch_models([inception_only_job(tiny_prior, tmp_path)], echo=lines.append)
    out = "\n".join(lines)
    assert not rep["problems"] and rep["files"][0]["sha256"] == spec.SHA256, out
    (ld,) = [x for x in rep["loads"] if "file" in x]
    assert ld["params"] == 23_850_960 and ld["strict"] and ld["weights_sha256"] == spec.SHA256[:16]
    assert "= pinned" in out and "loaded offline into torch_fidelity's FeatureExtractorInceptionV3" in out
    assert "present" in out and not spec.stand_in_marker(w).exists()      # the pinned file needs no marker
    # a different file in its place: exit 2, named, with the fix (nothing downloaded: --check-only)
    w.write_bytes(stand_in_bytes[0][:-10] + b"0123456789")
    r = run_cli(["models", "fetch", "--check-only", str(ROOT / "jobs" / "imagenette.yaml"), "--set",
                 f"model.generator={tiny_prior}", "--set", "model.vae=null", "--set", "evaluate.metrics=true"])
    assert r.exit_code == 2 and "is not the pinned file" in r.stderr and spec.URL in r.stderr, r.output
    w.unlink()
    with pytest.raises(FetchError, match=re.escape(f"missing {w}")):
        fetch_models([inception_only_job(tiny_prior, tmp_path)], download=False, echo=lambda s: None)


def test_download_checks_the_sha256_before_the_file_is_in_place(torch_home, monkeypatch):
    good = b"weights" * 1000
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"not the weights"))
    entry = dict(spec.file_entry(), sha256=hashlib.sha256(good).hexdigest(), size=len(good))
    with pytest.raises(ValueError, match="expected"):
        spec.download(entry, echo=lambda s: None)
    dest = Path(entry["path"])
    assert not dest.exists() and not list(dest.parent.iterdir())          # no partial file left
    dest.write_bytes(b"a stand-in")
    spec.stand_in_marker(dest).write_text("{}")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(good))
    assert spec.download(entry, echo=lambda s: None) == "downloaded"
    assert dest.read_bytes() == good and not spec.stand_in_marker(dest).exists()
    assert spec.download(entry, echo=lambda s: None) == "present"
