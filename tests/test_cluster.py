"""Cluster readiness without a cluster: the launcher YAMLs against the schema Ray ships (and Ray's
own offline config checks), the KubeRay manifest's structure, the security rules (nothing open to
the world), every ImageNet-family job file, and the ``--dry-run`` numbers at ImageNet scale with
neither the bucket nor the model reachable (loopback only: a moto S3 server, an empty HF cache)."""

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from mgd_ray.config import load_job
from mgd_ray.pipeline.stage import STAGE_NAMES
from tests.test_models import known_model

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
JOBS = {"imagenet1k": 1000, "imagenette": 10, "imagewoof": 10, "imagenet100": 100}
STAGES = list(STAGE_NAMES)


def ray_schema() -> dict:
    import ray.autoscaler
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def load_yaml(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


# ---- Ray cluster launcher configs -------------------------------------------------------------
@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_matches_rays_schema(name):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config
    cfg = load_yaml(name)
    jsonschema.Draft7Validator(ray_schema()).validate(cfg)
    # what `ray up` checks locally before it talks to the cloud: defaults merged, schema, node types
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    assert prepared["head_start_ray_commands"] == cfg["head_start_ray_commands"]
    assert prepared["setup_commands"] == cfg["setup_commands"]


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_node_types_and_setup(name):
    cfg = load_yaml(name)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}                   # nothing but the driver on the head
    gpu = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert gpu and all(v["resources"].get("GPU", 0) >= 1 for v in gpu.values())
    assert all(v["min_workers"] == 0 and v["max_workers"] >= 1 for v in gpu.values())   # scale from zero
    assert {v["resources"]["GPU"] for v in gpu.values()} >= {1, 8}
    assert sum(v["max_workers"] for v in gpu.values()) >= cfg["max_workers"] > 0
    assert cfg["idle_timeout_minutes"] > 0
    setup = "\n".join(cfg["setup_commands"])
    assert "torch==2.14.1 torchvision==0.29.1" in setup and "-e ~/mgd_ray" in setup
    assert "mgd-ray models fetch" in setup    # offline model loads; tests/test_fetch.py runs the command
    workers = "\n".join(cfg["worker_setup_commands"])
    assert "mgd_ray[gpu]" in workers and "faiss-cpu" in workers and "faiss-gpu==1.15.1" in workers
    assert cfg["file_mounts"]["~/mgd_ray"] == "."
    assert {".git", ".venv", "out"} <= set(cfg["rsync_exclude"])


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_opens_nothing_to_the_world(name):
    cfg = load_yaml(name)
    text = yaml.safe_dump(cfg)                               # comments dropped
    assert "0.0.0.0" not in text and "::/0" not in text
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head             # dashboard / job server: SSH forwarding only
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(cmds)
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "security_group" not in cfg["provider"]
    for key, t in cfg["available_node_types"].items():
        nc = t["node_config"]
        if name == "aws.yaml":
            # every node type names the restricted group, so Ray never creates its own, which
            # lets SSH in from 0.0.0.0/0
            assert nc["SecurityGroupIds"] == ["sg-REPLACE-ME"], key
        else:
            nics = nc["networkInterfaces"]
            assert all(n["subnetwork"].endswith("/subnetworks/mgd-ray") for n in nics), key
            assert "mgd-ray" in nc["tags"]["items"], key


def test_aws_bootstrap_does_not_create_the_open_security_group(monkeypatch):
    pytest.importorskip("boto3")
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.util import prepare_config

    def forbidden(*a, **k):
        raise AssertionError("Ray would create its default security group (SSH from 0.0.0.0/0)")

    monkeypatch.setattr(aws_config, "_upsert_security_groups", forbidden)
    cfg = prepare_config(load_yaml("aws.yaml"))
    out = aws_config._configure_security_group(cfg)
    assert all(t["node_config"]["SecurityGroupIds"] == ["sg-REPLACE-ME"] for t in out["available_node_types"].values())


@pytest.mark.parametrize("script,env", [
    ("aws-network.sh", {"VPC_ID": "vpc-x", "SSH_CIDR": "0.0.0.0/0"}),
    ("gcp-network.sh", {"PROJECT": "p", "SSH_CIDR": "0.0.0.0/0"}),
])
def test_network_scripts_refuse_the_world(script, env, tmp_path):
    # PATH without aws/gcloud: the script must refuse before calling either
    r = subprocess.run(["bash", str(CLUSTER / script)], env={"PATH": "/usr/bin:/bin", **env},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "refusing" in r.stderr


# ---- KubeRay ----------------------------------------------------------------------------------
def test_kuberay_rayjob_structure():
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text()) if d]
    jobs = [d for d in docs if d["kind"] == "RayJob"]
    assert len(jobs) == 1
    job = jobs[0]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"] == "python -m mgd_ray.distill jobs/imagenet1k.yaml"
    assert (ROOT / spec["entrypoint"].split()[-1]).is_file()
    rt = yaml.safe_load(spec["runtimeEnvYAML"])
    assert {".git", ".venv", "out"} <= set(rt["excludes"])
    assert spec["shutdownAfterJobFinishes"] is True
    rc = spec["rayClusterSpec"]
    assert rc["enableInTreeAutoscaling"] is True and rc["rayVersion"] == "2.60.0"
    assert rc["authOptions"]["mode"] == "token"
    head = rc["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert str(head["rayStartParams"].get("num-cpus")) == "0"
    head_res = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_res.get("limits", {})
    groups = rc["workerGroupSpecs"]
    assert groups
    gpus = set()
    for g in groups:
        assert g["minReplicas"] == 0 < g["maxReplicas"] and g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
        c = g["template"]["spec"]["containers"][0]
        n = int(c["resources"]["limits"]["nvidia.com/gpu"])
        assert n >= 1 and int(c["resources"]["requests"]["nvidia.com/gpu"]) == n
        gpus.add(n)
    assert gpus >= {1, 8}
    # nothing exposed outside the Kubernetes cluster
    for d in docs:
        assert d["kind"] not in ("Ingress", "Gateway")
        if d["kind"] == "Service":
            assert d["spec"].get("type", "ClusterIP") == "ClusterIP"
    text = (CLUSTER / "kuberay.yaml").read_text()
    assert "LoadBalancer" not in text.replace("no LoadBalancer", "") and "NodePort" not in text.replace(
        "NodePort or Ingress", "")


def test_dockerfile_installs_the_package_and_models():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311", text, re.M)
    assert "torch==2.14.1 torchvision==0.29.1" in text and '-e ".[gpu]"' in text and "mgd-ray models fetch" in text   # test_fetch.py runs it
    assert "faiss-gpu==1.15.1" in text and "cu12" not in text


def test_gpu_extra_is_faiss_gpu_at_the_faiss_cpu_version():
    """The design names faiss-gpu; its version matches faiss-cpu's, so both builds run the same FAISS."""
    import tomllib
    proj = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())["project"]
    cpu = next(d for d in proj["dependencies"] if d.startswith("faiss-cpu=="))
    assert proj["optional-dependencies"]["gpu"] == ["faiss-gpu==" + cpu.split("==")[1]]
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "out"} <= set(ignore)


# ---- job files --------------------------------------------------------------------------------
def variants(path: Path) -> dict[str, list[str]]:
    """``# variant NAME: --set a=b --set c=d`` lines of a job file's header."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^# variant (\S+): (.*)$", line)
        if m:
            out[m.group(1)] = re.findall(r"--set (\S+)", m.group(2))
    return out


@pytest.mark.parametrize("name", sorted(JOBS))
def test_job_file_validates_with_reference_settings(name):
    path = ROOT / "jobs" / f"{name}.yaml"
    job = load_job(path)
    assert job.name == f"{name}-ipc10" and job.method == "manifoldgd"
    d = job.data
    assert d.source == "imagefolder" and d.root.startswith("s3://") and d.class_list == name
    assert job.model.generator == "facebook/DiT-XL-2-256" and job.model.vae == "stabilityai/sd-vae-ft-mse"
    assert (job.model.dtype, job.model.device, job.model.allow_download) == ("bfloat16", "auto", False)
    assert job.encode.image_size == 256 and job.encode.preprocess == "center-crop"
    s, g, gen = job.sampler, job.guidance, job.generate
    assert (s.kind, s.steps, s.cfg_scale, s.cfg_channels) == ("ddpm", 50, 4.0, "first3")
    assert (g.lam_mode, g.t_stop, g.warm, g.radius_mult, g.radius_kind) == (0.1, 25, 5, 2.0, "exp")
    # the shipped ManifoldGD default (issue 10 §4), not the beta-1 / d-3 rule measured to collapse to DiT
    assert (g.basis, g.beta, g.d, g.K, g.beta_schedule, g.t_project) == ("members", 1.0, 8, 16, "constant", None)
    assert g.radius == (0.05 if name == "imagenette" else 0.1)
    assert gen.ipc == 10 and gen.seeds == [0, 1, 2] and gen.targets_per_unit == 10
    # GPU sizing: autoscaled encode pool, a fixed generator pool, GPU evaluation
    assert job.encode.min_actors == 1 and job.encode.max_actors > 1 and job.encode.num_gpus > 0
    assert 8 <= gen.num_actors <= 64 and gen.num_gpus == 1 and gen.batch_size == 64
    assert job.encode.batch_size == 256
    ev = job.evaluate
    if name == "imagenet1k":      # the ImageNet-1K soft-label protocol (RDED's), the teacher fetched from the hub
        assert ev.protocol == "soft-label-imagenet" and ev.students == ["resnet18"]
        assert ev.teacher == "hub:timm/resnet18.tv_in1k" and ev.image_size == 256
    else:
        assert ev.protocol == "hard-label" and ev.students == ["resnetap10", "convnet6", "resnet18"]
    assert ev.gpus_per_worker == 1 and "random-real" in ev.baselines
    assert job.output.dir.startswith("s3://")
    assert job.ray.address is None                          # ray job submit sets RAY_ADDRESS


@pytest.mark.parametrize("name", sorted(JOBS))
def test_job_variants_validate(name):
    path = ROOT / "jobs" / f"{name}.yaml"
    vs = variants(path)
    assert "ipc50" in vs
    if name == "imagenet100":
        assert "ipc20" in vs
    for vname, sets in vs.items():
        job = load_job(path, sets)
        ipc = int(vname.removeprefix("ipc"))
        assert job.generate.ipc == ipc and job.generate.targets_per_unit == ipc
        assert job.name == f"{name}-{vname}" and job.output.dir.endswith(f"/{name}-{vname}")


@pytest.mark.parametrize("name", sorted(JOBS))
def test_job_label_order_preflight(name):
    """The class list maps onto DiT-XL/2's labels: each wnid's index in the sorted ImageNet-1K list."""
    from mgd_ray.data.classlists import imagenet1k, load_class_list
    from mgd_ray.pipeline.labels import check_label_order, generator_labels
    job = load_job(ROOT / "jobs" / f"{name}.yaml")
    cl = load_class_list(job.data.class_list)
    assert len(cl) == JOBS[name]
    info = known_info()
    check_label_order(cl, info)
    labels = generator_labels(cl, info)
    ref = imagenet1k().names
    assert labels == [ref.index(w) for w in cl.names] and len(set(labels)) == len(labels)
    if name == "imagenet1k":
        assert labels == list(range(1000))


def known_info():
    from mgd_ray import known
    return known_model(known.DIT_XL_2_256, known.SD_VAE_FT_MSE)


def test_wrong_class_list_fails_the_preflight():
    from mgd_ray.data.classlists import ClassList
    from mgd_ray.data.errors import DataError
    from mgd_ray.pipeline.labels import check_label_order
    from mgd_ray.models import ModelError
    not_wnids = ClassList(name="cifar", version="1", names=tuple(f"class{i}" for i in range(10)))
    with pytest.raises((DataError, ModelError), match="wnid"):
        check_label_order(not_wnids, known_info())


# ---- --dry-run at ImageNet scale ----------------------------------------------------------------
def unreachable_bucket(moto_s3) -> list[str]:
    """Point the job's s3:// root at the loopback moto server, where YOUR-BUCKET does not exist."""
    return [f"data.storage_options={json.dumps(moto_s3.storage_options)}"]


def check_imagenet1k_numbers(p: dict, ipc: int = 10):
    assert p["classes"] == 1000 and p["class_list"] == "imagenet1k"
    assert p["images_to_encode"] == 1_281_167 and p["images_to_encode_exact"] is True
    assert p["test_images"] == 50_000
    assert p["generation_seeds"] == 3 and p["seeds"] == [0, 1, 2]
    assert p["images_to_generate_per_seed"] == ipc * 1000
    assert p["images_to_generate"] == ipc * 1000 * 3
    assert p["dit_forward_passes_per_seed"] == ipc * 1000 * 50 * 2
    assert p["dit_forward_passes"] == ipc * 1000 * 50 * 2 * 3
    assert p["work_units"] == 1000 * 3      # each variant sets targets_per_unit = ipc: one unit per class and seed
    m = p["model"]
    assert m["latent"] == [4, 32, 32] and m["classes"] == 1000 and m["learned_sigma"] is True
    assert m["scaling_factor"] == pytest.approx(0.18215)
    e = p["estimate"]
    # the seconds per forward follow from the assumptions the plan prints and the DiT paper's
    # 118.6 GMACs per DiT-XL/2 forward (Table 4; 2 FLOPs per multiply-accumulate)
    dit = e["stages"]["generate_dit"]
    basis = dit["throughput_basis"]
    util = float(re.search(r"at (\d+)% \(assumed\)", basis).group(1)) / 100
    peak = float(re.search(r"of (\d+) TFLOP/s bf16", basis).group(1)) * 1e12
    assert dit["seconds_per_forward_per_image"] == pytest.approx(2 * 118.6e9 / (util * peak), rel=0.01)
    assert dit["device_hours"] == pytest.approx(p["dit_forward_passes"] * dit["seconds_per_forward_per_image"] / 3600,
                                                rel=0.01)
    # units of several classes share a DiT call: 6 units of 10 at batch 64 (IPC 10), 1 unit of 50 (IPC 50)
    assert p["dit_batch_images"]["max"] == (60 if ipc == 10 else 50)
    assert e["total_device_hours"] > e["stages"]["generate_dit"]["device_hours"] > 0
    text = "\n".join(p["summary"])
    assert "1,281,167" in text and "1,000 classes" in text
    assert f"{ipc * 1000:,} images to generate per seed" in text and "x 3 generation seed(s)" in text
    assert f"{ipc * 1000 * 100:,} DiT forward passes per seed" in text


def test_dry_run_imagenet1k_without_data_or_model(moto_s3, offline_hf):
    from mgd_ray.pipeline.plan import dry_run_plan
    job = load_job(ROOT / "jobs" / "imagenet1k.yaml", unreachable_bucket(moto_s3))
    p = dry_run_plan(job, STAGES)
    check_imagenet1k_numbers(p)
    assert "ILSVRC-2012" in p["data_basis"] and p["data_fallback"]["reason"]
    assert p["model"]["facts_from"].count("known table") == 2
    assert p["generator_labels"]["first"] == [0, 1, 2, 3, 4] and p["generator_labels"]["last"] == 999
    soft, hard, hard_tv = p["estimate"]["stages"]["evaluate"]["protocols"]
    # first the soft-label ImageNet protocol (RDED's): torchvision's ResNet-18, distilled + random-real x 3 seeds
    assert soft["name"] == "soft-label-imagenet" and soft["trials"] == 6 and soft["image_px"] == 224
    assert set(soft["per_student"]) == {"resnet18"}
    # then the paper's hard-label protocol: its three instance-norm students, 224 px
    assert hard["name"] == "hard-label" and hard["trials"] == 18 and hard["image_px"] == 224
    assert list(hard["per_student"]) == ["resnetap10", "convnet6", "resnet18"]
    # and RDED's recipe with hard labels: the first protocol's student, for its HLR
    assert hard_tv["name"] == "hard-label-imagenet" and hard_tv["trials"] == 6 and set(hard_tv["per_student"]) == {"resnet18"}
    assert p["resources"]["evaluate"].startswith("1 TorchTrainer per protocol (3 protocols, one after another)")
    assert not any(offline_hf.iterdir())                    # nothing was downloaded


def test_dry_run_cli_ipc50(moto_s3, offline_hf):
    from typer.testing import CliRunner

    from mgd_ray.cli import app
    sets = variants(ROOT / "jobs" / "imagenet1k.yaml")["ipc50"] + unreachable_bucket(moto_s3)
    args = ["distill", str(ROOT / "jobs" / "imagenet1k.yaml"), "--dry-run"]
    for s in sets:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = r.stdout
    p = json.loads(out[out.index("{\n"):])                  # the plan; log lines come before it
    check_imagenet1k_numbers(p, ipc=50)


def _fake_cache(hub: Path, repo: str, files: dict[str, dict]):
    base = hub / f"models--{repo.replace('/', '--')}"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(sha)
    for name, content in files.items():
        f = base / "snapshots" / sha / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(content))


def test_dry_run_reads_configs_from_the_hf_cache(moto_s3, offline_hf):
    from mgd_ray import known
    from mgd_ray.pipeline.plan import dry_run_plan
    _fake_cache(offline_hf, known.DIT_XL_2_256, {"transformer/config.json": known.TRANSFORMER_CONFIGS[known.DIT_XL_2_256]})
    vae_cfg = dict(known.VAE_CONFIGS[known.SD_VAE_FT_MSE])
    vae_cfg.pop("scaling_factor")                            # as old hub configs: diffusers' default applies
    _fake_cache(offline_hf, known.SD_VAE_FT_MSE, {"config.json": vae_cfg})
    p = dry_run_plan(load_job(ROOT / "jobs" / "imagenet1k.yaml", unreachable_bucket(moto_s3)), STAGES)
    check_imagenet1k_numbers(p)
    assert p["model"]["facts_from"].count("Hugging Face cache") == 2 and "known table" not in p["model"]["facts_from"]


def test_dry_run_subset_gives_bounds(moto_s3, offline_hf):
    from mgd_ray.pipeline.plan import dry_run_plan
    p = dry_run_plan(load_job(ROOT / "jobs" / "imagenette.yaml", unreachable_bucket(moto_s3)), STAGES)
    assert p["classes"] == 10 and p["test_images"] == 500
    assert p["images_to_encode"] == 13_000 and p["images_to_encode_exact"] is False
    assert "at most 13,000" in p["summary"][0]
    assert p["images_to_generate"] == 300 and p["dit_forward_passes_per_seed"] == 10 * 10 * 100
    assert p["generator_labels"]["first"][0] == 0                   # tench


def test_dry_run_still_fails_on_a_wrong_class(moto_s3, offline_hf):
    from mgd_ray.data.errors import DataError
    from mgd_ray.pipeline.plan import dry_run_plan
    job = load_job(ROOT / "jobs" / "imagenet1k.yaml", unreachable_bucket(moto_s3) + ["data.classes=[n99999999]"])
    with pytest.raises(DataError, match="n99999999"):
        dry_run_plan(job, STAGES)


def test_dry_run_does_not_hide_a_broken_reachable_dataset(tmp_path, offline_hf):
    """A reachable dataset with missing class folders is a data error, not a reason to guess."""
    from PIL import Image

    from mgd_ray.data.errors import DataError
    from mgd_ray.pipeline.plan import dry_run_plan
    d = tmp_path / "imagenet" / "train" / "n01440764"
    d.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(d / "a.png")
    job = load_job(ROOT / "jobs" / "imagenette.yaml", [f"data.root={tmp_path / 'imagenet'}"])
    with pytest.raises(DataError, match="no directory"):
        dry_run_plan(job, STAGES)


def test_dry_run_unknown_hub_model_says_how_to_fix(moto_s3, offline_hf):
    from mgd_ray.models import ModelError
    from mgd_ray.pipeline.plan import dry_run_plan
    job = load_job(ROOT / "jobs" / "imagenet1k.yaml", unreachable_bucket(moto_s3) + ["model.generator=someone/DiT-B-4"])
    with pytest.raises(ModelError) as e:
        dry_run_plan(job, STAGES)
    assert "someone/DiT-B-4" in str(e.value) and "allow_download" in str(e.value)


def test_dry_run_small_data_still_lists_the_source(tiny_prior):
    from mgd_ray.pipeline.plan import dry_run_plan
    job = load_job(ROOT / "jobs" / "digits.yaml", [f"model.generator={tiny_prior}"])
    p = dry_run_plan(job, STAGES)
    assert p["classes"] == 10 and p["images_to_encode_exact"] and "data_fallback" not in p
    assert p["images_to_encode"] + p["test_images"] == 1797
    assert "config file" in p["model"]["facts_from"]
    assert "FlopCounterMode" in p["estimate"]["stages"]["generate_dit"]["throughput_basis"]   # an estimate ran
    assert any("CPU core-hours" in line for line in p["summary"])   # a CPU job: its hours are core-hours


def test_dit_xl_flop_table_matches_a_count():
    """The published FLOPs the plan uses for DiT-XL/2 agree with a count on the meta device."""
    import dataclasses

    from mgd_ray import known
    from mgd_ray.pipeline.plan.flops import dit_forward_flops
    info = known_model(known.DIT_XL_2_256, known.SD_VAE_FT_MSE)
    table, src = dit_forward_flops(info)
    assert table == known.DIT_XL_2_256_FLOPS and "Table 4" in src
    cfg = dict(info.transformer_config, _class_name="DiTTransformer2DModel")   # another dict: counted, not looked up
    counted, how = dit_forward_flops(dataclasses.replace(info, transformer_config=cfg))
    assert "FlopCounterMode" in how and counted == pytest.approx(table, rel=0.001)
