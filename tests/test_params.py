"""One source of names and defaults: the method core's parameter types (``mgd_ray/params.py``)
are what the job sections derive from, every knob a job sets reaches the core under its own name,
and each choice's names are exactly the keys of the core's registry of implementations."""

from __future__ import annotations

import typing

import pytest

from mgd_ray import params
from mgd_ray.config import JobConfig, job_from_dict
from mgd_ray.params import CoresetParams, GuidanceParams, TrainSettings

# a valid non-default value for every knob (a default would pass even if the knob were dropped)
GUIDANCE_SET = dict(lam_mode=0.3, beta=0.5, beta_schedule="ramp", t_project=30, basis="members", d=4, K=9,
                    radius=0.05, radius_mult=3.0, warm=2, radius_kind="cosine", t_stop=10,
                    lam_man=0.2, bandwidth=0.1, cloud_size=50, manifold_scale=0.5)
CORESET_SET = dict(method="kmeans", split="var", selection="levelwise", representative="medoid", level_start=2,
                   depth_extra=1, n_restarts=5, niter=7, engine="numpy")
TRAIN_SET = dict(protocol="soft-label", temperature=4.0, epochs=7, n_evals=3, batch_size=32, augment="rgb",
                 flip=False)


def _overrides(section: str, values: dict) -> list[str]:
    return [f"{section}.{k}={v}" for k, v in values.items()]


def test_every_knob_is_named_once_and_set_here():
    """The tables above cover every field of the core's types: a field added to the core without a
    job path (or a job key renamed on the way) fails here."""
    assert set(GUIDANCE_SET) == set(GuidanceParams.model_fields)
    assert set(CORESET_SET) == set(CoresetParams.model_fields)
    assert set(TRAIN_SET) == set(TrainSettings.model_fields)
    for values, cls in ((GUIDANCE_SET, GuidanceParams), (CORESET_SET, CoresetParams), (TRAIN_SET, TrainSettings)):
        defaults = cls()
        assert all(getattr(defaults, k) != v for k, v in values.items()), "each test value must differ from the default"


def test_job_guidance_reaches_the_core_unrenamed():
    job = job_from_dict({"sampler": {"steps": 50}}, _overrides("guidance", GUIDANCE_SET))
    assert job.guidance_params == GuidanceParams(**GUIDANCE_SET)


def test_job_coreset_reaches_the_core_unrenamed():
    job = job_from_dict({}, _overrides("coreset", CORESET_SET))
    assert job.coreset_params == CoresetParams(**CORESET_SET)


def test_job_training_settings_reach_each_trial_unrenamed():
    from mgd_ray.pipeline.evaluate import trial_config
    job = job_from_dict({"evaluate": {"teacher": "somewhere"}}, _overrides("evaluate", TRAIN_SET))
    tc = trial_config(job, "convnet3", 2, "cpu")
    assert {k: getattr(tc, k) for k in TRAIN_SET} == TRAIN_SET
    assert (tc.student, tc.seed, tc.device) == ("convnet3", 2, "cpu")


def test_defaults_are_the_cores_and_the_method_resolves_the_rest():
    """A default ManifoldGD job hands the core exactly its defaults; the method decides the
    coreset kind, the manifold scale (MGD3: 0) and whether there is a mode term at all (DiT: 0)."""
    assert JobConfig().guidance_params == GuidanceParams()
    assert JobConfig().coreset_params == CoresetParams()          # manifoldgd: divisive
    mgd3 = job_from_dict({"method": "mgd3"})
    assert (mgd3.guidance_params.manifold_scale, mgd3.coreset_params.method) == (0.0, "kmeans")
    assert job_from_dict({"method": "dit"}).guidance_params.lam_mode == 0.0
    assert job_from_dict({"method": "dit"}).coreset_params is None
    assert job_from_dict({"method": "herding"}).coreset_params.method == "herding"
    # an explicit choice beats the method's
    assert job_from_dict({"method": "mgd3"}, ["guidance.manifold_scale=0.7"]).guidance_params.manifold_scale == 0.7


def test_each_choice_names_exactly_the_core_registry():
    """The schema's choices (params.py, torch-free) and the core's tables of implementations (a new
    kind is one entry there) name the same things, and the schema's Literal is that tuple."""
    from mgd_ray.eval.augment import AUGMENT_CHOICES
    from mgd_ray.eval.train import PROTOCOLS
    from mgd_ray.method import coreset, guidance

    assert tuple(coreset.BUILDERS) == params.CORESET_KINDS
    assert tuple(coreset.SPLIT_SCORES) == params.SPLITS
    assert tuple(coreset.REPRESENTATIVES) == params.REPRESENTATIVES
    assert ("auto", *coreset.ENGINES) == params.ENGINES
    assert (*guidance.TANGENT_BASES, *guidance.PULLS) == params.BASES
    assert tuple(guidance.WARM_SHAPES) == params.RADIUS_KINDS
    assert tuple(guidance.BETA_RULES) == params.BETA_SCHEDULES
    assert ("auto", *AUGMENT_CHOICES) == params.AUGMENTS
    assert tuple(PROTOCOLS) == params.PROTOCOLS
    for cls, field, names in ((CoresetParams, "method", params.CORESET_KINDS), (CoresetParams, "split", params.SPLITS),
                              (CoresetParams, "selection", params.SELECTIONS),
                              (CoresetParams, "representative", params.REPRESENTATIVES),
                              (CoresetParams, "engine", params.ENGINES), (GuidanceParams, "basis", params.BASES),
                              (GuidanceParams, "radius_kind", params.RADIUS_KINDS),
                              (GuidanceParams, "beta_schedule", params.BETA_SCHEDULES),
                              (TrainSettings, "protocol", params.PROTOCOLS), (TrainSettings, "augment", params.AUGMENTS)):
        assert typing.get_args(cls.model_fields[field].annotation) == names, (cls.__name__, field)


def test_the_core_refuses_what_the_job_refuses():
    """The checks live with the names: the core object refuses what a job file would."""
    with pytest.raises(ValueError, match="must be smaller than K"):
        GuidanceParams(d=12, K=12)
    with pytest.raises(ValueError, match="t_project"):
        GuidanceParams(t_stop=25, t_project=25)
    with pytest.raises(ValueError):
        GuidanceParams(basis="sideways")
    with pytest.raises(ValueError):
        GuidanceParams(r=0.1)                     # the old short name is not a silent no-op
    assert GuidanceParams().replace(radius=0.2).radius == 0.2
    with pytest.raises(ValueError):
        GuidanceParams().replace(K=2)             # replace validates like a new object (d=3 >= K)
