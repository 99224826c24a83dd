"""The dry-run plan on a small job (the ImageNet-scale plans are in test_cluster.py)."""

import pytest

from mgd_ray.config import job_from_dict


def test_dry_run_plan_digits(tiny_prior):
    from mgd_ray.pipeline.plan import dry_run_plan
    job = job_from_dict({"data": {"source": "sklearn-digits", "limit_per_class": 12},
                         "model": {"generator": str(tiny_prior)}, "sampler": {"steps": 4, "cfg_scale": 2.0}, "guidance": {"t_stop": 1},
                         "generate": {"ipc": 3, "seeds": [0, 1], "targets_per_unit": 2}})
    p = dry_run_plan(job, ["encode", "coreset", "generate", "evaluate"])
    assert p["classes"] == 10 and p["images_to_encode"] == 120
    assert p["images_to_generate"] == 60 and p["work_units"] == 2 * 10 * 2
    assert p["dit_forward_passes"] == 60 * 4 * 2
    # 40 units of 2 + 1 targets packed into DiT batches of at most 16 images (the default): 4 x 15
    assert p["dit_batches_per_step"] == 4 and p["dit_forward_batched_calls"] == 4 * 4
    assert p["dit_batch_images"] == {"min": 15, "max": 15, "mean": 15.0}
    st = p["estimate"]["stages"]                 # the estimate ran (a failed one has no stages)
    assert st["generate_dit"]["forward_passes"] == 480 and st["generate_dit"]["seconds_per_forward_per_image"] > 0
    assert p["estimate"]["total_device_hours"] == pytest.approx(
        sum(s.get("device_hours", 0) for s in st.values()), abs=0.01)
