"""Settings keys cover every input that changes bytes, and only those (issue 22 §2). No Ray."""

from types import SimpleNamespace

import pytest

from mgd_ray.config import job_from_dict
from mgd_ray.data import open_source
from mgd_ray.pipeline.settings import SettingsChanged
from mgd_ray.pipeline.stage import BY_NAME, STAGE_NAMES, check_settings, stage_keys
from mgd_ray.pipeline.store import Store
from tests.test_data import imagefolder_files, write_tree

INFO = SimpleNamespace(transformer_sha256="t", vae_sha256="v", transformer_config={"out_channels": 8},
                       vae_config={"scaling_factor": 0.18215, "_diffusers_version": "0.42.1"})


def differs(a: dict, b: dict) -> list[str]:
    """The stages whose keys differ, in pipeline order."""
    return [s for s in STAGE_NAMES if a[s] != b[s]]


def keys(d: dict, info=INFO, source=None) -> dict:
    return stage_keys(job_from_dict(d), info, source)


def test_imagefolder_listing_is_in_the_encode_key(tmp_path):
    """One file added shifts every later id of a sorted listing: the encode key (and so every
    later one) changes; the same listing rewritten in place changes it too (size, mtime)."""
    root = write_tree(tmp_path / "nette", imagefolder_files(corrupt=False))
    d = {"data": {"source": "imagefolder", "root": str(root), "classes": ["n01440764", "n02102040"]}}
    a = keys(d, source=open_source(job_from_dict(d).data))
    assert keys(d, source=open_source(job_from_dict(d).data)) == a        # stable
    (root / "train" / "n01440764" / "img0a.png").write_bytes((root / "train" / "n01440764" / "img1.png").read_bytes())
    b = keys(d, source=open_source(job_from_dict(d).data))
    assert differs(a, b) == list(STAGE_NAMES)
    (root / "train" / "n01440764" / "img0a.png").unlink()
    assert keys(d, source=open_source(job_from_dict(d).data)) == a        # back to the same listing
    (root / "train" / "extra" / "img0.png").write_bytes(b"\x89PNG rewritten")   # a class not chosen: ids move too
    assert differs(a, keys(d, source=open_source(job_from_dict(d).data))) == list(STAGE_NAMES)


def test_only_inputs_are_in_the_keys():
    base = keys({})
    # the test split, the DiT (for the latents), a dtype a CPU never uses, the FID classifier,
    # students and train seeds (new trials, each its own unit): no key changes
    assert differs(base, keys({"data": {"test_limit_per_class": 3}})) == []
    assert differs(base, keys({"model": {"dtype": "bfloat16"}})) == []            # CPU: float32 whatever
    assert differs(base, keys({"evaluate": {"classifier": "/elsewhere", "students": ["convnet3", "resnet18"],
                                            "train_seeds": 7}})) == []
    assert differs(base, keys({}, SimpleNamespace(**{**vars(INFO), "transformer_sha256": "t2"}))) == \
        ["generate", "evaluate"]
    # what does change bytes: the VAE's settings (config.json, not only its weights), the device /
    # dtype that actually runs, the method's code version
    vae2 = SimpleNamespace(**{**vars(INFO), "vae_config": {"scaling_factor": 0.5}})
    assert differs(base, keys({}, vae2)) == list(STAGE_NAMES)
    assert differs(base, keys({}, SimpleNamespace(**{**vars(INFO), "vae_config": {"scaling_factor": 0.18215,
                                                                                  "_diffusers_version": "9"}}))) == []
    gpu = keys({"generate": {"num_gpus": 1}, "model": {"dtype": "bfloat16"}})
    assert differs(base, gpu) == ["generate", "evaluate"]
    assert gpu["generate"]["compute"]["generate"] == {"device": "cuda", "dtype": "bfloat16"}
    assert base["generate"]["compute"]["generate"] == {"device": "cpu", "dtype": "float32"}
    assert differs(base, keys({"encode": {"num_gpus": 1}, "model": {"dtype": "bfloat16"}}))[0] == "encode"


def test_method_version_and_sections_it_reads(monkeypatch):
    import mgd_ray.methods as methods
    base = keys({})
    bumped = methods.Method(**{**vars(methods.METHODS["manifoldgd"]), "version": 2})
    monkeypatch.setitem(methods.METHODS, "manifoldgd", bumped)
    assert differs(base, keys({})) == ["coreset", "generate", "evaluate"]
    # a real-image method reads no sampler / guidance settings: changing them reuses its outputs
    rr = keys({"method": "random-real"})
    assert differs(rr, keys({"method": "random-real", "sampler": {"cfg_scale": 7.0},
                             "guidance": {"lam_mode": 0.5}})) == []
    assert "transformer_sha256" not in str(rr)        # and no DiT: it never runs one


def test_settings_check_names_the_data_change(tmp_path):
    root = write_tree(tmp_path / "nette", imagefolder_files(corrupt=False))
    d = {"data": {"source": "imagefolder", "root": str(root), "classes": ["n01440764", "n02102040"]}}
    store = Store(str(tmp_path / "out"))
    for stage, key in keys(d, source=open_source(job_from_dict(d).data)).items():
        BY_NAME[stage].record_key(store, key)
    (root / "train" / "n02102040" / "img9.png").write_bytes(b"new")
    with pytest.raises(SettingsChanged) as e:
        check_settings(store, keys(d, source=open_source(job_from_dict(d).data)))
    assert "encode: data.fingerprint:" in str(e.value) and "--fresh encode" in str(e.value)
