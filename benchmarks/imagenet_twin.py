"""The ImageNet-1K scale twin's inputs: synthetic images under the real wnids, and tiny random
models of the real diffusers classes whose latent is 4x32x32 (D = 4,096, as DiT-XL/2-256's).

    python -m benchmarks.imagenet_twin OUT [--classes 1000] [--train-per-class 50] [--test-per-class 2]
                                           [--image-size 64]

writes (deterministically: the same command gives the same pixels)
    OUT/imagefolder/{train,test}/<wnid>/<wnid>_<i>.png          ImageFolder variant
    OUT/parquet/{train,test}/part-<k>.parquet                   Parquet variant (image bytes,
                                                                label = ImageNet-1K index, class_name = wnid)
    OUT/models/{transformer,vae}/ + model_index.json            DiT (1000 classes, learned sigma,
                                                                hub's legacy class name) + VAE, 64 px -> 4x32x32

``jobs/imagenet1k-twin.yaml`` runs ``jobs/imagenet1k.yaml`` on them. The classes are a fixed
spread over the 1,000 sorted wnids (every (1000 // C)-th), so labels in the selection differ from
the generator's label ids, as in any real subset. Every image's pixels depend only on
(wnid, split, index), so a 10-class set is a subset of the 100-class one.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

IMAGE_SIZE = 64          # the twin VAE halves it once: 64 px -> 32 x 32 latent
LATENT = (4, 32, 32)     # D = 4,096


def twin_wnids(classes: int) -> list[str]:
    """``classes`` wnids spread over ImageNet-1K's sorted list (all 1,000 when classes = 1000)."""
    from mgd_ray.data.classlists import imagenet1k
    names = list(imagenet1k().names)
    if not 1 <= classes <= len(names):
        raise SystemExit(f"--classes must be 1..{len(names)} (got {classes})")
    return names[::len(names) // classes][:classes]


def twin_image(imagenet_index: int, split: str, i: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size, 3) uint8: a class-coloured smooth pattern plus seeded noise."""
    rng = np.random.default_rng([imagenet_index, 0 if split == "train" else 1, i])
    yy, xx = np.mgrid[0:size, 0:size] / size
    a, b, c = (imagenet_index * np.array([0.37, 0.61, 0.13])) % 1.0
    base = np.stack([(xx + a) % 1, (yy * (1 + 3 * b)) % 1, (xx * yy + c) % 1], -1)
    return np.clip(base * 255 + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def png(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _images(wnids: list[str], split: str, n: int, size: int = IMAGE_SIZE):
    from mgd_ray.data.classlists import imagenet1k
    full = imagenet1k()
    for wnid in wnids:
        k = full.index(wnid)
        for i in range(n):
            yield wnid, k, i, png(twin_image(k, split, i, size))


def write_imagefolder(root: Path, wnids: list[str], n_train: int, n_test: int, image_size: int = IMAGE_SIZE) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for wnid, _, i, data in _images(wnids, split, n, image_size):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{wnid}_{i:05d}.png").write_bytes(data)
    return root


def write_parquet(root: Path, wnids: list[str], n_train: int, n_test: int, rows_per_file: int = 10000,
                  image_size: int = IMAGE_SIZE) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        buf: dict[str, list] = {"image": [], "label": [], "class_name": []}
        part = 0

        def flush():
            nonlocal part
            if buf["image"]:
                pq.write_table(pa.table({"image": pa.array(buf["image"], pa.binary()),
                                         "label": pa.array(buf["label"], pa.int64()),
                                         "class_name": pa.array(buf["class_name"], pa.string())}),
                               root / split / f"part-{part:05d}.parquet")
                part += 1
                for v in buf.values():
                    v.clear()

        for wnid, k, _, data in _images(wnids, split, n, image_size):
            buf["image"].append(data)
            buf["label"].append(k)
            buf["class_name"].append(wnid)
            if len(buf["image"]) >= rows_per_file:
                flush()
        flush()
    return root


def build_twin_models(seed: int = 0):
    """(DiTTransformer2DModel, AutoencoderKL), randomly initialised, real classes: 1000 classes,
    learned sigma, patch 2 over a 4x32x32 latent (256 tokens); a one-downsampling 64 px VAE."""
    import torch

    from mgd_ray.models import build_dit, build_vae
    torch.manual_seed(seed)
    dit = build_dit(1000, LATENT[0], LATENT[1], patch_size=2, num_layers=1, num_heads=2, head_dim=16)
    vae = build_vae(3, (16, 32), LATENT[0], sample_size=IMAGE_SIZE, scaling_factor=0.5)
    return dit.eval(), vae.eval()


def write_models(path: Path, seed: int = 0) -> Path:
    from mgd_ray.models import save_generator
    dit, vae = build_twin_models(seed)
    return save_generator(dit, vae, path, legacy_class_name=True)


def make_twin(out: Path, classes: int, train_per_class: int, test_per_class: int,
              formats=("imagefolder", "parquet"), image_size: int = IMAGE_SIZE) -> dict:
    """Write the twin's data and models under ``out``; skipped when ``out/twin.json`` says the
    same settings were written already. ``image_size``: the images' side in pixels (the twin VAE's
    64 by default; 256 for DiT-XL/2-256's VAE, as ``benchmarks.fullsize_twin`` uses)."""
    out = Path(out)
    spec = {"classes": classes, "train_per_class": train_per_class, "test_per_class": test_per_class,
            "formats": sorted(formats), "image_size": image_size, "latent": list(LATENT)}
    marker = out / "twin.json"
    if marker.is_file() and json.loads(marker.read_text()).get("spec") == spec:
        return json.loads(marker.read_text())
    if marker.is_file():
        raise SystemExit(f"{out} holds a twin made with other settings ({marker}); use another directory")
    wnids = twin_wnids(classes)
    if "imagefolder" in formats:
        write_imagefolder(out / "imagefolder", wnids, train_per_class, test_per_class, image_size)
    if "parquet" in formats:
        write_parquet(out / "parquet", wnids, train_per_class, test_per_class, image_size=image_size)
    write_models(out / "models")
    rec = {"spec": spec, "wnids": wnids}
    marker.write_text(json.dumps(rec))
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--train-per-class", type=int, default=50)
    ap.add_argument("--test-per-class", type=int, default=2)
    ap.add_argument("--formats", default="imagefolder,parquet")
    ap.add_argument("--image-size", type=int, default=IMAGE_SIZE,
                    help="image side in pixels (64: the twin VAE's; 256: DiT-XL/2-256's)")
    a = ap.parse_args(argv)
    rec = make_twin(a.out, a.classes, a.train_per_class, a.test_per_class, tuple(a.formats.split(",")),
                    a.image_size)
    print(f"twin under {a.out}: {len(rec['wnids'])} wnids x {a.train_per_class} train / {a.test_per_class} test "
          f"{a.image_size}-px images ({a.formats}), models in {a.out / 'models'}")


if __name__ == "__main__":
    main()
