"""Distribution metrics between real and synthetic FEATURES (pure numpy/torch, float64).

Features come from a network NOT trained on the synthetic set: the project's own real-data
classifier (:mod:`mgd_ray.eval.classifier`, shipped with a prior) — so "FID" here is never the
Inception-v3 FID of the literature. No Inception features are wired in: a job with no classifier
(none beside the prior, no ``evaluate.classifier``; e.g. the ImageNet family) gets no distribution metrics.

Inputs are arrays/tensors ``(N, F)``; every function returns plain Python floats.

Notes on small synthetic sets (IPC 1-50 gives 10-500 images):
- FID: with N_syn <= F the synthetic covariance has rank <= N_syn - 1 (singular). The Fréchet
  distance between Gaussians is still defined for PSD covariances, and we compute
  Tr((S1^1/2 S2 S1^1/2)^1/2) from a symmetric eigendecomposition with eigenvalues clipped at 0,
  which needs no inverse and no ``eps * I`` offset. The estimate is strongly biased by N, so only
  compare FIDs computed with the same N_syn (same IPC and class count). Needs N >= 2 per set.
- PRDC with k neighbours needs N >= k + 1 in each set; :func:`distribution_report` lowers k
  to N_syn - 1 when needed and records the k it used.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

_CHUNK = 1024


def _t(a: Any) -> torch.Tensor:
    t = a.detach().cpu() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    t = t.to(torch.float64)
    if t.ndim != 2:
        raise ValueError(f"features must be 2-D (N, F), got shape {tuple(t.shape)}")
    return t


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: real {a.shape[1]} vs synthetic {b.shape[1]}")


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid(feat_real: Any, feat_syn: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N >= 2 each).

    ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1^1/2 S2 S1^1/2)^1/2); covariances with ddof=1;
    exact for singular covariances (see module docstring).
    """
    a, b = _t(feat_real), _t(feat_syn)
    _check_pair(a, b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs >= 2 samples per set, got {len(a)} real / {len(b)} synthetic")
    a, b = a.numpy(), b.numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    r1 = _sqrt_psd(s1)
    cross = np.linalg.eigvalsh((r1 @ s2 @ r1 + (r1 @ s2 @ r1).T) / 2)
    tr_cross = float(np.sqrt(np.clip(cross, 0, None)).sum())
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_cross)
    return max(d, 0.0)


def mean_l2(feat_real: Any, feat_syn: Any) -> float:
    """Euclidean distance between the feature means."""
    a, b = _t(feat_real), _t(feat_syn)
    _check_pair(a, b)
    return float(torch.linalg.vector_norm(a.mean(0) - b.mean(0)))


def _pairwise_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)
    return d.clamp_(min=0)


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int = 2000,
                     seed: int = 0) -> float:
    """Median pairwise Euclidean distance of the pooled set (off-diagonal; at most
    ``max_points`` points, subsampled with ``seed``)."""
    z = torch.cat([x, y])
    if len(z) > max_points:
        g = torch.Generator().manual_seed(seed)
        z = z[torch.randperm(len(z), generator=g)[:max_points]]
    d = _pairwise_sq(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1)
    med = float(d[iu[0], iu[1]].median().sqrt())
    return med if med > 0 else 1.0


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, gamma: float, exclude_diag: bool) -> float:
    total = 0.0
    for i in range(0, len(a), _CHUNK):
        k = torch.exp(-gamma * _pairwise_sq(a[i:i + _CHUNK], b))
        if exclude_diag:
            r = torch.arange(k.shape[0])
            k[r, r + i] = 0.0
        total += float(k.sum())
    return total


def mmd2_rbf_unbiased(X: Any, Y: Any, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012) with k(x,y) = exp(-||x-y||^2 / (2 sigma^2)).

    sigma = ``bandwidth`` or the median pooled pairwise distance. Can be slightly negative when
    the two distributions are the same. Needs N >= 2 per set.
    """
    x, y = _t(X), _t(Y)
    _check_pair(x, y)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD^2 needs >= 2 samples per set, got {m} and {n}")
    sigma = bandwidth if bandwidth is not None else median_bandwidth(x, y)
    gamma = 1.0 / (2.0 * sigma ** 2)
    kxx = _kernel_sum(x, x, gamma, True) / (m * (m - 1))
    kyy = _kernel_sum(y, y, gamma, True) / (n * (n - 1))
    kxy = _kernel_sum(x, y, gamma, False) / (m * n)
    return kxx + kyy - 2 * kxy


def _normalise(a: torch.Tensor) -> torch.Tensor:
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)


def diversity(feat_syn: Any) -> float:
    """1 - max pairwise cosine similarity among synthetic features (needs N >= 2).
    0 means two synthetic images are (directionally) identical."""
    s = _normalise(_t(feat_syn))
    if len(s) < 2:
        raise ValueError(f"diversity needs >= 2 synthetic samples, got {len(s)}")
    c = s @ s.T
    c.fill_diagonal_(-float("inf"))
    return 1.0 - float(c.max())


def representativeness(feat_real: Any, feat_syn: Any) -> float:
    """min over synthetic samples of the max cosine similarity to any real sample
    (the worst-represented synthetic image's nearest real neighbour)."""
    r, s = _normalise(_t(feat_real)), _normalise(_t(feat_syn))
    _check_pair(r, s)
    best = torch.full((len(s),), -float("inf"), dtype=torch.float64)
    for i in range(0, len(r), _CHUNK * 8):
        best = torch.maximum(best, (s @ r[i:i + _CHUNK * 8].T).max(1).values)
    return float(best.min())


def _kth_nn_radii(a: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of a to its k-th nearest OTHER row of a."""
    out = torch.empty(len(a), dtype=torch.float64)
    for i in range(0, len(a), _CHUNK):
        d = _pairwise_sq(a[i:i + _CHUNK], a).sqrt()
        out[i:i + _CHUNK] = d.kthvalue(k + 1, dim=1).values  # +1: the self distance 0
    return out


def prdc(real: Any, fake: Any, k: int = 5) -> dict[str, float]:
    """Precision/recall (Kynkäänniemi et al. 2019), density/coverage (Naeem et al. 2020).

    A k-NN ball around each sample (radius = distance to its k-th nearest neighbour in its own
    set) approximates each manifold. precision: share of fakes inside some real ball; recall:
    share of reals inside some fake ball; density: mean number of real balls containing a fake,
    divided by k; coverage: share of real balls that contain at least one fake.
    """
    r, f = _t(real), _t(fake)
    _check_pair(r, f)
    if len(r) < k + 1 or len(f) < k + 1:
        raise ValueError(f"prdc with k={k} needs >= {k + 1} samples per set, got "
                         f"{len(r)} real / {len(f)} fake; lower k")
    rad_r, rad_f = _kth_nn_radii(r, k), _kth_nn_radii(f, k)
    in_real_ball = torch.zeros(len(f), dtype=torch.float64)    # count of real balls per fake
    covered = torch.zeros(len(r), dtype=torch.bool)
    recalled = torch.zeros(len(r), dtype=torch.bool)
    for i in range(0, len(r), _CHUNK):
        d = _pairwise_sq(r[i:i + _CHUNK], f).sqrt()            # (chunk_real, n_fake)
        inside = d < rad_r[i:i + _CHUNK, None]
        in_real_ball += inside.sum(0)
        covered[i:i + _CHUNK] = inside.any(1)
        recalled[i:i + _CHUNK] = (d < rad_f[None, :]).any(1)
    return {
        "precision": float((in_real_ball > 0).double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(in_real_ball.mean() / k),
        "coverage": float(covered.double().mean()),
    }


def prior_fidelity(pred_labels: Any, intended: Any) -> float:
    """Share of generated images that a real-data classifier assigns to their intended class."""
    p = torch.as_tensor(np.asarray(pred_labels)).long().reshape(-1)
    t = torch.as_tensor(np.asarray(intended)).long().reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"pred_labels {tuple(p.shape)} and intended {tuple(t.shape)} differ")
    if len(p) == 0:
        raise ValueError("prior_fidelity of an empty set")
    return float((p == t).double().mean())


def prior_fidelity_per_class(pred_labels: Any, intended: Any, num_classes: int) -> list[float]:
    """Per intended class fidelity (NaN for a class with no images)."""
    p = torch.as_tensor(np.asarray(pred_labels)).long().reshape(-1)
    t = torch.as_tensor(np.asarray(intended)).long().reshape(-1)
    out = []
    for c in range(num_classes):
        m = t == c
        out.append(float((p[m] == c).double().mean()) if m.any() else float("nan"))
    return out


def distribution_report(feat_real: Any, feat_syn: Any, *, pred_syn: Any = None,
                        labels_syn: Any = None, num_classes: int | None = None, k: int = 5,
                        max_real: int | None = 10000, seed: int = 0) -> dict[str, Any]:
    """All distribution metrics in one dict.

    ``feat_real`` is subsampled to ``max_real`` rows (seeded) to bound the O(N^2) metrics.
    Prior fidelity is added when ``pred_syn`` (classifier predictions on the synthetic images)
    and ``labels_syn`` (their intended classes) are given.
    """
    r, s = _t(feat_real), _t(feat_syn)
    _check_pair(r, s)
    if max_real is not None and len(r) > max_real:
        g = torch.Generator().manual_seed(seed)
        r = r[torch.randperm(len(r), generator=g)[:max_real]]
    bw = median_bandwidth(r, s, seed=seed)
    k_used = min(k, len(s) - 1, len(r) - 1)
    out: dict[str, Any] = {
        "n_real": len(r), "n_syn": len(s), "feature_dim": r.shape[1],
        "fid": fid(r, s),
        "mean_l2": mean_l2(r, s),
        "mmd2_rbf_unbiased": mmd2_rbf_unbiased(r, s, bw),
        "mmd_bandwidth": bw,
        "diversity": diversity(s),
        "representativeness": representativeness(r, s),
        "prdc_k": k_used,
    }
    if k_used >= 1:
        out.update(prdc(r, s, k_used))
    if pred_syn is not None and labels_syn is not None:
        out["prior_fidelity"] = prior_fidelity(pred_syn, labels_syn)
        if num_classes is not None:
            out["prior_fidelity_per_class"] = prior_fidelity_per_class(pred_syn, labels_syn,
                                                                       num_classes)
    return out
