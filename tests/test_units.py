"""Work units and shards: unit naming, DiT batch packing, PNG bytes, the shard schema."""

import numpy as np
import pyarrow.parquet as pq

from mgd_ray.pipeline.store import Store
from mgd_ray.pipeline.units import decode_png, make_units, png_bytes, sample_id, shard_table, to_uint8


def test_units_cover_every_target_once_with_stable_names():
    units = make_units([0, 1], range(3), ["a", "b", "c"], ipc=5, per_unit=2)
    assert len(units) == 2 * 3 * 3
    seen = [(u.gen_seed, u.label, j) for u in units for j in range(u.start, u.start + u.count)]
    assert len(seen) == len(set(seen)) == 2 * 3 * 5
    assert units[0].shard == "s000-c00000-t00000.parquet" and units[2].name == "s000-c00000-t00004"
    assert len({u.shard for u in units}) == len(units)
    assert make_units([0], range(2), ["x", "y"], 2, 2, gen_labels=[7, 9])[1].model_label == 9


def test_png_roundtrip_and_uint8():
    x = np.linspace(-1, 1, 2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    u = to_uint8(x)
    assert u.shape == (2, 4, 4, 1) and u.min() == 0 and u.max() == 255
    assert np.array_equal(decode_png(png_bytes(u[1])), u[1])
    assert png_bytes(u[0]) == png_bytes(u[0].copy())  # deterministic bytes
    rgb = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(png_bytes(rgb)), rgb)


def test_shard_table_schema(tmp_path):
    rows = [dict(sample_id=sample_id(0, 1, j), label=1, class_name="b", target_id="t", seed=2**62 + j, gen_seed=0,
                 method="manifoldgd", image=b"png", height=8, width=8, channels=1) for j in range(3)]
    st = Store(str(tmp_path))
    st.write_table(shard_table(rows, ["a", "b"]), "shards", "x.parquet")
    t = pq.read_table(tmp_path / "shards" / "x.parquet")
    assert t.schema.field("seed").type == "int64" and t.schema.field("label").type == "int64"
    assert t.column("image").to_pylist()[0] == {"bytes": b"png", "path": None}
    assert t.column("sample_id").to_pylist() == ["s0-c1-i0", "s0-c1-i1", "s0-c1-i2"]


def test_units_of_several_classes_share_a_dit_batch():
    from mgd_ray.pipeline.units import dit_batch_sizes, group_units, make_units
    units = make_units([0], range(10), [str(i) for i in range(10)], ipc=10, per_unit=10)
    groups = group_units(units, 64)
    assert [len(g) for g in groups] == [6, 4]                 # 60 + 40 images, classes mixed
    assert dit_batch_sizes(units, 64) == [60, 40]
    # a unit bigger than a batch is its own group, cut into batches; the last slice of a class is smaller
    units = make_units([0, 1], range(2), ["a", "b"], ipc=5, per_unit=3)   # counts 3, 2 per class
    assert [[u.count for u in g] for g in group_units(units, 4)] == [[3], [2], [3], [2], [3], [2], [3], [2]]
    assert [[u.count for u in g] for g in group_units(units, 5)] == [[3, 2], [3, 2], [3, 2], [3, 2]]
    assert dit_batch_sizes(units, 2) == [2, 1, 2] * 4
    assert sum(dit_batch_sizes(units, 7)) == sum(u.count for u in units) == 20
