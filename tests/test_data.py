"""Data sources, class lists and preprocessing. No network; no Ray (the Ray path is checked elsewhere)."""
from __future__ import annotations

import io
import json
import types
from pathlib import Path

import numpy as np
import pytest

from mgd_ray.data import (BUILTIN_LISTS, ClassList, DataError, imagenet1k, load_class_list, open_source,
                          parse_class_list, preprocess, read_idx, write_idx)
from mgd_ray.data.sources import FASHION_DEFAULT_ROOT, digits_test_indices

FASHION = Path(FASHION_DEFAULT_ROOT)
NETTE = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
         "n03394916", "n03417042", "n03425413", "n03445777", "n03888257")


def png(color, size=(12, 10), mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


# -- sklearn-digits ------------------------------------------------------------------------
def test_digits_shapes_split_and_scaling():
    from sklearn.datasets import load_digits

    src = open_source({"source": "sklearn-digits"})
    tr, te = src.arrays("train"), src.arrays("test")
    assert tr["image"].shape == (1347, 8, 8, 1) and te["image"].shape == (450, 8, 8, 1)
    assert tr["image"].dtype == np.uint8 and tr["image"].max() == 255
    assert np.array_equal(tr["id"], np.arange(1347)) and np.array_equal(te["id"], np.arange(450))
    assert src.classes.names == tuple("0123456789")
    assert list(te["class_name"][:3]) == [str(x) for x in te["label"][:3]]
    # stratified 25 %: per class round(0.25 * n_c) in test
    d = load_digits()
    counts = np.bincount(d.target)
    assert np.array_equal(np.bincount(te["label"], minlength=10), np.rint(counts * 0.25).astype(int))
    # test rows are exactly the seeded indices, in original order, scaled 0..16 -> 0..255
    idx = digits_test_indices(d.target)
    assert idx[:8].tolist() == [1, 5, 9, 12, 14, 15, 16, 17]  # pinned: the split must never move
    assert np.array_equal(te["label"], d.target[idx])
    assert np.array_equal(te["image"][..., 0], np.rint(d.images[idx] * 255 / 16).astype(np.uint8))
    assert src.num_rows("train") == 1347 and src.describe()["rows"] == {"train": 1347, "test": 450}


def test_digits_deterministic_and_disjoint():
    a = open_source({"source": "sklearn-digits"}).arrays("train")
    b = open_source(types.SimpleNamespace(source="sklearn-digits", classes=None, limit_per_class=None)).arrays("train")
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    from sklearn.datasets import load_digits

    n = len(load_digits().target)
    test = set(digits_test_indices(load_digits().target).tolist())
    assert len(test) == 450 and n - len(test) == 1347


def test_class_subset_limit_and_order():
    src = open_source({"source": "sklearn-digits", "classes": [7, "3"], "limit_per_class": 5})
    assert src.classes.names == ("7", "3") and src.classes.parent_labels == (7, 3)
    a = src.arrays("train")
    assert len(a["id"]) == 10 and set(a["label"]) == {0, 1}
    assert all(src.classes.names[lab] == cn for lab, cn in zip(a["label"], a["class_name"]))
    full = open_source({"source": "sklearn-digits"}).arrays("train")
    for lab, name in enumerate(("7", "3")):
        first5 = full["id"][full["class_name"] == name][:5]          # first 5 ids of that class
        assert np.array_equal(a["id"][a["label"] == lab], first5)
        assert np.array_equal(a["image"][a["label"] == lab], full["image"][first5])
    # the test split uses test_limit_per_class, not limit_per_class
    assert src.num_rows("test") == int(np.isin(open_source({"source": "sklearn-digits"}).arrays("test")["class_name"],
                                               ["3", "7"]).sum())
    assert src.num_rows("train", classes=[1]) == 5 and src.num_rows("train", limit_per_class=None) > 200


def test_unknown_class_lists_valid_choices():
    with pytest.raises(DataError) as e:
        open_source({"source": "sklearn-digits", "classes": ["11"]}).classes
    assert "'11'" in str(e.value) and "Valid choices: 0, 1, 2, 3" in str(e.value) and "data.classes" in str(e.value)
    with pytest.raises(DataError, match="Did you mean 'Sneaker'"):
        FASHION_CLASSLIST().index("Sneakers")
    with pytest.raises(DataError, match="unknown data source 'mnist'.*sklearn-digits"):
        open_source({"source": "mnist"})
    with pytest.raises(DataError, match="unknown split 'val'"):
        open_source({"source": "sklearn-digits"}).arrays("val")


def FASHION_CLASSLIST():
    from mgd_ray.data.classlists import fixed_list
    from mgd_ray.data.sources import FASHION_CLASSES

    return fixed_list("fashion-mnist", FASHION_CLASSES, "test")


# -- Fashion-MNIST and IDX -----------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion():
    if not FASHION.is_dir():
        pytest.skip(f"{FASHION} absent: `apt-get install dataset-fashion-mnist` (CI installs it)")
    return open_source({"source": "fashion-mnist"})


def test_fashion_mnist_real_files(fashion):
    assert fashion.num_rows("train") == 60000 and fashion.num_rows("test") == 10000
    te = fashion.arrays("test")
    assert te["image"].shape == (10000, 28, 28, 1) and te["image"].dtype == np.uint8
    assert te["label"][:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert np.bincount(te["label"]).tolist() == [1000] * 10
    tr = fashion.arrays("train", limit_per_class=2)
    assert tr["id"].tolist()[:4] == [0, 1, 2, 3]  # labels 9 0 0 3 ...
    assert tr["label"].tolist()[:4] == [9, 0, 0, 3] and tr["class_name"][0] == "Ankle boot"
    assert fashion.classes.names[0] == "T-shirt/top" and len(tr["id"]) == 20


def test_idx_round_trip_and_corruption(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        assert np.array_equal(read_idx(write_idx(tmp_path / name, imgs)), imgs)
    ints = np.array([[1, -2], [300000, 7]], dtype=np.int32)
    back = read_idx(write_idx(tmp_path / "i.idx", ints))
    assert back.dtype == np.int32 and np.array_equal(back, ints)
    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:8] == (5).to_bytes(4, "big")
    (tmp_path / "cut").write_bytes(raw[:-7])
    with pytest.raises(DataError, match="corrupt.*shape \\(5, 4, 3\\)"):
        read_idx(tmp_path / "cut")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_fashion_source_on_self_written_files(tmp_path):
    imgs = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    for split, stem in (("train", "train"), ("test", "t10k")):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte", imgs)  # uncompressed is accepted too
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.array([4, 8, 4], np.uint8))
    src = open_source({"source": "fashion-mnist", "root": str(tmp_path), "classes": ["Bag", "Coat"]})
    a = src.arrays("train")
    assert a["label"].tolist() == [1, 0, 1] and a["class_name"].tolist() == ["Coat", "Bag", "Coat"]
    assert np.array_equal(a["image"][..., 0], imgs) and a["id"].tolist() == [0, 1, 2]


def test_fashion_missing_dir_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        open_source({"source": "fashion-mnist", "root": str(missing)})
    msg = str(e.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--set data.root=DIR" in msg and "--set data.download=true" in msg


# -- imagefolder -------------------------------------------------------------------------------
COLORS = {"n01440764": (255, 0, 0), "n02102040": (0, 255, 0), "extra": (0, 0, 255)}


def imagefolder_files(corrupt=True):
    """{relative path: bytes}: 3 train / 2 test images per class dir, one corrupt, varying sizes."""
    files = {}
    for split, n in (("train", 3), ("test", 2)):
        for d, color in COLORS.items():
            for i in range(n):
                files[f"{split}/{d}/img{i}.png"] = png(color, size=(12 + i, 10))
    if corrupt:
        files["train/n01440764/broken.png"] = b"\x89PNG\r\n\x1a\nthis is not a png"
    files["train/n01440764/notes.txt"] = b"ignored"
    return files


def write_tree(root: Path, files: dict) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_imagefolder_local_labels_failures_and_sizes(tmp_path):
    root = write_tree(tmp_path / "nette", imagefolder_files())
    cfg = {"source": "imagefolder", "root": str(root), "classes": ["n02102040", "tench"], "max_failures": 5}
    src = open_source(cfg)
    assert src.classes.names == ("n02102040", "n01440764")  # the order given defines the labels
    assert src.classes.label_name(1) == "tench" and src.classes.parent_labels == (217, 0)  # DiT labels
    with pytest.raises(DataError, match="different sizes"):
        src.arrays("train")
    a = src.arrays("train", image_size=8)
    assert a["image"].shape == (6, 8, 8, 3)  # broken.png skipped; extra/ ignored
    for lab, color in ((0, (0, 255, 0)), (1, (255, 0, 0))):
        assert (a["image"][a["label"] == lab] == np.array(color, np.uint8)).all()
    assert [p.endswith("train/n01440764/broken.png") for p, _, _ in src.failures] == [True]
    t = src.failures_table()
    assert t.column_names == ["path", "split", "error"] and t.column("split").to_pylist() == ["train"]
    assert src.describe()["failures"] == 1
    # ids: position in the sorted listing of all images of the split (also the ignored dir)
    everything = open_source({"source": "imagefolder", "root": str(root), "max_failures": 5})
    assert everything.classes.names == ("extra", "n01440764", "n02102040")
    b = everything.arrays("train", image_size=8)
    assert b["id"].tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]  # id 3 = n01440764/broken.png
    same = {int(i): int(lab) for i, lab in zip(a["id"], a["label"])}
    assert all(everything.classes.names[lb] == src.classes.names[same[int(i)]]
               for i, lb in zip(b["id"], b["label"]) if int(i) in same)
    te = src.arrays("test", image_size=8)
    assert len(te["id"]) == 4 and src.failures_table().num_rows == 1


def test_imagefolder_failure_limit_and_missing_class(tmp_path):
    root = write_tree(tmp_path / "nette", imagefolder_files())
    src = open_source({"source": "imagefolder", "root": str(root), "max_failures": 0,
                       "classes": ["n01440764"]})
    with pytest.raises(DataError) as e:
        src.arrays("train", image_size=8)
    assert "1 images could not be read" in str(e.value) and "data.max_failures=0" in str(e.value)
    assert "broken.png" in str(e.value)
    with pytest.raises(DataError) as e:
        open_source({"source": "imagefolder", "root": str(root), "class_list": "imagenette"}).arrays("train")
    assert "8 classes of class list 'imagenette' have no directory" in str(e.value)
    assert "n02979186" in str(e.value) and "n01440764" not in str(e.value).split("directory in")[1]
    with pytest.raises(DataError, match="unknown class 'nope'.*Valid choices: extra, n01440764, n02102040"):
        open_source({"source": "imagefolder", "root": str(root), "classes": ["nope"]}).classes
    with pytest.raises(DataError, match="split directory not found"):
        open_source({"source": "imagefolder", "root": str(tmp_path / "none")}).classes


def test_imagefolder_class_list_defines_labels(tmp_path):
    root = write_tree(tmp_path / "nette", {f"{s}/{w}/x.png": png((i * 20, 0, 0)) for s in ("train", "test")
                                           for i, w in enumerate(NETTE)})
    src = open_source({"source": "imagefolder", "root": str(root), "class_list": "imagenet1k",
                       "classes": "imagenette"})
    assert src.classes.names == NETTE and src.classes.parent == "imagenet1k"
    assert src.classes.parent_labels == src.classes.dit_labels() == (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)
    a = src.arrays("test")
    assert a["class_name"].tolist() == list(NETTE) and a["label"].tolist() == list(range(10))
    assert a["image"][:, 0, 0, 0].tolist() == [i * 20 for i in range(10)]


def test_imagefolder_on_s3(moto_s3, tmp_path):
    bucket = moto_s3.create_bucket("mgd-data")
    for rel, data in imagefolder_files().items():
        moto_s3.client.put_object(Bucket=bucket, Key=f"nette/{rel}", Body=data)
    cfg = {"source": "imagefolder", "root": f"s3://{bucket}/nette", "storage_options": moto_s3.storage_options,
           "classes": ["n01440764", "n02102040"], "max_failures": 3}
    src = open_source(cfg)
    a = src.arrays("train", image_size=6)
    assert a["image"].shape == (6, 6, 6, 3) and a["class_name"].tolist()[:2] == ["n01440764"] * 2
    assert src.failures[0][0] == f"s3://{bucket}/nette/train/n01440764/broken.png"
    assert src.num_rows("test") == 4
    described = json.dumps(src.describe())
    assert "testing" not in described and "storage_options_keys" in described


# -- parquet -------------------------------------------------------------------------------------
def write_parquet(path: Path, labels, names=None, struct=False, corrupt_at=None, row_group_size=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = [png((lab * 30 if isinstance(lab, int) else 99, 7, 7), size=(5, 4)) for lab in labels]
    if corrupt_at is not None:
        blobs[corrupt_at] = b"garbage"
    col = pa.array(blobs, pa.binary())
    if struct:
        col = pa.StructArray.from_arrays([col, pa.array([f"{i}.png" for i in range(len(blobs))])], ["bytes", "path"])
    cols = {"image": col, "label": pa.array(labels)}
    if names is not None:
        cols["class_name"] = pa.array(names)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)


def test_parquet_source(tmp_path):
    names = ["cat", "dog", "emu"]
    write_parquet(tmp_path / "pq" / "train-00000-of-00002.parquet", [2, 0, 1], [names[i] for i in (2, 0, 1)])
    write_parquet(tmp_path / "pq" / "train-00001-of-00002.parquet", [1, 1], ["dog", "dog"], corrupt_at=1)
    write_parquet(tmp_path / "pq" / "test.parquet", [0, 2], ["cat", "emu"])
    src = open_source({"source": "parquet", "root": str(tmp_path / "pq"), "max_failures": 1})
    assert src.classes.names == ("cat", "dog", "emu")
    a = src.arrays("train")
    assert a["id"].tolist() == [0, 1, 2, 3] and a["label"].tolist() == [2, 0, 1, 1]
    assert a["image"].shape == (4, 4, 5, 3) and a["image"][:, 0, 0, 0].tolist() == [60, 0, 30, 30]
    assert src.failures[0][0].endswith("pq/train-00001-of-00002.parquet#1")
    assert src.arrays("test", classes=[2])["class_name"].tolist() == ["emu"]
    # a class list whose order disagrees with the class_name column is refused
    (tmp_path / "order.txt").write_text("# name: mine  version: 3  source: test\ndog\ncat\nemu\n")
    with pytest.raises(DataError, match="class order does not match"):
        open_source({"source": "parquet", "root": str(tmp_path / "pq"), "class_list": str(tmp_path / "order.txt")}
                    ).arrays("test")


def test_parquet_string_labels_struct_images_and_split_pattern(tmp_path):
    for split in ("train", "test"):
        write_parquet(tmp_path / f"{split}.parquet", ["b", "a", "b"], struct=True)
    src = open_source({"source": "parquet", "root": str(tmp_path / "{split}.parquet"), "classes": ["b"]})
    a = src.arrays("test")
    assert src.classes.names == ("b",) and a["id"].tolist() == [0, 2] and a["label"].tolist() == [0, 0]
    with pytest.raises(DataError, match="no Parquet files for split 'train'"):
        open_source({"source": "parquet", "root": str(tmp_path / "nothing")}).classes


@pytest.mark.ray
def test_parquet_ray_dataset_reads_image_bytes_on_the_workers(ray_cluster, tmp_path, monkeypatch):
    """The driver reads only the label columns; each Ray task reads its own rows' image bytes."""
    import pyarrow.parquet as pq

    labels = [i % 3 for i in range(40)]
    write_parquet(tmp_path / "pq" / "train-0.parquet", labels[:25], corrupt_at=6, row_group_size=4)
    write_parquet(tmp_path / "pq" / "train-1.parquet", labels[25:], row_group_size=4)
    cfg = {"source": "parquet", "root": str(tmp_path / "pq"), "max_failures": 1, "classes": ["0", "2"]}
    want = open_source(cfg).arrays("train", image_size=4)       # the driver-side path, for reference
    assert len(want["id"]) == 26 and set(want["label"].tolist()) == {0, 1}
    read = []
    real = pq.read_table

    def spy(source, *args, columns=None, **kw):                  # every whole-table read of the driver
        read.append(list(columns or ["<all>"]))
        return real(source, *args, columns=columns, **kw)

    def refuse(*_a, **_k):
        raise AssertionError("the driver read image bytes")

    monkeypatch.setattr(pq, "read_table", spy)
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", refuse)
    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    src = open_source(cfg)
    ds = src.ray_dataset("train", image_size=4, rows_per_block=5, failures_dir=str(tmp_path / "fail"))
    got = sorted(ds.take_all(), key=lambda r: r["id"])
    assert read and all("image" not in cols and "<all>" not in cols for cols in read)
    assert [r["id"] for r in got] == want["id"].tolist() and 6 not in want["id"].tolist()   # row 6: corrupt
    assert [r["label"] for r in got] == want["label"].tolist()
    assert np.array_equal(np.stack([r["image"] for r in got]), want["image"])
    from mgd_ray.data import read_failures
    assert read_failures(str(tmp_path / "fail")).column("path").to_pylist()[0].endswith("train-0.parquet#6")


# -- class lists -------------------------------------------------------------------------------
def test_builtin_class_lists():
    ref = imagenet1k()
    assert len(ref) == 1000 == len(set(ref.names)) and list(ref.names) == sorted(ref.names)
    assert ref.names[0] == "n01440764" and ref.names[-1] == "n15075141" and ref.is_wnid
    assert ref.label_name(0) == "tench" and ref.dit_label("n15075141") == 999
    sizes = {"imagenet1k": 1000, "imagenette": 10, "imagewoof": 10, "imagenet100": 100}
    for name in BUILTIN_LISTS:
        cl = load_class_list(name)
        assert cl.name == name and cl.version == "1" and cl.source and len(cl) == sizes[name]
        assert set(cl.names) <= set(ref.names) and all(cl.descriptions)
        assert [ref.names[i] for i in cl.dit_labels()] == list(cl.names)
        first = (Path(__file__).parents[1] / "mgd_ray" / "classlists" / f"{name}.txt").read_text().splitlines()[0]
        assert first.startswith(f"# name: {name}  version: 1  source: ")
    assert load_class_list("imagenette").names == NETTE
    assert set(load_class_list("imagewoof").names) == {"n02086240", "n02087394", "n02088364", "n02089973",
                                                        "n02093754", "n02096294", "n02099601", "n02105641",
                                                        "n02111889", "n02115641"}
    assert load_class_list("imagenet100").names[:3] == ("n02869837", "n01749939", "n02488291")


def test_class_list_lookup_and_errors(tmp_path):
    ref = imagenet1k()
    assert ref.index("Tench") == 0 and ref.index("n01443537") == 1
    with pytest.raises(DataError, match="ambiguous.*n02012849.*n03126707"):
        ref.index("crane")
    with pytest.raises(DataError, match="Valid choices: n01440764, n01443537.*1000 in all"):
        ref.index("n99999999")
    with pytest.raises(DataError, match="not an ImageNet-1K wnid"):
        ClassList("x", "1", ("a", "b")).dit_label("a")
    with pytest.raises(DataError, match="duplicate"):
        ClassList("x", "1", ("a", "a"))
    with pytest.raises(DataError, match="unknown class list 'imagenet5'.*imagenette"):
        load_class_list("imagenet5")
    cl = parse_class_list("# name: mine  version: 2  source: me\n\nb\tBee\na\n", "f")
    assert (cl.name, cl.version, cl.source, cl.names, cl.descriptions) == ("mine", "2", "me", ("b", "a"), ("Bee", ""))
    sub = load_class_list("imagewoof").subset(["n02099601", "Samoyed"])
    assert sub.parent == "imagewoof" and sub.parent_labels == (8, 2) and sub.dit_labels() == (207, 258)


# -- preprocess ----------------------------------------------------------------------------------
def test_preprocess_pad_crop_and_channels():
    grey = np.full((2, 28, 28, 1), 255, np.uint8)
    x = preprocess(grey, 32, mode="pad")
    assert x.shape == (2, 1, 32, 32) and x.dtype == np.float32
    assert (x[:, :, 2:30, 2:30] == 1).all() and (x[:, :, :2] == -1).all() and (x[:, :, :, 30:] == -1).all()
    thirds = np.zeros((1, 32, 96, 3), np.uint8)
    thirds[:, :, 32:64] = (10, 20, 30)
    y = preprocess(thirds, 32, mode="center-crop")  # short side already 32: pure centre crop
    assert np.allclose(y[0, :, 5, 5], np.array([10, 20, 30]) / 127.5 - 1)
    big = np.zeros((1, 256, 512, 3), np.uint8)
    big[:, :, 192:320] = 200          # halved twice to 64x128, then cropped at columns 32:96 -> band at 16:48
    z = preprocess(big, 64, channels=1, mode="center-crop")
    assert z.shape == (1, 1, 64, 64) and np.allclose(z[0, 0, :, 18:46], 200 / 127.5 - 1, atol=0.02)
    assert np.allclose(z[0, 0, :, :14], -1, atol=0.02) and np.allclose(z[0, 0, :, 50:], -1, atol=0.02)
    assert preprocess(grey[:1], None, channels=3).shape == (1, 3, 28, 28)
    varied = [np.zeros((10, 14, 3), np.uint8), np.zeros((20, 12, 3), np.uint8)]
    assert preprocess(varied, 8).shape == (2, 3, 8, 8)
    with pytest.raises(DataError, match="larger than image_size 16 in 'pad' mode"):
        preprocess(grey, 16, mode="pad")
    with pytest.raises(DataError, match="unknown preprocess mode 'zoom'"):
        preprocess(grey, 32, mode="zoom")


def test_arrays_at_reads_only_the_chosen_rows():
    from mgd_ray.data import open_source
    from mgd_ray.pipeline.evaluate import random_real_subset
    src = open_source({"source": "sklearn-digits"})
    full = src.arrays("train")
    idx = random_real_subset(full["label"], 3, seed=1)
    sub = src.arrays_at("train", idx)
    assert len(idx) == 30 and np.array_equal(sub["id"], full["id"][idx])
    assert np.array_equal(sub["image"], full["image"][idx]) and np.bincount(sub["label"]).tolist() == [3] * 10
    assert not np.array_equal(idx, random_real_subset(full["label"], 3, seed=2))
