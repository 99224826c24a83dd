"""The method core: coreset, diffusion schedule, guidance, sampler. Pure numpy / torch / FAISS.

No Ray in here: the pipeline wraps these functions. FAISS is imported lazily (coreset only).
"""
from .coreset import Target, build_coreset, grow_tree, image_seed, select_levelwise, tree_sse
from .diffusion import GaussianDiffusion, RespacedDiffusion, space_timesteps
from .guidance import (GuidanceParams, ManifoldGuidance, NoGuidance, StepInfo, beta_schedule, knn_rows,
                       mode_term, neighbourhood_for_target, pad_neighbourhoods, project_normal,
                       project_tangent, radius_schedule, tangent_basis)
from .sampler import cfg_combine, dit_model_fn, make_generators, sample

__all__ = [
    "Target", "build_coreset", "grow_tree", "image_seed", "select_levelwise", "tree_sse",
    "GaussianDiffusion", "RespacedDiffusion", "space_timesteps",
    "GuidanceParams", "ManifoldGuidance", "NoGuidance", "StepInfo", "beta_schedule", "knn_rows",
    "mode_term", "neighbourhood_for_target", "pad_neighbourhoods", "project_normal", "project_tangent",
    "radius_schedule", "tangent_basis",
    "cfg_combine", "dit_model_fn", "make_generators", "sample",
]
