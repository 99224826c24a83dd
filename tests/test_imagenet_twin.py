"""The ImageNet twin: ``jobs/imagenet1k.yaml`` itself, run end to end on CPU with ``--set``
overrides that point it at a tiny local ImageFolder (3 ImageNet wnids) and tiny random models of
the real classes saved in the hub layout (legacy ``Transformer2DModel`` class name, 1000 classes).

What it proves without a cluster: the real job file, the imagefolder source with wnid folders,
the class list -> DiT label mapping (the generator is conditioned on the ImageNet-1K index of each
wnid, not on the position in the selection), model loading from a hub-shaped directory, the
encode -> coreset -> generate -> evaluate stages and the output contract.
"""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mgd_ray.config import load_job
from mgd_ray.data.classlists import imagenet1k

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "imagenet1k.yaml"
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

# selection order != ImageNet order: labels 0, 1, 2 must be conditioned as 701, 0, 217
WNIDS = ["n03888257", "n01440764", "n02102040"]        # parachute, tench, English springer
IMAGENET_IDS = [701, 0, 217]
SIZE = 32


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def make_imagefolder(root: Path, n_train: int = 6, n_test: int = 2, sizes=None) -> Path:
    """``root/{train,test}/<wnid>/*.png``: smooth class-coloured 32x32 images with noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for split, n in (("train", n_train), ("test", n_test)):
        for c, wnid in enumerate(WNIDS):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                h, w = (sizes[i % len(sizes)] if sizes else (SIZE, SIZE))
                base = np.stack([(xx + c / 3) % 1, (yy * (c + 1)) % 1, np.full_like(xx, c / 2)], -1)
                img = np.clip(base * 255 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
                if (h, w) != (SIZE, SIZE):
                    from PIL import Image
                    img = np.asarray(Image.fromarray(img).resize((w, h)))
                (d / f"{wnid}_{i:04d}.png").write_bytes(_png(img))
    return root


@pytest.fixture(scope="module")
def hub_models(tmp_path_factory):
    """Tiny random DiT (1000 classes, learned sigma) + 2-level VAE in the hub layout, legacy class name."""
    import torch

    from mgd_ray.models import build_dit, build_vae, save_generator
    torch.manual_seed(0)
    dit = build_dit(1000, 4, SIZE // 2, patch_size=2)
    vae = build_vae(3, (16, 32), 4, sample_size=SIZE, scaling_factor=0.5)
    d = save_generator(dit.eval(), vae.eval(), tmp_path_factory.mktemp("dit-hub-layout"), legacy_class_name=True)
    assert json.loads((d / "transformer" / "config.json").read_text())["_class_name"] == "Transformer2DModel"
    return d


def twin_overrides(data_root: Path, models: Path, out: Path) -> list[str]:
    return [
        f"data.root={data_root}",
        f"data.classes=[{', '.join(WNIDS)}]",
        f"model.generator={models}",
        "model.vae=null",
        "model.dtype=float32",
        "model.device=cpu",
        f"encode.image_size={SIZE}",
        "encode.batch_size=16", "encode.min_actors=1", "encode.max_actors=1",
        "encode.num_cpus=0.5", "encode.num_gpus=0",
        "generate.ipc=2", "generate.seeds=[0]", "generate.targets_per_unit=2", "generate.batch_size=2",
        "generate.num_actors=1", "generate.num_cpus=0.5", "generate.num_gpus=0",
        "sampler.steps=4",
        "guidance.t_stop=1", "guidance.warm=1",          # 4 steps: let the guidance act on t = 3, 2
        "evaluate.protocol=hard-label",                   # the soft-label-imagenet run: test_soft_label_imagenet.py
        "evaluate.also=[]",                               # the job file's second protocol is this one here
        "evaluate.students=[convnet3]", "evaluate.epochs=1", "evaluate.train_seeds=1",
        "evaluate.num_workers=1", "evaluate.cpus_per_worker=0.5", "evaluate.gpus_per_worker=0",
        f"evaluate.image_size={SIZE}",
        "evaluate.metrics=false",     # Inception features on the twin: test_soft_label_imagenet.py (a stand-in)
        f"output.dir={out}",
    ]


@pytest.mark.slow   # ~2-3 min on this (shared, 2-core) machine: Ray Data + actors + Ray Train
def test_imagenet1k_job_twin(ray_cluster, hub_models, tmp_path):
    from PIL import Image

    from mgd_ray.data import open_source
    from mgd_ray.pipeline.driver import run_job
    from mgd_ray.pipeline.labels import generator_labels
    from mgd_ray.models import load_generator

    data = make_imagefolder(tmp_path / "imagenet")
    out = tmp_path / "out"
    job = load_job(JOB, twin_overrides(data, hub_models, out))
    # the job file's own settings survive the overrides
    assert job.model.vae is None and job.data.class_list == "imagenet1k"
    assert job.sampler.cfg_channels == "first3" and job.sampler.cfg_scale == 4.0
    assert job.guidance.K == 16 and job.guidance.d == 8 and job.generate.batch_size == 2
    assert job.guidance.basis == "members"

    # the class list -> generator label mapping the pipeline uses
    source = open_source(job.data)
    _, _, info = load_generator(str(hub_models))
    assert type(load_generator(str(hub_models))[0]).__name__ == "DiTTransformer2DModel"
    assert list(source.classes.names) == WNIDS
    assert generator_labels(source.classes, info) == IMAGENET_IDS == [imagenet1k().names.index(w) for w in WNIDS]

    m = run_job(job)
    assert m["status"] == "complete", m.get("status")
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and man["classes"] == WNIDS
    assert man["counts"] == {**man["counts"], "classes": 3, "ipc": 2, "images": 6}
    assert man["model"]["num_classes"] == 1000 and man["model"]["null_label"] == 1000
    assert man["method"]["choices"]["cfg_channels"] == "first3"

    # shards: labels are positions in the selection, class names the wnids
    rows = []
    for f in sorted((out / "shards").glob("*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    assert len(rows) == 6
    assert {(r["label"], r["class_name"]) for r in rows} == {(i, w) for i, w in enumerate(WNIDS)}
    for r in rows:
        im = np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])))
        assert im.shape == (SIZE, SIZE, 3) and im.dtype == np.uint8
    res, = json.loads((out / "results.json").read_text())["protocols"]      # the twin drops the second protocol
    assert res["protocol"] == "hard-label" and "convnet3" in res["results"]["manifoldgd"]

    # the generator actor was conditioned on the ImageNet ids: regenerate each unit here with the
    # same code and compare with what the actor committed, for the right ids and for the wrong ones
    import torch

    from mgd_ray.method import neighbourhood_for_target
    from mgd_ray.pipeline.generate import attach_targets
    from mgd_ray.pipeline.generation import GenerationPipeline
    from mgd_ray.pipeline.generator import target_of
    from mgd_ray.pipeline.workers import load_models, read_class_latents, read_targets
    from mgd_ray.pipeline.store import Store
    from mgd_ray.pipeline.units import decode_png, make_units, sample_id
    torch.set_num_threads(1)
    targets = pq.read_table(out / "coreset" / "targets.parquet", columns=["gen_seed", "label", "index"])
    store = Store(str(out))
    pipe = GenerationPipeline.from_job(job, *load_models(job, "cpu"))     # the actor's pipeline, no Ray
    by_id = {r["sample_id"]: decode_png(r["image"]).astype(int) for r in rows}

    def regenerate(gen_labels):
        units = make_units([0], [0, 1, 2], WNIDS, 2, 2, gen_labels)
        attach_targets(units, targets)
        tg = read_targets(store, [0, 1, 2], [i for u in units for i in u.target_ids])
        items = [(u, tg[i]) for u in units for i in u.target_ids]
        lat = {lab: read_class_latents(store, lab) for lab in (0, 1, 2)}                  # (ids, Z)
        nbrs = [neighbourhood_for_target(lat[u.label][1], lat[u.label][0], target_of(t),
                                         job.coreset.neighbourhood_max, pipe.min_neighbours) for u, t in items]
        imgs = pipe([u.model_label for u, _ in items], [t["seed"] for _, t in items], [t["target"] for _, t in items],
                    nbrs)
        return {sample_id(u.gen_seed, u.label, t["index"]): img.astype(int) for (u, t), img in zip(items, imgs)}

    right, wrong = regenerate(IMAGENET_IDS), regenerate([0, 1, 2])
    for sid, img in by_id.items():
        assert np.abs(img - right[sid]).max() <= 1, sid           # same pixels (up to rounding)
    assert max(np.abs(img - wrong[sid]).max() for sid, img in by_id.items()) > 8


def test_imagenet_twin_encode_variable_sizes(ray_cluster, hub_models, tmp_path):
    """Real ImageNet JPEGs come in many sizes: the encode stage brings them to encode.image_size."""
    from mgd_ray.pipeline.driver import run_job
    data = make_imagefolder(tmp_path / "imagenet", n_train=4, n_test=1, sizes=[(40, 48), (36, 32), (57, 64)])
    out = tmp_path / "out"
    m = run_job(load_job(JOB, twin_overrides(data, hub_models, out)), stages=["encode"])
    assert m["status"] == "partial" and m["encode"]["rows"] == 12
    from mgd_ray.pipeline.workers import read_class_latents
    from mgd_ray.pipeline.store import Store
    for label in range(3):
        ids, Z = read_class_latents(Store(str(out)), label)
        assert Z.shape == (4, 4 * (SIZE // 2) ** 2) and np.isfinite(Z).all()


@pytest.mark.slow
def test_imagenet_twin_full_run_variable_sizes(ray_cluster, hub_models, tmp_path):
    from mgd_ray.pipeline.driver import run_job
    data = make_imagefolder(tmp_path / "imagenet", n_train=4, n_test=2, sizes=[(40, 48), (36, 32), (57, 64)])
    m = run_job(load_job(JOB, twin_overrides(data, hub_models, tmp_path / "out")))
    assert m["status"] == "complete"
