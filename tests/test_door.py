"""Bad input at the door (issue 22 item 4): each refusal runs the real CLI and asserts exit 2, one
message naming the problem and the fix, no traceback, and that no work started (output.dir never
created). Unit tests pin the rules (class sizes, paths, cluster nodes, YAML bounds, PNG decoding)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mgd_ray.config import JobError, job_from_dict, load_job
from mgd_ray.data import DataError, open_source
from mgd_ray.data.decode import decode_image
from mgd_ray.pipeline.door import (check_class_sizes, check_eval_weights, check_output_location,
                                   check_output_shared, fs_type)

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "jobs" / "digits.yaml"


def distill(*args, cwd=ROOT, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mgd_ray.distill", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def refused(r: subprocess.CompletedProcess, *phrases: str) -> str:
    """Exit 2, no traceback, exactly one error message, containing every phrase; -> the message."""
    both = r.stdout + r.stderr
    assert r.returncode == 2, both[-3000:]
    assert "Traceback" not in both, both[-3000:]
    assert r.stderr.count("error:") == 1, r.stderr[-3000:]
    msg = r.stderr[r.stderr.index("error:"):]
    for p in phrases:
        assert p in msg, f"{p!r} not in: {msg}"
    return msg


def png_bytes(arr: np.ndarray) -> bytes:
    """PNG of an array: uint16 2-D -> 16-bit grey; uint8 (H, W, 2 / 3 / 4) -> LA / RGB / RGBA."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def grey_png(v: int, size: int = 8) -> bytes:
    return png_bytes(np.full((size, size), v, np.uint8))


def write_parquet_split(root: Path, split: str, labels: list[int]):
    import pyarrow as pa
    import pyarrow.parquet as pq
    (root / split).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array([grey_png(20 * lab) for lab in labels], pa.binary()),
                             "label": pa.array(labels, pa.int64())}), root / split / "part-0.parquet")


def write_imagefolder(root: Path, classes=("a", "b"), n: int = 3):
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (root / split / c / f"{i}.png").write_bytes(grey_png(40 * i))


# ---- 1. a class with fewer train images than generate.ipc ------------------------------------
@pytest.mark.parametrize("method", ["random-real", "manifoldgd"])
def test_ipc_above_a_class_size_is_refused_before_encoding(tmp_path, method):
    out = tmp_path / "out"
    r = distill(DIGITS, "--set", f"method={method}", "--set", "data.limit_per_class=3", "--set", "generate.ipc=5",
                "--set", f"output.dir={out}")
    msg = refused(r, "generate.ipc=5 does not fit", "10 class(es) have fewer", "'0' has 3",
                  "--set generate.ipc=3", "data.limit_per_class (now 3)")
    assert ("selects 5 distinct real images" in msg) == (method == "random-real")
    assert ("builds 5 coreset targets" in msg) == (method == "manifoldgd")
    assert not out.exists()


def test_class_size_rule_by_method():
    src = open_source({"source": "sklearn-digits", "classes": ["1", "7"], "limit_per_class": 4})
    for method in ("random-real", "herding", "kcenter", "manifoldgd", "mgd3"):
        check_class_sizes(job_from_dict({"method": method, "generate": {"ipc": 4}}), src)  # 4 of 4: fits
        with pytest.raises(DataError, match="2 class\\(es\\) have fewer train images \\('1' has 4, '7' has 4\\)"):
            check_class_sizes(job_from_dict({"method": method, "generate": {"ipc": 5}}), src)
    # plain DiT draws from noise: its IPC is not bounded by the class sizes
    check_class_sizes(job_from_dict({"method": "dit", "generate": {"ipc": 50}}), src)


def test_a_class_without_images_is_refused_for_every_method():
    class Empty:          # a source whose selected class 'b' has no train rows
        def class_counts(self, split):
            return {"a": 3, "b": 0}
    for method in ("dit", "manifoldgd", "random-real"):
        with pytest.raises(DataError, match="1 selected class\\(es\\) have no train images.*'b'"):
            check_class_sizes(job_from_dict({"method": method, "generate": {"ipc": 1}}), Empty())


# ---- 2. duplicate generate.seeds ------------------------------------------------------------
def test_duplicate_seeds_are_refused(tmp_path):
    out = tmp_path / "out"
    r = distill(DIGITS, "--set", "generate.seeds=[0, 1, 0]", "--set", f"output.dir={out}")
    refused(r, "[generate -> seeds]", "seed(s) [0] more than once", "[0, 1]")
    assert not out.exists()
    assert job_from_dict({"generate": {"seeds": [2, 0, 1]}}).generate.seeds == [2, 0, 1]


# ---- 3. output.dir and data.root inside each other ------------------------------------------
def test_output_inside_the_data_tree_is_refused(tmp_path):
    data = tmp_path / "data"
    write_imagefolder(data, classes=("0", "1"))
    out = data / "out"
    r = distill(DIGITS, "--set", "data.source=imagefolder", "--set", f"data.root={data}", "--set", f"output.dir={out}")
    refused(r, f"output.dir '{out}' lies inside the data source's tree", "read them as data",
            "--set output.dir=out/digits")
    assert not out.exists() and sorted(p.name for p in data.iterdir()) == ["test", "train"]


def test_output_and_data_location_rules(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)

    def job(source, root, out, **kw):
        return job_from_dict({"data": {"source": source, "root": root, **kw}, "output": {"dir": out}})
    with pytest.raises(JobError, match="is the data source's own directory"):
        check_output_location(job("imagefolder", str(data), str(tmp_path / "link")))   # same dir via a symlink
    with pytest.raises(JobError, match="data.root .* lies inside output.dir"):
        check_output_location(job("parquet", str(data / "pq"), str(data)))
    with pytest.raises(JobError, match="lies inside the data source's tree"):   # {split}: the dir before it
        check_output_location(job("parquet", str(data / "{split}.parquet"), str(data / "o")))
    with pytest.raises(JobError, match="lies inside"):
        check_output_location(job("parquet", "s3://bkt/ds/", "s3://bkt/ds/out"))
    check_output_location(job("parquet", str(data / "pq"), str(tmp_path / "pq-out")))   # siblings, same prefix
    check_output_location(job("parquet", "s3://bkt/ds", "s3://bkt/ds-out"))
    check_output_location(job("parquet", "s3://bkt/ds", "s3://bkt/ds/out",           # another S3 endpoint
                              storage_options={"endpoint_url": "http://other:9000"}))
    check_output_location(job("sklearn-digits", None, str(data)))


# ---- 4. an empty output.dir -------------------------------------------------------------------
def test_empty_output_dir_is_refused(tmp_path):
    job = tmp_path / "job.yaml"
    shutil.copy(DIGITS, job)
    r = distill(job, "--set", "output.dir=", cwd=tmp_path)
    refused(r, "[output -> dir] is empty", "current directory", "--set output.dir=out/myjob")
    assert [p.name for p in tmp_path.iterdir()] == ["job.yaml"]          # nothing written in the cwd
    with pytest.raises(JobError, match="is empty"):
        job_from_dict({"output": {"dir": "  "}})


# ---- 5. a local output.dir on a multi-machine cluster -----------------------------------------
def node(ip: str, alive: bool = True, nid: str = "n") -> dict:
    return {"NodeID": f"{nid}-{ip}", "Alive": alive, "NodeManagerAddress": ip, "Resources": {"CPU": 2.0}}


MOUNTS = "overlay / overlay rw 0 0\nnfs.example:/exports /mnt/shared nfs4 rw 0 0\n" \
         "/dev/sdb1 /mnt/shared/local\\040disk ext4 rw 0 0\n"


def test_local_output_on_a_multi_machine_cluster_is_refused():
    two_hosts = [node("10.0.0.1"), node("10.0.0.2")]
    with pytest.raises(JobError) as e:
        check_output_shared("/data/out", two_hosts, mounts=MOUNTS)
    msg = str(e.value)
    assert "2 alive nodes on 2 machines (10.0.0.1, 10.0.0.2)" in msg and "s3://bucket/prefix" in msg
    assert "mounted at the same path on every node" in msg and "'overlay' filesystem" in msg
    check_output_shared("s3://bkt/out", two_hosts, mounts=MOUNTS)                  # object storage
    check_output_shared("/mnt/shared/out", two_hosts, mounts=MOUNTS)              # NFS
    with pytest.raises(JobError):                                                 # a local disk under the NFS dir
        check_output_shared("/mnt/shared/local disk/out", two_hosts, mounts=MOUNTS)
    check_output_shared("/data/out", [node("10.0.0.1", nid="a"), node("10.0.0.1", nid="b")], mounts=MOUNTS)
    check_output_shared("/data/out", [node("10.0.0.1"), node("10.0.0.2", alive=False)], mounts=MOUNTS)
    assert fs_type("/mnt/shared/local disk/x", MOUNTS) == "ext4" and fs_type("/srv", MOUNTS) == "overlay"


@pytest.mark.ray
def test_cluster_check_reads_real_ray_nodes(ray_cluster):
    """The rule on what ray.nodes() really returns: this one-machine Ray passes; the same entries
    with a second machine added are refused."""
    nodes = ray_cluster.nodes()
    check_output_shared("/data/out", nodes, mounts="overlay / overlay rw 0 0\n")
    other = dict(nodes[0], NodeID="f" * 56, NodeManagerAddress="192.0.2.7")
    with pytest.raises(JobError, match="on 2 machines"):
        check_output_shared("/data/out", [*nodes, other], mounts="overlay / overlay rw 0 0\n")


# ---- 6. parquet integer labels with a gap -----------------------------------------------------
def test_parquet_label_gap_is_found_at_open_time(tmp_path):
    pq_root, out = tmp_path / "pq", tmp_path / "out"
    labels = [c for c in range(10) if c != 2 for _ in range(3)]
    write_parquet_split(pq_root, "train", labels)
    write_parquet_split(pq_root, "test", labels)
    r = distill(DIGITS, "--set", "data.source=parquet", "--set", f"data.root={pq_root}", "--set", "generate.ipc=2",
                "--set", f"output.dir={out}")
    refused(r, "1 selected class(es) have no rows: '2' (label 2)", "Renumber the labels 0..K-1",
            """--set data.classes='["0", "1", "3", "4", "5", "6", "7", "8", "9"]'""")
    assert not out.exists() and "latents" not in r.stdout
    # the fix the message offers works
    src = open_source({"source": "parquet", "root": str(pq_root), "classes": ["0", "1", "3", "4", "5", "6", "7",
                                                                               "8", "9"]})
    assert src.num_rows("train") == 27


# ---- 7. an empty or comment-only job file --------------------------------------------------------
@pytest.mark.parametrize("text", ["", "# just a comment\n\n", "{}\n"])
def test_empty_job_file_is_refused(tmp_path, text):
    job = tmp_path / "job.yaml"
    job.write_text(text)
    r = distill(job, cwd=tmp_path)
    refused(r, "is empty (or holds only comments)", "built-in defaults are not run", "jobs/digits.yaml")
    assert [p.name for p in tmp_path.iterdir()] == ["job.yaml"]          # no ./out/job


# ---- 8, 9. YAML alias bombs and self-referencing aliases ---------------------------------------
BOMB = "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
               for p, n in zip([None, *"abcdefgh"], "abcdefghi"))   # 9**9 = 387 M strings expanded


def test_alias_bomb_is_refused_before_expansion(tmp_path):
    job = tmp_path / "bomb.yaml"
    job.write_text("name: bomb\n" + BOMB)
    t0 = time.perf_counter()
    with pytest.raises(JobError, match="alias bomb"):
        load_job(job)
    assert time.perf_counter() - t0 < 2.0          # refused on the node graph, nothing expanded
    r = distill(job, cwd=tmp_path, timeout=60)
    refused(r, "would expand it to more than 100,000 values", "extends: other.yaml")
    nested = ["&a [x, x, x, x, x, x, x, x, x, x]"] + [f"&{n} [{', '.join([f'*{p}'] * 10)}]"
                                                      for p, n in zip("abcdefg", "bcdefgh")]   # 10**8 strings
    r = distill(DIGITS, "--set", f"data.classes=[{', '.join(nested)}]", "--set", f"output.dir={tmp_path / 'out'}",
                timeout=60)
    refused(r, "override 'data.classes=", "alias bomb")
    assert not (tmp_path / "out").exists()


def test_ordinary_aliases_still_load(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: x\ndata: {classes: &c ['1', '7']}\nevaluate: {students: [&n convnet3, *n]}\n"
                   "generate: {ipc: 3, seeds: [0, 1]}\noutput: {dir: o}\n")
    j = load_job(job)
    assert j.data.classes == ["1", "7"] and j.evaluate.students == ["convnet3", "convnet3"]


@pytest.mark.parametrize("text", ["name: x\ndata: &a [*a]\n", "a: &a {b: *a}\n"])
def test_self_referencing_alias_is_refused(tmp_path, text):
    job = tmp_path / "self.yaml"
    job.write_text(text)
    refused(distill(job, cwd=tmp_path, timeout=60), "contains an alias to itself", "remove that alias")
    assert [p.name for p in tmp_path.iterdir()] == ["self.yaml"]


def test_oversized_job_file_is_refused_unread(tmp_path):
    job = tmp_path / "big.yaml"
    job.write_text("name: big\n" + "# padding\n" * 200_000)
    with pytest.raises(JobError, match="a job file is a few KB"):
        load_job(job)


# ---- 10. a corrupt safetensors file in a model directory ---------------------------------------
def test_corrupt_weights_file_is_a_user_error(tmp_path):
    prior = tmp_path / "prior"
    shutil.copytree(ROOT / "mgd_ray" / "priors" / "digits", prior)
    weights = prior / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])                 # an interrupted copy
    out = tmp_path / "out"
    r = distill(DIGITS, "--set", f"model.generator={prior}", "--set", f"output.dir={out}")
    refused(r, f"model weights file '{weights}'", "(4,096 bytes) cannot be read", "corrupt or incomplete",
            "copy it again from its source")
    assert not out.exists()


def test_corrupt_evaluation_classifier_is_refused_at_the_door(tmp_path):
    prior = tmp_path / "prior"
    shutil.copytree(ROOT / "mgd_ray" / "priors" / "digits", prior)
    clf = prior / "classifier" / "classifier.safetensors"
    clf.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n")
    from mgd_ray.models import ModelError
    with pytest.raises(ModelError, match="Git LFS pointer"):
        check_eval_weights(job_from_dict({"model": {"generator": str(prior)}}))
    check_eval_weights(job_from_dict({"model": {"generator": str(prior)}, "evaluate": {"enabled": False}}))


# ---- 11. 16-bit and transparent PNGs ---------------------------------------------------------------
def test_16bit_grey_png_is_scaled_not_clipped():
    v = np.array([[0, 257, 1000, 32768, 65535]], np.uint16)
    rgb = decode_image(png_bytes(v))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 4, 128, 255]         # round(v * 255 / 65535); PIL's convert: 0,255,255,...
    assert (rgb == rgb[..., :1]).all()


def test_transparent_png_is_composited_on_white():
    rgba = np.array([[[0, 0, 0, 0], [200, 100, 0, 255], [0, 0, 0, 128], [90, 30, 250, 0]]], np.uint8)
    rgb = decode_image(png_bytes(rgba))
    # transparent -> white whatever colour is stored under it; opaque unchanged; half -> halfway to white
    assert rgb[0].tolist() == [[255, 255, 255], [200, 100, 0], [127, 127, 127], [255, 255, 255]]
    la = np.array([[[10, 255], [10, 0]]], np.uint8)
    assert decode_image(png_bytes(la))[0].tolist() == [[10, 10, 10], [255, 255, 255]]
    from PIL import Image
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.putpixel((1, 0), 1)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)                     # palette entry 0 is transparent
    assert decode_image(buf.getvalue())[0].tolist() == [[255, 255, 255], [255, 0, 0]]
    plain = np.array([[[1, 2, 3]]], np.uint8)
    assert decode_image(png_bytes(plain))[0].tolist() == [[1, 2, 3]]


def test_imagefolder_reads_16bit_and_alpha_pngs(tmp_path):
    root = tmp_path / "if"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        (root / split / "a" / "0.png").write_bytes(png_bytes(np.full((4, 4), 32768, np.uint16)))
        (root / split / "a" / "1.png").write_bytes(png_bytes(np.zeros((4, 4, 4), np.uint8)))
    a = open_source({"source": "imagefolder", "root": str(root)}).arrays("train")
    assert a["image"].shape == (2, 4, 4, 3)
    assert (a["image"][0] == 128).all() and (a["image"][1] == 255).all()


def test_safe_load_rules_still_hold(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(JobError, match="not valid YAML"):
        load_job(p)
    p.write_text(yaml.safe_dump({"extends": "base.yaml"}))
    (tmp_path / "base.yaml").write_text("# nothing yet\n")
    with pytest.raises(JobError, match="base.yaml' is empty"):
        load_job(p)
