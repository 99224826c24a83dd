"""Distribution metrics' plumbing: the real-image features are computed once per job."""

import numpy as np

from mgd_ray.config import job_from_dict
from mgd_ray.pipeline.store import Store


def test_real_features_are_cached_beside_the_latents(tmp_path):
    from pathlib import Path

    import mgd_ray
    from mgd_ray.data import open_source
    from mgd_ray.eval.classifier import load_classifier
    from mgd_ray.pipeline.metrics import _real_features
    d = Path(mgd_ray.__file__).parent / "priors" / "digits" / "classifier"
    clf, store = load_classifier(d), Store(str(tmp_path))
    source = open_source(job_from_dict({"data": {"limit_per_class": 3}}).data)
    f = _real_features(store, d, clf, source)
    cached = list((tmp_path / "latents").glob("_real_features_*.npy"))
    assert f.shape[0] == 30 and len(cached) == 1
    np.save(cached[0], np.full_like(f, 7.0))          # the second call must read the file, not recompute
    assert (_real_features(store, d, clf, source) == 7.0).all()
