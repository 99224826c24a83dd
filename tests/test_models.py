"""Model loading as the cluster jobs do it: a hub-layout directory whose transformer config carries
the legacy ``Transformer2DModel`` class name (as facebook/DiT-XL-2-256 ships), a hub id that is not
in the cache (clear error, nothing downloaded), shipped priors, and ModelInfo read from configs."""

import json
import socket

import pytest
import torch

from mgd_ray import known
from mgd_ray.models import (ModelError, build_dit, build_vae, describe, list_priors, load_generator,
                            save_generator)

# keys the hub repo's transformer/config.json has because it was written by Transformer2DModel
LEGACY_KEYS = {"cross_attention_dim": None, "num_vector_embeds": None, "only_cross_attention": False,
               "use_linear_projection": False, "double_self_attention": False}


@pytest.fixture(scope="module")
def legacy_dir(tmp_path_factory):
    torch.manual_seed(0)
    dit = build_dit(1000, 4, 8, patch_size=2).eval()
    vae = build_vae(3, (16, 32), 4, sample_size=16, scaling_factor=0.3).eval()
    d = save_generator(dit, vae, tmp_path_factory.mktemp("legacy"), legacy_class_name=True)
    cfg_path = d / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(LEGACY_KEYS)
    cfg_path.write_text(json.dumps(cfg, indent=1))
    return d, dit, vae


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt to a non-loopback address fails the test."""
    real = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("/"):
            raise AssertionError(f"network access attempted: {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def known_model(generator: str, vae: str | None):
    """ModelInfo of a known hub id pair from the published configs in ``mgd_ray.known`` (what the
    dry run falls back to), or None when either is not known."""
    from mgd_ray.models import info_from_configs
    t, v = known.TRANSFORMER_CONFIGS.get(generator), known.VAE_CONFIGS.get(vae or generator)
    if t is None or v is None:
        return None
    return info_from_configs(t, v, source=generator if not vae else f"{generator} + {vae}", path=generator,
                             facts_from="known table (mgd_ray/known.py): the published hub configs")


def test_legacy_class_name_loads_as_dit(legacy_dir, no_network):
    d, dit, vae = legacy_dir
    cfg = json.loads((d / "transformer" / "config.json").read_text())
    assert cfg["_class_name"] == "Transformer2DModel" and cfg["norm_type"] == "ada_norm_zero"
    t, v, info = load_generator(str(d))
    assert type(t).__name__ == "DiTTransformer2DModel"
    sd0, sd1 = dit.state_dict(), t.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    vs0, vs1 = vae.state_dict(), v.state_dict()
    assert all(torch.equal(vs0[k], vs1[k]) for k in vs0)
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    # what diffusers itself does with the hub repo's class name (DiTPipeline -> Transformer2DModel)
    from diffusers import Transformer2DModel
    remapped = Transformer2DModel.from_pretrained(str(d), subfolder="transformer", local_files_only=True,
                                                  low_cpu_mem_usage=False)
    assert type(remapped).__name__ == "DiTTransformer2DModel"
    # same forward as the model that was saved
    x = torch.randn(2, 4, 8, 8)
    ts, y = torch.tensor([10, 500]), torch.tensor([3, 1000])
    with torch.no_grad():
        assert torch.equal(dit(x, timestep=ts, class_labels=y).sample, t(x, timestep=ts, class_labels=y).sample)


def test_info_from_configs(legacy_dir):
    d, _, _ = legacy_dir
    _, _, info = load_generator(str(d), dtype="float32")
    assert info.scaling_factor == pytest.approx(0.3)          # from vae/config.json, not 0.18215
    assert info.num_classes == 1000 and info.null_label == 1000
    assert (info.latent_channels, info.latent_size, info.image_channels, info.image_size) == (4, 8, 3, 16)
    assert info.learned_sigma and info.transformer_sha256 not in ("unknown", "in-memory")
    # the dry run reads the same facts from the config files without loading weights
    from mgd_ray.config import job_from_dict
    from mgd_ray.pipeline.plan import model_facts
    f = model_facts(job_from_dict({"model": {"generator": str(d)}}))
    # one type, one derivation: every derived field agrees, the VAE architecture included
    from dataclasses import fields
    assert type(f) is type(info)
    where = ("source", "path", "facts_from", "transformer_sha256", "vae_sha256", "transformer_config", "vae_config")
    derived = [x.name for x in fields(info) if x.name not in where]
    assert {k: getattr(f, k) for k in derived} == {k: getattr(info, k) for k in derived}
    assert info.vae_block_out_channels and info.vae_config["scaling_factor"] == pytest.approx(0.3)
    assert "config file" in f.facts_from and "loaded" in info.facts_from


def test_null_label_and_scaling_follow_the_configs(tmp_path):
    torch.manual_seed(1)
    dit, vae = build_dit(7, 4, 4, patch_size=2, learned_sigma=False), build_vae(1, (16, 32), 4, sample_size=8,
                                                                                 scaling_factor=0.41)
    info = describe(dit, vae)
    assert info.null_label == 7 and info.num_classes == 7 and not info.learned_sigma
    assert info.scaling_factor == pytest.approx(0.41) and info.image_size == 8
    d = save_generator(dit, vae, tmp_path / "m")
    assert load_generator(str(d))[2].null_label == 7


def test_hub_id_not_cached_says_how_to_fix(tmp_path, monkeypatch, no_network):
    import huggingface_hub.constants as hc
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as e:
        load_generator("facebook/DiT-XL-2-256", "stabilityai/sd-vae-ft-mse")
    msg = str(e.value)
    assert "facebook/DiT-XL-2-256" in msg and "allow_download" in msg and "local" in msg
    assert not any(tmp_path.rglob("*.safetensors")) and not any(tmp_path.rglob("*.bin"))


def test_unknown_prior_lists_the_shipped_ones():
    with pytest.raises(ModelError) as e:
        load_generator("prior:nonexistent")
    msg = str(e.value)
    assert "nonexistent" in msg and "Shipped priors:" in msg
    for name in list_priors():
        assert name in msg


def test_missing_local_dir():
    with pytest.raises(ModelError, match="does not exist"):
        load_generator("/no/such/dir/DiT-XL-2-256")


def test_known_facts_match_the_published_configs():
    f = known_model(known.DIT_XL_2_256, known.SD_VAE_FT_MSE)
    assert (f.latent_channels, f.latent_size, f.num_classes, f.null_label) == (4, 32, 1000, 1000)
    assert f.learned_sigma and f.image_size == 256 and f.scaling_factor == pytest.approx(0.18215)
    assert f.latent_dim == 4096 and known.is_sd_vae(f)
    assert known_model("someone/else", None) is None
