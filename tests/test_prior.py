"""Training the small priors: a DiT run continued from a trained transformer (``prior.dit_from``)."""

import numpy as np
import pytest
import torch

from mgd_ray.config import JobError
from mgd_ray.prior import PriorSpec, train_dit


def spec(**dit):
    return PriorSpec.model_validate({"name": "t", "image_size": 8, "threads": 1, "dit": {
        "num_heads": 2, "head_dim": 8, "num_layers": 1, "patch_size": 2, "steps": 3, "batch_size": 8,
        "checkpoint_every": 1000, **dit}})


def latents():
    g = np.random.default_rng(0)
    return torch.from_numpy(g.normal(size=(32, 4, 4, 4)).astype(np.float32)), g.integers(0, 3, 32)


def test_dit_from_continues_from_the_saved_weights(tmp_path):
    z, y = latents()
    first, _, _ = train_dit(z, y, 3, spec(steps=5))
    first.save_pretrained(tmp_path / "transformer")
    # lr 0: the continued run must still hold exactly the weights it started from
    cont, _, steps = train_dit(z, y, 3, spec(steps=2, lr=0.0).model_copy(
        update={"dit_from": str(tmp_path / "transformer")}))
    fresh, _, _ = train_dit(z, y, 3, spec(steps=2, lr=0.0))
    a, b, c = (dict(m.state_dict()) for m in (first, cont, fresh))
    assert steps == 2
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)   # EMA of equal weights: rounding only
    assert not all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)   # without dit_from: a new random model


def test_dit_from_with_another_architecture_is_refused(tmp_path):
    z, y = latents()
    first, _, _ = train_dit(z, y, 3, spec(steps=1))
    first.save_pretrained(tmp_path / "transformer")
    with pytest.raises(JobError, match="num_layers"):
        train_dit(z, y, 3, spec(steps=1, num_layers=2).model_copy(update={"dit_from": str(tmp_path / "transformer")}))


def test_cosine_schedule_is_validated():
    with pytest.raises(Exception, match="lr_schedule"):
        spec(lr_schedule="linear")
