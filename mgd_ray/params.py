"""The parameter types of the method core and of the students' training: the one source of
their names, defaults and checks (pure pydantic: no torch, no Ray, no FAISS).

The method core takes these objects (``method.build_coreset(..., params=CoresetParams(...))``,
``method.ManifoldGuidance(..., params=GuidanceParams(...))``, ``eval.train.TrainConfig``), and the
job schema's sections derive from them (``config.CoresetConfig(CoresetParams)``,
``config.GuidanceConfig(GuidanceParams)``, ``config.EvaluateConfig(TrainSettings)``): a job key
and the core's argument are one field, written once, with one default, so nothing renames or
copies them by hand. A job section adds only what the core does not take (Ray resources, pool
sizes) and the ``auto`` / ``None`` choices the job resolves from the method registry
(``JobConfig.coreset_params`` / ``guidance_params``).

The allowed names of a choice (a coreset kind, a guidance basis, a schedule) are the keys of the
core's registry of implementations; the tuples here name them for the schema, and
``tests/test_params.py`` checks the two agree.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# ---- choices (the core's registries are keyed by exactly these) -------------------------------
CORESET_KINDS = ("divisive", "kmeans", "random", "herding", "kcenter")
SPLITS = ("sse", "var")
SELECTIONS = ("leaves", "levelwise")
REPRESENTATIVES = ("mean", "medoid")
ENGINES = ("auto", "faiss", "numpy")
BASES = ("noised", "expected", "members", "reference")
RADIUS_KINDS = ("exp", "linear", "cosine", "none")
BETA_SCHEDULES = ("constant", "anneal", "ramp", "decay")
PROTOCOLS = ("hard-label", "soft-label", "soft-label-imagenet", "hard-label-imagenet")
AUGMENTS = ("auto", "dsa-grey", "rgb", "none")

CoresetKind = Literal["divisive", "kmeans", "random", "herding", "kcenter"]
Basis = Literal["noised", "expected", "members", "reference"]


class Params(BaseModel):
    """Frozen, and unknown names refused (a misspelt knob is an error, not a silent default)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict:
        return self.model_dump()

    def replace(self, **changes) -> "Params":
        """A copy with ``changes``, validated like a new object."""
        return type(self).model_validate({**self.model_dump(), **changes})

    @classmethod
    def build(cls, base: "Params | None" = None, **changes):
        """``cls`` from ``base``'s fields of ``cls`` (a job section holds more) and ``changes``;
        a bad value -> ValueError naming the parameter, what is allowed and what was given."""
        values = base.model_dump(include=set(cls.model_fields)) if base is not None else {}
        try:
            return cls.model_validate({**values, **changes})
        except ValidationError as e:
            lines = [f"[{'.'.join(map(str, x['loc'])) or cls.__name__}] {x['msg'].removeprefix('Value error, ')}"
                     + (f" (got: {x['input']!r})" if x.get("type") != "extra_forbidden" else " (not a parameter)")
                     for x in e.errors()]
            raise ValueError(f"{cls.__name__}: " + "; ".join(lines)) from None


class CoresetParams(Params):
    """How one class's targets are chosen (``method.coreset.build_coreset``)."""
    method: CoresetKind = Field(default="divisive", description="coreset kind: divisive (ManifoldGD's hierarchical "
                                "tree), kmeans (MGD3's modes), random / herding / kcenter (real images)")
    split: Literal["sse", "var"] = Field(default="sse", description="divisive: split the leaf of largest SSE, "
                                         "or of largest SSE / size")
    selection: Literal["leaves", "levelwise"] = "leaves"
    representative: Literal["mean", "medoid"] = "mean"
    level_start: int = Field(default=1, ge=0)
    depth_extra: int = Field(default=2, ge=0)
    n_restarts: int = Field(default=3, ge=1)
    niter: int = Field(default=20, ge=1)
    engine: Literal["auto", "faiss", "numpy"] = Field(
        default="auto", description="2-means engine: auto (FAISS where its build sees a GPU, else numpy: the "
                                    "fastest measured, see coreset_speed.md), faiss, or numpy (restarts batched "
                                    "into one BLAS pass); the manifest records the one used")


class GuidanceParams(Params):
    """All knobs of mode + manifold guidance (``method.guidance``; defaults: the ImageNet reference
    scripts)."""
    lam_mode: float = Field(default=0.1, ge=0, description="λ_mode of the mode term")
    manifold_scale: float = Field(default=1.0, ge=0, description="s_man; 0 = the pure MGD3 mode term (no basis)")
    beta: float = Field(default=1.0, ge=0, le=1, description="β: 1 = strict tangent projection of g_mode")
    beta_schedule: Literal["constant", "anneal", "ramp", "decay"] = Field(
        default="constant", description="beta_t over the guided steps (mgd_ray/method/guidance.py)")
    t_project: int | None = Field(default=None, ge=0, description="normal removal only while the respaced step "
                                  "index t <= t_project (a later window of the guided steps); None = every guided step")
    basis: Basis = "expected"
    d: int = Field(default=3, ge=1, description="tangent dimension")
    K: int = Field(default=12, ge=2, description="neighbours for the local PCA")
    radius: float = Field(default=0.1, gt=0, description="radius of the reference cloud (0.05 ImageNette)")
    radius_mult: float = Field(default=2.0, ge=1, description="radius multiplier at the first guided step")
    warm: int = Field(default=5, ge=0, description="W, warm steps")
    radius_kind: Literal["exp", "linear", "cosine", "none"] = "exp"
    t_stop: int = Field(default=25, ge=-1, description="guidance on while the step index t > t_stop")
    lam_man: float = Field(default=0.1, ge=0, description="λ_man of the reference pull toward the PCA plane")
    bandwidth: float = Field(default=0.2, gt=0, description="reference basis: tanh bandwidth of the pull "
                             "(the published code: 0.2 ImageNette/ImageWoof, 0.1 ImageNet-100)")
    cloud_size: int = Field(default=300, ge=2, description="points in the reference synthetic cloud")

    @model_validator(mode="after")
    def _dims(self):
        if self.d >= self.K:
            raise ValueError(f"d ({self.d}) must be smaller than K ({self.K}): the basis comes from K neighbours")
        if self.t_project is not None and self.t_project <= self.t_stop:
            raise ValueError(f"t_project ({self.t_project}) must be above t_stop ({self.t_stop}): guidance is off "
                             f"at t <= t_stop, so the projection window would be empty")
        return self

    @property
    def min_neighbours(self) -> int:
        """Neighbourhood size to pad up to with the nearest non-members (``neighbourhood_for_target``'s
        K): K, or 1 for the ``members`` basis, whose chords go to the target's own members only."""
        return 1 if self.basis == "members" else self.K


class TrainSettings(Params):
    """How a student is trained and scored, as a job sets it for every trial (``eval.train``);
    ``eval.train.TrainConfig`` adds what is per trial (student, seed, device)."""
    protocol: Literal["hard-label", "soft-label", "soft-label-imagenet", "hard-label-imagenet"] = Field(
        default="hard-label", description="hard-label-imagenet: the same recipe with the hard labels (CutMix-mixed "
        "cross-entropy, no teacher): the hard-label accuracy of torchvision's ResNet-18 that HLR needs. "
        "soft-label-imagenet: RDED's ImageNet-1K recipe with torchvision's "
        "ResNet-18 teacher and student (mgd_ray/eval/soft_label_imagenet.py)")
    temperature: float = Field(default=20.0, gt=0, description="soft-label: KL temperature (SRe2L/RDED use 20)")
    epochs: int | None = Field(default=None, gt=0, description="None = the protocol's rule")
    n_evals: int = Field(default=100, gt=0, description="periodic test evaluations (best_acc is their max)")
    batch_size: int = Field(default=64, gt=0)
    augment: Literal["auto", "dsa-grey", "rgb", "none"] = Field(
        default="auto", description="auto: grey -> dsa-grey, RGB -> rgb")
    flip: bool = Field(default=True, description="False where mirror images change the class (digits)")


__all__ = ["Params", "CoresetParams", "GuidanceParams", "TrainSettings", "CORESET_KINDS", "SPLITS", "SELECTIONS",
           "REPRESENTATIVES", "ENGINES", "BASES", "RADIUS_KINDS", "BETA_SCHEDULES", "PROTOCOLS", "AUGMENTS"]
