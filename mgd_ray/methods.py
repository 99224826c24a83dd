"""What each distillation method is, said once (pure data: no torch, no Ray).

A method is one entry here: the coreset that picks its targets, whether it runs the diffusion
model, whether (and how) it guides the sampler toward the targets, and which job sections shape
its images (and so which settings belong in the generate stage's key). Config validation, the
coreset and generate stages, the manifest and the settings key all read this table; adding a
method is one entry (plus, for a new guidance rule or coreset, its class in this package).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    coreset: str | None          # coreset kind (method/coreset.py) choosing the targets; None: seeds only
    generates: bool              # runs the DiT sampler (else: the chosen real images are the output)
    guides: bool                 # mode guidance toward the coreset targets
    manifold_scale: float        # default weight of the tangent-space (manifold) correction; 0 = none
    reads: tuple[str, ...]       # job sections that shape its images (beyond data/model/encode/generate)
    summary: str
    version: int = 1             # bump when a code change changes this method's output bytes (it is in the keys)

    @property
    def guidance_rule(self) -> str:
        if not self.guides:
            return "none"
        return "mode + tangent-space projection (ManifoldGD)" if self.manifold_scale > 0 else "mode only (MGD3)"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("manifoldgd", "divisive", True, True, 1.0, ("coreset", "sampler", "guidance"),
           "DiT guided toward hierarchical-coreset targets, guidance projected on the local tangent space"),
    Method("mgd3", "kmeans", True, True, 0.0, ("coreset", "sampler", "guidance"),
           "DiT guided toward k-means mode targets (no manifold projection)"),
    Method("dit", None, True, False, 0.0, ("sampler",),
           "the class-conditional DiT with CFG, unguided"),
    Method("random-real", "random", False, False, 0.0, ("coreset",),
           "random real images of each class"),
    Method("herding", "herding", False, False, 0.0, ("coreset",),
           "real images chosen by herding in latent space"),
    Method("kcenter", "kcenter", False, False, 0.0, ("coreset",),
           "real images chosen by greedy k-center in latent space"),
)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
