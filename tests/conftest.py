"""Shared fixtures: one session-wide local Ray (loopback only, no auth), tiny models, moto S3."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind 127.0.0.1 only
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

try:
    from tests.s3_fixture import moto_s3  # noqa: F401,E402
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    import ray
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024**2, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory):
    """A tiny random DiT + VAE (the real diffusers classes) saved in the pipeline layout, with a
    prior.json naming the digits classes, so jobs can point model.generator at it."""
    import json

    from mgd_ray.models import save_generator, tiny_models
    d = tmp_path_factory.mktemp("tiny_prior")
    dit, vae = tiny_models(num_classes=10, image_channels=1, image_size=8)
    save_generator(dit, vae, d)
    (d / "prior.json").write_text(json.dumps({"classes": [str(i) for i in range(10)]}))
    return d


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache that this process and its children use, offline."""
    from huggingface_hub import constants
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))   # read once at import: in-process loads
    return hub
