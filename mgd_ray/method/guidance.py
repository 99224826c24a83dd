"""Mode guidance (MGD3) and manifold-corrected guidance (ManifoldGD), batched over images.

Notation map (paper -> code), all latents flattened to D numbers:
    x_t            current sample                         x_t      (B, D)
    x̂0(x_t)        predicted clean latent                 x0_hat   (B, D)
    c              the image's target (IPC centroid)      c        (B, D)
    σ_t            std of the reverse step                sigma_t  (B, D) | (B,) | scalar
    ᾱ_t            alpha_bar at the current step          alpha_bar_t
    g_mode         −λ_mode σ_t (x̂0 − c)                   g_mode   (B, D)
    U              top-d local tangent directions          U        (B, d, D), orthonormal rows
    P_T, P_N       U Uᵀ and I − U Uᵀ                        project_tangent / project_normal
    β_t            strength of the normal removal           beta_t
    r_t            radius (annealed over W warm steps)      r_t

Guidance (paper Eq. 4):   g = g_mode − s_man · β_t · P_N g_mode    (s_man = manifold_scale)
and the sampler takes   x_{t−1} = μ_t + g + σ_t · noise.

Where U comes from (``GuidanceParams.basis``):
  noised     Eq. 5 literally: M_t = √ᾱ_t z + √(1−ᾱ_t) ε over the target's neighbourhood z ∈ N(c),
             fresh ε from the image's own guidance generator every step; the K points of M_t
             nearest x_t; top-d right singular vectors of the centred K×D matrix.
  expected   the noise-free expectation of Eq. 5: the K clean neighbours nearest x̂0
             (ᾱΣ + (1−ᾱ)I has the eigenvectors of Σ, so noise does not move the population basis).
  members    the target's own cluster members seen from x̂0: the top-d right singular vectors of
             the chords z_j − x̂0 to the K members nearest x̂0 (uncentred, members only; the
             pipeline pads nothing). Σ_j (z_j − x̂0)(z_j − x̂0)ᵀ = n Σ_members + n (c̄ − x̂0)(c̄ − x̂0)ᵀ,
             so while x̂0 is far from its cluster the direction to the cluster (≈ the mode vector)
             is in the basis and the pull survives; near the cluster the basis is the cluster's
             own principal directions. Directions with zero singular value (fewer members than d)
             are dropped, not filled with arbitrary orthonormal vectors.
  reference  the published code: a synthetic isotropic cloud of ``cloud_size`` points around c
             (radii: half linspace(0.1, r_t), half uniform(0, r_t)), noised to level ᾱ_t; K nearest
             to x_t; rank-d PCA (their D×D covariance + ridge·I, eigh; here the same directions
             by thin SVD); then g = g_mode + s_man · λ_man · tanh(dist_min / bandwidth) · n̂, with
             n̂ the unit vector −P_N(x_t − μ)/|·| from x_t toward the PCA plane through the
             neighbours' mean μ and dist_min the distance from x_t to the nearest cloud point.
             The mode term is NOT projected in this variant.
The reference code's ridge (1e-5) only shifts every covariance eigenvalue by the same amount, so
it never changes singular vectors; it is not a parameter here (it would change no output).
The radius only shapes the reference cloud; noised/expected use the real neighbourhood given.
Every basis is computed from the K×K Gram matrix of its K×D matrix (accumulated and eigh'd in
float64, then u_i = Aᵀv_i/σ_i; ``top_right_singular``), the same subspace as a thin SVD; directions
with σ_i <= tol σ_1 (``null_tol``: 1e-4 in float32, 1e-6 in float64) or at the data's rounding
level are not determined by the set and are zero rows on every path (rank-deficient sets give a
lower-rank P_T, never arbitrary directions).

Guidance is on only while the respaced index t_index > t_stop (t_stop itself and below: off).
Warm window: guided step i = 0, 1, ... (i = 0 at t_index = N−1), W_eff = min(W, n_guided),
p = (W_eff − i)/W_eff for i < W_eff else 0,  s(p) = (e^p − 1)/(e − 1) | p | (1 − cos πp)/2 | 0,
r_t = r (1 + (m − 1) s(p)).
β_t by ``beta_schedule``, with q = i / (n_guided − 1) the fraction of the guided steps done:
  constant  β
  anneal    β (1 − s(p)): no normal removal at the first guided step, where x̂0 is least reliable,
            reaching β at the end of the warm window
  ramp      β q: 0 at the first guided step, β at the last (the early, coarse pull is MGD3's)
  decay     β (1 − q): β at the first guided step, 0 at the last
Projection window (``t_project``): the normal removal is applied only while t_index <= t_project,
i.e. in the later guided steps where x̂0 is informative; earlier guided steps use the unprojected
g_mode (β_t is reported as 0 there). None = every guided step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..params import GuidanceParams


# ----------------------------------------------------------------------------------------
# pure math
# ----------------------------------------------------------------------------------------
BASIS_METHODS = ("gram", "svd")


GRAM_CHUNK = 256      # CPU: columns of A per float64 piece of the Gram matrix (stays in cache)


def null_tol(dtype: torch.dtype) -> float:
    """Default rule of the bases: a direction with σ_i <= tol σ_1 is not determined by the set.
    -> 1e-6 (float64), 1e-4 (float32 and below: a float32 u_i = Aᵀv_i/σ_i carries ~eps σ_1/σ_i,
    at most ~1e-3 at the rule; a float32 SVD is no more accurate there)."""
    return 1e-6 if dtype == torch.float64 else 1e-4


def _gram64(A: torch.Tensor) -> torch.Tensor:
    """A Aᵀ (B, K, K) in float64, from A (B, K, D) of any float dtype. On a CPU the float64 copy
    is made GRAM_CHUNK columns at a time (one whole float64 copy of A costs more memory traffic
    than the products); on a GPU in one piece."""
    if A.dtype == torch.float64 or A.device.type != "cpu":
        A64 = A.to(torch.float64)
        return torch.bmm(A64, A64.transpose(1, 2))
    G = torch.zeros(A.shape[0], A.shape[1], A.shape[1], dtype=torch.float64)
    for part in A.split(GRAM_CHUNK, dim=2):
        p64 = part.to(torch.float64)
        G.baddbmm_(p64, p64.transpose(1, 2))
    return G


def top_right_singular(A: torch.Tensor, d: int, *, method: str = "gram", rel_tol: float | None = None,
                       offset: torch.Tensor | None = None) -> torch.Tensor:
    """Top-d right singular vectors of each K×D matrix A (B, K, D), null directions zeroed.

    -> U (B, d', D) in A's dtype, d' = min(d, K, D): orthonormal rows in descending singular value,
    except the rows whose singular value is <= rel_tol × the largest (default ``null_tol``) or
    <= 8 eps(A.dtype) (‖A‖_F + offset), with offset (B,) the norm of what was subtracted to form
    A (below that, σ is the rounding of the subtraction, e.g. a set of equal points). Those rows
    are all zero, so P_T = UᵀU never holds a direction the data does not determine
    (rank-deficient sets: a lower-rank P_T; equal points or an all-zero A: U = 0).

    gram (default): G = A Aᵀ = V Λ Vᵀ (K×K, eigh), then u_i = Aᵀ v_i / σ_i, σ_i = √λ_i: two batched
        matmuls (B·K²·D and B·d·K·D) and a K×K eigh instead of a thin SVD of the D×K matrix; the
        same subspace. G squares the condition number, so G and its eigh are float64 whatever A's
        dtype (eigenvalues to ~1e-16 λ_1; a float32 G resolves only ~1e-7 λ_1 and loses the fine
        directions of a set dominated by one direction, e.g. chords from a far x̂0); the u_i are
        formed in A's dtype. The null rule above is the fallback for tiny eigenvalues: such a
        direction is dropped (a zero row) on both paths, so u_i = Aᵀv_i/σ_i never divides by a
        rounding-level σ_i. benchmarks/reports/guidance_basis.md: time, and both paths' distance
        to a float64 SVD.
    svd: thin SVD of the D×K transpose in A's dtype (LAPACK / cuSOLVER), the same null rule; kept as
        the reference the Gram path is tested against (tests/test_guidance.py).
    Neither path reads a value back to the host in Python; on CUDA, torch.linalg checks the
    eigh's / SVD's error codes on the host (one synchronisation per call; benchmarks.gpu_check
    counts them).
    """
    if method not in BASIS_METHODS:
        raise ValueError(f"method must be one of {BASIS_METHODS}, got {method!r}")
    K, D = A.shape[1], A.shape[2]
    d = min(int(d), K, D)
    tol = null_tol(A.dtype) if rel_tol is None else float(rel_tol)
    eps = 8 * torch.finfo(A.dtype).eps
    if method == "svd":
        # Aᵀ = W S Vᵀ  =>  the right singular vectors of A are the columns of W (tall input)
        W, S, _ = torch.linalg.svd(A.transpose(1, 2), full_matrices=False)     # W (B, D, min(K, D))
        norm = S.square().sum(-1, keepdim=True).sqrt()                           # ‖A‖_F (B, 1)
        floor = eps * (norm if offset is None else norm + offset.to(S.dtype).unsqueeze(-1))
        keep = ((S[:, :d] > tol * S[:, :1]) & (S[:, :d] > floor)).to(W.dtype)    # (B, d)
        return (W[:, :, :d] * keep.unsqueeze(1)).transpose(1, 2).contiguous()
    G = _gram64(A)                                                                # (B, K, K) float64
    norm = G.diagonal(dim1=1, dim2=2).sum(-1, keepdim=True).clamp_min(0).sqrt()  # ‖A‖_F (B, 1)
    floor = eps * (norm if offset is None else norm + offset.to(G.dtype).unsqueeze(-1))
    lam, V = torch.linalg.eigh(G)                                                 # ascending
    lam, V = lam.flip(-1)[:, :d].clamp_min(0), V.flip(-1)[:, :, :d]              # (B, d), (B, K, d)
    keep = (lam > (tol * tol) * lam[:, :1]) & (lam > floor * floor)               # (B, d); none if A = 0
    inv_sigma = torch.where(keep, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
    return torch.bmm(V.transpose(1, 2).to(A.dtype), A) * inv_sigma.to(A.dtype).unsqueeze(-1)   # (B, d, D)


def tangent_basis(nbrs: torch.Tensor, d: int, mask: torch.Tensor | None = None, *, method: str = "gram",
                  rel_tol: float | None = None) -> torch.Tensor:
    """Top-d principal directions of each neighbour set (never a D×D matrix).

    nbrs (B, K, D); mask (B, K) bool, False rows ignored (zeroed after centring on the valid mean)
    -> U (B, d', D), d' = min(d, K, D): the top-d right singular vectors of the centred K×D, by the
    K×K Gram matrix (``top_right_singular``); directions the set does not determine (fewer than
    d + 1 distinct valid points) are zero rows.
    """
    if mask is None:
        mu = nbrs.mean(dim=1, keepdim=True)                                # (B, 1, D)
        centred, n = nbrs - mu, torch.full((len(nbrs),), float(nbrs.shape[1]), dtype=nbrs.dtype,
                                           device=nbrs.device)
    else:
        w = mask.to(nbrs.dtype).unsqueeze(-1)                              # (B, K, 1)
        n = w.sum(dim=(1, 2))
        mu = (nbrs * w).sum(dim=1, keepdim=True) / n.clamp_min(1.0).view(-1, 1, 1)
        centred = (nbrs - mu) * w
    # ‖valid rows‖_F <= ‖centred‖_F + √n ‖μ‖: the rounding level of the centring
    return top_right_singular(centred, d, method=method, rel_tol=rel_tol, offset=n.sqrt() * mu[:, 0].norm(dim=1))


def chord_basis(nbrs: torch.Tensor, x0_hat: torch.Tensor, d: int, mask: torch.Tensor | None = None,
                rel_tol: float | None = None, *, method: str = "gram") -> torch.Tensor:
    """Top-d directions of the chords from x̂0 to each neighbour (the ``members`` basis).

    nbrs (B, K, D), x0_hat (B, D), mask (B, K) bool (False rows ignored) -> U (B, d', D),
    d' = min(d, K, D): the top-d right singular vectors of the UNCENTRED K×D matrix of rows
    z_j − x̂0 (``top_right_singular``). Rows whose singular value is at most rel_tol × the largest
    (default ``null_tol``) or at the rounding level of the chords are zeroed (rank-deficient sets:
    fewer chords than d), so P_T never contains an arbitrary direction.
    """
    chords = nbrs - x0_hat.unsqueeze(1)
    if mask is None:
        n = torch.full((len(nbrs),), float(nbrs.shape[1]), dtype=nbrs.dtype, device=nbrs.device)
    else:
        w = mask.to(chords.dtype).unsqueeze(-1)
        chords, n = chords * w, w.sum(dim=(1, 2))
    # ‖valid rows‖_F <= ‖chords‖_F + √n ‖x̂0‖: the rounding level of the subtraction
    return top_right_singular(chords, d, method=method, rel_tol=rel_tol, offset=n.sqrt() * x0_hat.norm(dim=1))


def project_tangent(v: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """P_T v = Uᵀ U v.   v (B, D), U (B, d, D) orthonormal rows -> (B, D)."""
    coeff = torch.einsum("bkd,bd->bk", U, v)                            # (B, d)
    return torch.einsum("bk,bkd->bd", coeff, U)


def project_normal(v: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """P_N v = v − P_T v.   v (B, D), U (B, d, D) -> (B, D)."""
    return v - project_tangent(v, U)


def mode_term(x0_hat: torch.Tensor, c: torch.Tensor, sigma_t, lam_mode: float) -> torch.Tensor:
    """MGD3 mode vector g_mode = −λ_mode σ_t (x̂0 − c).

    x0_hat, c (B, D); sigma_t scalar, (B,) or (B, D) -> (B, D).
    """
    if torch.is_tensor(sigma_t) and sigma_t.ndim == 1:
        sigma_t = sigma_t.unsqueeze(-1)
    return -lam_mode * sigma_t * (x0_hat - c)


# s(p) of the warm window, by ``radius_kind`` (p = 1 at the first guided step, -> 0)
WARM_SHAPES = {
    "exp": lambda p: (math.exp(p) - 1.0) / (math.e - 1.0),
    "linear": lambda p: p,
    "cosine": lambda p: (1.0 - math.cos(math.pi * p)) / 2.0,
    "none": lambda p: 0.0,
}


def _choice(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"{what} must be one of {tuple(table)}, got {name!r}") from None


def warm_shape(step_i: int, n_guided_total: int, warm: int, kind: str = "exp") -> float:
    """s(p) of the warm window: 1 at the first guided step, 0 from step W_eff = min(W, n_guided) on."""
    shape = _choice(WARM_SHAPES, kind, "radius_kind")
    span = min(int(warm), int(n_guided_total))
    if span <= 0 or step_i >= span or step_i < 0:
        return 0.0
    return float(shape((span - step_i) / span))


def radius_schedule(step_i: int, n_guided_total: int, r: float, m: float, warm: int,
                    kind: str = "exp") -> float:
    """r_t = r (1 + (m − 1) s(p)); i = 0 is the first guided step (r = ``radius``, m =
    ``radius_mult``).  -> float.

    r=1, m=2, W=5, exp: 2.000, 1.713, 1.478, 1.286, 1.129, then 1.0.
    """
    return float(r) * (1.0 + (float(m) - 1.0) * warm_shape(step_i, n_guided_total, warm, kind))


def _done_fraction(i: int, n: int) -> float:
    """q = i / (n − 1), the fraction of the guided steps done (1 when there is one)."""
    return min(1.0, max(0.0, i / (n - 1))) if n > 1 else 1.0


# β_t / β by ``beta_schedule``: f(step_i, n_guided_total, warm, radius_kind)
BETA_RULES = {
    "constant": lambda i, n, w, k: 1.0,
    "anneal": lambda i, n, w, k: 1.0 - warm_shape(i, n, w, k),
    "ramp": lambda i, n, w, k: _done_fraction(i, n),
    "decay": lambda i, n, w, k: 1.0 - _done_fraction(i, n),
}


def beta_schedule(step_i: int, n_guided_total: int, beta: float, warm: int, kind: str = "exp",
                  schedule: str = "constant") -> float:
    """β_t at guided step i (0 = first) of n_guided_total (see the module docstring).

    constant β; anneal β (1 − s(p)) over the radius's warm window; ramp β q and decay β (1 − q)
    over all guided steps, q = i / (n_guided_total − 1) (q = 1 when there is one guided step).
    """
    rule = _choice(BETA_RULES, schedule, "beta_schedule")
    return float(beta) * float(rule(step_i, n_guided_total, warm, kind))


def knn_rows(points: torch.Tensor, query: torch.Tensor, K: int, mask: torch.Tensor | None = None,
             sq_norms: torch.Tensor | None = None):
    """K rows of each point set nearest its query (squared L2).

    points (B, M, D), query (B, D), mask (B, M) bool, sq_norms (B, M) optional cached |points|²
    -> (nbrs (B, K', D), valid (B, K') bool, dist_min (B,) exact Euclidean distance to the nearest
    valid point); K' = min(K, M). Ranking uses |p|² − 2 p·q (the |q|² term is common).
    """
    if sq_norms is None:
        sq_norms = (points * points).sum(-1)                             # (B, M)
    score = sq_norms - 2.0 * torch.bmm(points, query.unsqueeze(-1)).squeeze(-1)
    if mask is not None:
        score = score.masked_fill(~mask, float("inf"))
    k = min(int(K), points.shape[1])
    vals, idx = torch.topk(score, k, dim=1, largest=False)               # (B, k)
    B, M, D = points.shape
    # whole rows by index_select on the flattened sets (a gather with an index expanded over D is
    # ~6x slower on a CPU at B=64, M=64, D=4096)
    rows = (idx + torch.arange(B, device=idx.device).unsqueeze(1) * M).reshape(-1)
    nbrs = points.reshape(B * M, D).index_select(0, rows).reshape(B, k, D)
    valid = torch.isfinite(vals)
    dist_min = (nbrs[:, 0] - query).norm(dim=1)
    return nbrs, valid, dist_min


# ----------------------------------------------------------------------------------------
# neighbourhoods (built by the pipeline from the class latents)
# ----------------------------------------------------------------------------------------
def neighbourhood_for_target(Z_class: np.ndarray, ids_class: np.ndarray, target, M_max: int, K: int,
                             return_ids: bool = False):
    """Real class latents around one target: its members first, padded by nearest latents.

    Z_class (n, D), ids_class (n,); target has ``member_ids`` and ``target`` (D,).
    Rule: take the members; if fewer than K, add the non-members nearest to c until K (or the
    class runs out); if more than M_max, keep the M_max members nearest to c.
    Rows are ordered by distance to c.  -> (M, D) float32 [, (M,) int64 ids].
    """
    Z = np.asarray(Z_class, dtype=np.float32).reshape(len(Z_class), -1)
    ids = np.asarray(ids_class, dtype=np.int64)
    c = np.asarray(target.target, dtype=np.float32).reshape(-1)
    d2 = ((Z - c) ** 2).sum(1)
    is_member = np.isin(ids, np.asarray(target.member_ids, dtype=np.int64))
    members = np.flatnonzero(is_member)
    members = members[np.argsort(d2[members], kind="stable")][:M_max]
    if len(members) < K:
        others = np.flatnonzero(~is_member)
        others = others[np.argsort(d2[others], kind="stable")][: K - len(members)]
        members = np.concatenate([members, others])
        members = members[np.argsort(d2[members], kind="stable")]
    return (Z[members], ids[members]) if return_ids else Z[members]


def pad_neighbourhoods(nbr_list: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-image neighbourhoods of different sizes.

    list of B arrays (M_b, D) -> (nbrs (B, M, D) float32 zero-padded, mask (B, M) bool), M = max M_b.
    """
    M = max(len(a) for a in nbr_list)
    D = np.asarray(nbr_list[0]).reshape(len(nbr_list[0]), -1).shape[1]
    nbrs = torch.zeros(len(nbr_list), M, D)
    mask = torch.zeros(len(nbr_list), M, dtype=torch.bool)
    for b, a in enumerate(nbr_list):
        a = torch.as_tensor(np.asarray(a, dtype=np.float32).reshape(len(a), -1))
        nbrs[b, : len(a)] = a
        mask[b, : len(a)] = True
    return nbrs, mask


# ----------------------------------------------------------------------------------------
# guidance objects (called by the sampler once per step)
# ----------------------------------------------------------------------------------------
@dataclass
class StepInfo:
    """What a guidance object may know about the current step."""
    i: int                                  # loop counter, 0 at the first step (t_index = N-1)
    t_index: int                            # respaced index, N-1 .. 0 (counts down)
    t: int                                  # original timestep given to the model
    n_steps: int                            # N
    alpha_bar_t: float                      # ᾱ at this step
    sigma_t: torch.Tensor | float           # (B, D): std of the reverse DDPM step exp(½ log_var)
    generators: list | None = None          # B torch.Generators (CPU) for guidance randomness

    @property
    def i_guided(self) -> int:
        """Index within the guided phase; guidance starts at the first step, so == i."""
        return self.i


class NoGuidance:
    """Plain DiT: never on."""

    def is_on(self, step: StepInfo) -> bool:
        return False

    def __call__(self, x_t: torch.Tensor, x0_hat: torch.Tensor, step: StepInfo) -> torch.Tensor:
        """(B, D) -> zeros (B, D)."""
        return torch.zeros_like(x_t)


class ManifoldGuidance:
    """g(x_t, x̂0, step) for a batch of B images with targets c (B, D).

    neighbourhoods: None (only for basis="reference" or manifold_scale=0), a tensor (B, M, D),
    or a pair (nbrs (B, M, D), mask (B, M) bool) of REAL class latents per target.
    ``last_stats`` holds batch means of |g_mode|, |P_N g_mode|/|g_mode|, the removed share
    |g − g_mode|/|g_mode|, r_t and β_t of the last call (no basis stats where nothing is removed).
    A call reads nothing back to the host: the batch means stay tensors on the device until
    ``last_stats`` is read (that read is the only synchronisation, and only a logger makes it).
    """

    def __init__(self, c: torch.Tensor, neighbourhoods=None, params: GuidanceParams | None = None, *,
                 basis_method: str = "gram"):
        if basis_method not in BASIS_METHODS:
            raise ValueError(f"basis_method must be one of {BASIS_METHODS}, got {basis_method!r}")
        self.basis_method = basis_method     # "gram" (K×K eigh) | "svd": same subspace (top_right_singular)
        self.params: GuidanceParams = params or GuidanceParams()
        self.c = torch.as_tensor(c).reshape(len(c), -1)
        if isinstance(neighbourhoods, (tuple, list)):
            nbrs, mask = neighbourhoods
        else:
            nbrs, mask = neighbourhoods, None
        if nbrs is not None:
            nbrs = torch.as_tensor(nbrs)
            nbrs = nbrs.reshape(nbrs.shape[0], nbrs.shape[1], -1)
            mask = torch.ones(nbrs.shape[:2], dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
            if nbrs.shape[0] != self.c.shape[0] or nbrs.shape[2] != self.c.shape[1]:
                raise ValueError(f"neighbourhoods must be (B, M, D) = ({self.c.shape[0]}, M, {self.c.shape[1]}), "
                                 f"got {tuple(nbrs.shape)}")
        elif self.params.basis in TANGENT_BASES and self.params.manifold_scale != 0:
            raise ValueError(f"basis={self.params.basis!r} needs neighbourhoods (B, M, D) of real latents; "
                             f"pass them, or use basis='reference' / manifold_scale=0")
        self.nbrs, self.mask, self._sq = nbrs, mask, None
        self._c_dev = self.c                 # c on the working device and dtype (moved once)
        self._stats: dict = {}

    @property
    def last_stats(self) -> dict:
        """The last call's statistics as Python floats (reading them synchronises with the device)."""
        return {k: float(v) if torch.is_tensor(v) else v for k, v in self._stats.items()}

    def _target(self, like: torch.Tensor) -> torch.Tensor:
        if self._c_dev.device != like.device or self._c_dev.dtype != like.dtype:
            self._c_dev = to_device(self.c, like.device, like.dtype)
        return self._c_dev

    def is_on(self, step: StepInfo) -> bool:
        """True while t_index > t_stop."""
        return step.t_index > self.params.t_stop

    def projects(self, step: StepInfo) -> bool:
        """True where the normal removal applies: a guided step inside the window t_index <= t_project."""
        t_p = self.params.t_project
        return self.is_on(step) and (t_p is None or step.t_index <= t_p)

    def _n_guided(self, step: StepInfo) -> int:
        return max(0, step.n_steps - 1 - self.params.t_stop)

    def __call__(self, x_t: torch.Tensor, x0_hat: torch.Tensor, step: StepInfo) -> torch.Tensor:
        """x_t, x0_hat (B, D) -> g (B, D) (zeros when off)."""
        P: GuidanceParams = self.params
        if not self.is_on(step):
            return torch.zeros_like(x_t)
        out_dtype = x_t.dtype
        wd = out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32
        x_t, x0_hat = x_t.to(wd), x0_hat.to(wd)
        c = self._target(x_t)
        sigma_t = step.sigma_t.to(x_t.device, wd) if torch.is_tensor(step.sigma_t) else step.sigma_t
        n_g = self._n_guided(step)
        r_t = radius_schedule(step.i_guided, n_g, P.radius, P.radius_mult, P.warm, P.radius_kind)
        beta_t = beta_schedule(step.i_guided, n_g, P.beta, P.warm, P.radius_kind, P.beta_schedule) \
            if self.projects(step) else 0.0
        g_mode = mode_term(x0_hat, c, sigma_t, P.lam_mode)
        stats = {"g_mode_norm": g_mode.norm(dim=1).mean(), "r_t": r_t, "beta_t": beta_t}
        pull, basis = PULLS.get(P.basis), TANGENT_BASES.get(P.basis)
        if P.manifold_scale == 0 or (pull is None and beta_t == 0):
            g = g_mode                      # nothing to remove: skip the basis
        elif pull is not None:              # a correction added to the unprojected mode term
            g = g_mode + P.manifold_scale * pull(self, x_t, c, step, r_t, stats)
        else:                               # the normal component of g_mode removed
            U = basis(self, x_t, x0_hat, step)
            normal = project_normal(g_mode, U)
            g = g_mode - P.manifold_scale * beta_t * normal
            gn = g_mode.norm(dim=1).clamp_min(1e-30)
            stats["normal_frac"] = (normal.norm(dim=1) / gn).mean()
            stats["removed_frac"] = ((g - g_mode).norm(dim=1) / gn).mean()
        self._stats = stats
        return g.to(out_dtype)

    # --- the bases ------------------------------------------------------------------
    def _neigh(self, like: torch.Tensor):
        """(nbrs (B, M, D), mask (B, M), |nbrs|² (B, M)) on like's device and dtype (cached)."""
        if self.nbrs.dtype != like.dtype or self.nbrs.device != like.device or self._sq is None:
            self.nbrs, self.mask = self.nbrs.to(like.device, like.dtype), self.mask.to(like.device)
            self._sq = (self.nbrs * self.nbrs).sum(-1)
        return self.nbrs, self.mask, self._sq

    def _members_basis(self, x_t: torch.Tensor, x0_hat: torch.Tensor, step: StepInfo) -> torch.Tensor:
        """members: chords from x̂0 to its K nearest real members.  -> U (B, d, D)."""
        P: GuidanceParams = self.params
        nbrs, mask, sq = self._neigh(x_t)
        pts, valid, _ = knn_rows(nbrs, x0_hat, P.K, mask, sq)
        return chord_basis(pts, x0_hat, P.d, valid, method=self.basis_method)

    def _expected_basis(self, x_t: torch.Tensor, x0_hat: torch.Tensor, step: StepInfo) -> torch.Tensor:
        """expected: the K clean real neighbours nearest x̂0, centred.  -> U (B, d, D)."""
        P: GuidanceParams = self.params
        nbrs, mask, sq = self._neigh(x_t)
        pts, valid, _ = knn_rows(nbrs, x0_hat, P.K, mask, sq)
        return tangent_basis(pts, P.d, valid, method=self.basis_method)

    def _noised_basis(self, x_t: torch.Tensor, x0_hat: torch.Tensor, step: StepInfo) -> torch.Tensor:
        """noised (Eq. 5): the neighbourhood noised to ᾱ_t with fresh per-image noise, the K points
        nearest x_t, centred.  -> U (B, d, D)."""
        P: GuidanceParams = self.params
        nbrs, mask, _ = self._neigh(x_t)
        noise = _per_image_randn(step.generators, nbrs.shape, nbrs)          # (B, M, D)
        ab = float(step.alpha_bar_t)
        M_t = math.sqrt(ab) * nbrs + math.sqrt(1.0 - ab) * noise
        pts, valid, _ = knn_rows(M_t, x_t, P.K, mask)
        return tangent_basis(pts, P.d, valid, method=self.basis_method)

    def _reference_pull(self, x_t: torch.Tensor, c: torch.Tensor, step: StepInfo, r_t: float,
                        stats: dict) -> torch.Tensor:
        """λ_man tanh(dist_min/bandwidth) n̂ toward the PCA plane of a noised synthetic cloud.  -> (B, D)."""
        P: GuidanceParams = self.params
        B, D = x_t.shape
        S = int(P.cloud_size)
        gens = _generators(step.generators, B)
        dirs = torch.stack([torch.randn(S, D, generator=g, dtype=torch.float32) for g in gens])
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)                                  # (B, S, D)
        radii = torch.stack([torch.cat([torch.linspace(0.1, r_t, S // 2),
                                        torch.rand(S - S // 2, generator=g) * r_t]) for g in gens])
        noise = torch.stack([torch.randn(S, D, generator=g, dtype=torch.float32) for g in gens])
        dirs, radii, noise = (to_device(t, x_t.device, x_t.dtype) for t in (dirs, radii, noise))
        ab = float(step.alpha_bar_t)
        cloud = math.sqrt(ab) * (c.unsqueeze(1) + radii.unsqueeze(-1) * dirs) + math.sqrt(1 - ab) * noise
        pts, valid, dist_min = knn_rows(cloud, x_t, P.K)                               # (B, K, D)
        U = tangent_basis(pts, P.d, method=self.basis_method)
        mu = pts.mean(dim=1)                                                            # (B, D)
        toward = -project_normal(x_t - mu, U)                                           # (B, D)
        n_hat = toward / (toward.norm(dim=1, keepdim=True) + 1e-8)
        weight = torch.tanh(dist_min / P.bandwidth).unsqueeze(-1)                       # (B, 1)
        pull = P.lam_man * weight * n_hat
        stats["pull_norm"] = pull.norm(dim=1).mean()
        return pull


# The bases (``GuidanceParams.basis``), each one method of ManifoldGuidance: a tangent basis
# (x_t, x̂0, step) -> U (B, d, D), whose normal component of g_mode is removed; or a pull
# (x_t, c, step, r_t, stats) -> (B, D) added to the unprojected g_mode. A new basis is one entry.
TANGENT_BASES = {"noised": ManifoldGuidance._noised_basis, "expected": ManifoldGuidance._expected_basis,
                 "members": ManifoldGuidance._members_basis}
PULLS = {"reference": ManifoldGuidance._reference_pull}


def _generators(generators, B: int) -> list:
    if generators is None:
        raise ValueError("this guidance basis draws noise: StepInfo.generators must hold one "
                         "torch.Generator per image (the sampler provides them)")
    if len(generators) != B:
        raise ValueError(f"need {B} generators (one per image), got {len(generators)}")
    return list(generators)


def _per_image_randn(generators, shape, like: torch.Tensor) -> torch.Tensor:
    """Standard normal (B, ...) drawn image by image from its own CPU generator, float32 -> like."""
    gens = _generators(generators, shape[0])
    z = torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=torch.float32) for g in gens])
    return to_device(z, like.device, like.dtype)


def to_device(t: torch.Tensor, device, dtype=None) -> torch.Tensor:
    """A host tensor moved to ``device`` without blocking the host: on CUDA through pinned memory
    and a non-blocking copy (a plain copy from pageable memory synchronises the stream), then cast
    there. Values are those of ``t.to(device, dtype)``.  CPU targets: ``t.to(dtype)``.
    """
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t if dtype is None else t.to(dtype)
