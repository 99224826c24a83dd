"""The full-size twin's guarantees (issue 20 item 2): the driver never holds the generator's
weights, encoder actors load only the VAE, and ``jobs/imagenet1k.yaml`` runs end to end through the
real model layout (hub cache under the real repo ids, the DiT's legacy class name).

Fast tests use tiny random models of the real classes in that layout, with the class constructors
patched to fail where a module must not be built. The slow test builds DiT-XL/2-256 and
sd-vae-ft-mse at full size (random weights, 3.3 GB on disk) and runs the job
(``benchmarks/fullsize_twin.py``, whose report holds the measured figures)."""

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mgd_ray.config import load_job
from mgd_ray.models import ModelError, config_sha256, load_generator, load_vae, read_generator_info

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "imagenet1k.yaml"
DIT, VAE = "facebook/DiT-XL-2-256", "stabilityai/sd-vae-ft-mse"
SIZE = 8                                  # the tiny VAE: 8 px -> 4 x 4 x 4 latents


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Tiny random DiT (1000 classes, legacy class name) + a separate VAE written as a hub cache
    under the real repo ids; this process reads it offline."""
    import torch
    from huggingface_hub import constants

    from benchmarks.hub_cache import write_hub_cache
    from mgd_ray.models import build_vae, save_generator, tiny_models
    dit, dit_vae = tiny_models(num_classes=1000, image_channels=3, image_size=SIZE, seed=0)
    src = tmp_path / "src"
    save_generator(dit, dit_vae, src / "dit", legacy_class_name=True)
    torch.manual_seed(1)
    build_vae(3, (16, 32), 4, sample_size=SIZE, scaling_factor=0.18215).save_pretrained(src / "vae")
    hf = tmp_path / "hf"
    write_hub_cache(hf, {DIT: src / "dit", VAE: src / "vae"})
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf / "hub"))   # read once at import
    return hf / "hub"


def forbid_building(monkeypatch, *classes):
    """Constructing any of ``classes`` (also on the meta device, also via from_pretrained) fails;
    the signature stays the class's own (diffusers reads the config keys from it)."""
    import functools

    import diffusers

    def forbidden(init):
        @functools.wraps(init)
        def boom(self, *a, **k):
            raise AssertionError(f"{type(self).__name__} was built")
        return boom
    for name in classes:
        cls = getattr(diffusers, name)
        monkeypatch.setattr(cls, "__init__", forbidden(cls.__init__))


def tiny_job(tmp_path, data_root=None):
    from benchmarks.imagenet_twin import twin_wnids
    return load_job(JOB, [f"data.root={data_root or tmp_path / 'data'}",
                          f"data.classes=[{', '.join(twin_wnids(2))}]", f"encode.image_size={SIZE}", "generate.ipc=1",
                          "model.device=cpu", "evaluate.enabled=false", f"output.dir={tmp_path / 'out'}"])


def test_the_job_reads_the_real_repo_ids():
    job = load_job(JOB)
    assert (job.model.generator, job.model.vae) == (DIT, VAE)


def test_preflight_reads_the_generator_without_building_it(hub, tmp_path, monkeypatch):
    """The driver's preflight: the same ModelInfo as loading both models (configs, weight hashes)
    and so the same stage keys, with neither module constructed."""
    from benchmarks.imagenet_twin import twin_wnids, write_imagefolder
    from mgd_ray.data import open_source
    from mgd_ray.pipeline.driver import preflight
    from mgd_ray.pipeline.stage import stage_keys
    write_imagefolder(tmp_path / "data", twin_wnids(2), 2, 1, image_size=SIZE)
    job = tiny_job(tmp_path)
    loaded = load_generator(DIT, VAE)[2]
    with monkeypatch.context() as m:
        m.setenv("MGD_RAY_IN_PROCESS", "1")            # the driver's child, here: the patch below reaches it
        forbid_building(m, "DiTTransformer2DModel", "AutoencoderKL", "Transformer2DModel")
        with pytest.raises(AssertionError, match="was built"):       # the patch bites
            load_generator(DIT, VAE)
        source, info = preflight(job)
    same = {f.name for f in dataclasses.fields(info)} - {"facts_from", "transformer_config", "vae_config"}
    assert {k: getattr(info, k) for k in same} == {k: getattr(loaded, k) for k in same}
    assert info.transformer_sha256 not in ("not loaded", "unknown") and info.num_classes == 1000
    for which in ("transformer_config", "vae_config"):
        assert config_sha256(getattr(info, which)) == config_sha256(getattr(loaded, which)), which
    assert stage_keys(job, info, source) == stage_keys(job, loaded, open_source(job.data))


def test_preflight_refuses_missing_or_damaged_weights(hub):
    snap = next((hub / "models--facebook--DiT-XL-2-256" / "snapshots").iterdir())
    weights = snap / "transformer" / "diffusion_pytorch_model.safetensors"
    blob = weights.resolve()
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])                  # an interrupted copy
    with pytest.raises(ModelError, match="cannot be read") as e:
        read_generator_info(DIT, VAE)
    assert "diffusion_pytorch_model.safetensors" in str(e.value)
    import shutil
    local = hub.parent / "local-copy"
    shutil.copytree(snap, local, symlinks=False)
    weights.unlink()                                          # a fetch that left the weights out
    with pytest.raises(ModelError, match="missing") as e:     # the hub listing says what is missing
        read_generator_info(DIT, VAE)
    assert "transformer/diffusion_pytorch_model.safetensors" in str(e.value)
    (local / "transformer" / "diffusion_pytorch_model.safetensors").unlink()   # a local copy without them
    with pytest.raises(ModelError, match="no weights"):
        read_generator_info(str(local))
    with pytest.raises(ModelError, match="allow_download"):   # a repo that is not in the cache
        read_generator_info("someone/DiT-B-4", VAE)


@pytest.mark.parametrize("layout", ["hub", "local"])
def test_encoder_loads_only_the_vae(hub, tmp_path, monkeypatch, layout):
    """The encode stage's actor class: the VAE and the facts it needs, never the DiT; its latents
    are those of the VAE that load_generator loads."""
    import torch

    from mgd_ray.models import encode_latents
    from mgd_ray.pipeline import workers as stages
    from mgd_ray.pipeline.runner import job_dict
    if layout == "local":      # a local directory in the pipeline layout: the DiT's own vae/
        gen, vae = str(next((hub / "models--facebook--DiT-XL-2-256" / "snapshots").iterdir())), None
    else:
        gen, vae = DIT, VAE
    job = tiny_job(tmp_path)
    job = job.model_copy(update={"model": job.model.model_copy(update={"generator": gen, "vae": vae})})
    _, ref_vae, ref_info = load_generator(gen, vae)
    monkeypatch.setattr(stages, "record_node", lambda *a, **k: None)   # a Ray-node record: no Ray here
    with monkeypatch.context() as m:
        forbid_building(m, "DiTTransformer2DModel", "Transformer2DModel")
        enc = stages.Encoder(job_dict(job))
        vae_only, info = load_vae(gen, vae)
    assert info.vae_sha256 == ref_info.vae_sha256 and info.transformer_sha256 == "not loaded"
    for k in ("image_size", "image_channels", "scaling_factor", "latent_channels", "latent_size", "num_classes"):
        assert getattr(enc.info, k) == getattr(ref_info, k), k
    assert not any(p.requires_grad for p in enc.vae.parameters()) and not enc.vae.training
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    out = enc({"id": np.arange(3), "label": np.array([0, 1, 0]), "image": imgs})
    from mgd_ray.data import preprocess
    x = torch.from_numpy(preprocess(imgs, SIZE, channels=3, mode=job.encode.preprocess))
    with torch.no_grad():
        want = encode_latents(ref_vae, x, ref_info.scaling_factor).reshape(3, -1).numpy()
    np.testing.assert_allclose(out["latent"], want, rtol=0, atol=1e-6)
    assert out["latent"].shape == (3, 4 * (SIZE // 2) ** 2)


def test_process_kinds_from_ray_titles():
    from benchmarks.fullsize_twin import process_kind
    assert process_kind("ray::MapWorker(MapBatches(CountingEncoder))", "python") == \
        "ray::MapWorker(MapBatches(CountingEncoder))"
    assert process_kind("ray::GeneratorWorker.run_units", "python") == "ray::GeneratorWorker"
    assert process_kind("ray::GeneratorWorker.__init__()", "python") == "ray::GeneratorWorker"
    assert process_kind("ray::_coreset_task()", "python") == "ray::_coreset_task"
    assert process_kind("/usr/bin/raylet --flag", "raylet") == "raylet"
    assert process_kind("/venv/bin/python", "python3", ["-u", "/venv/ray/_private/log_monitor.py"]) == \
        "python log_monitor.py"


# ---- the real sizes ------------------------------------------------------------------------------
@pytest.mark.slow     # 3 min on this 2-core machine when quiet: writes 3.3 GB of models, runs the job on CPU
@pytest.mark.timeout(3600)
def test_fullsize_job_runs_with_a_small_driver_and_vae_only_encoders(tmp_path):
    import shutil
    try:
        _fullsize_job(tmp_path)
    finally:                      # pytest keeps recent tmp dirs: do not leave 3.3 GB behind
        shutil.rmtree(tmp_path / "hf", ignore_errors=True)


def _fullsize_job(tmp_path):
    from PIL import Image

    from benchmarks.fullsize_twin import actor_peak, prepare, run_job_measured
    prep = prepare(tmp_path, train_per_class=3)
    dit_mb = prep["models"]["dit_weights_bytes"] / 2**20
    assert prep["models"]["dit_params"] > 6e8 and dit_mb > 2500         # DiT-XL/2 in float32
    r = run_job_measured(tmp_path, prep["data_root"], prep["wnids"], prep["hf_home"])
    assert r["rc"] == 0 and r["status"] == "complete", r["log_tail"]
    assert r["model"]["source"] == f"{DIT} + {VAE}" and r["model"]["num_classes"] == 1000
    assert r["counts"]["images"] == 2
    # the driver never holds the DiT: under 1 GB
    assert r["driver_peak_rss_mb"] < 1024, r["processes"]
    # the generator actor holds it (so the polling sees the actors); the encoder actor stays below
    # the DiT's size (that it never builds the DiT is test_encoder_loads_only_the_vae's check)
    gen = actor_peak(r["processes"], "GeneratorWorker")
    enc = actor_peak(r["processes"], "CountingEncoder")
    assert gen is not None and gen > dit_mb, r["processes"]
    assert enc is not None and enc < dit_mb, r["processes"]
    rows = [row for f in sorted((tmp_path / "job" / "shards").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]
    assert sorted(row["class_name"] for row in rows) == sorted(prep["wnids"])
    for row in rows:
        assert Image.open(io.BytesIO(row["image"]["bytes"])).size == (256, 256)
    assert json.loads((tmp_path / "job" / "manifest.json").read_text())["model"]["transformer_sha256"] != "not loaded"
