"""Per-class coresets in latent space: the hierarchical divisive tree (ManifoldGD) and baselines.

One call handles one class: ``Z`` (n, D) latents with their stable ``ids`` (n,), and returns
exactly ``ipc`` :class:`Target` s, one per synthetic image.

Methods
  divisive  bisecting 2-means (FAISS) grown by a split criterion, then ``selection``:
              leaves     grow exactly ipc leaves; targets = the leaves (what the reference code does)
              levelwise  the paper's coarse-to-fine rule on a deeper tree (see ``select_levelwise``)
  kmeans    FAISS k-means with k = ipc (MGD3); targets = cluster means (or medoids)
  random    ipc distinct random real latents
  herding   greedy herding toward the class mean (each pick keeps the running mean closest to it)
  kcenter   greedy k-center, starting from the latent nearest the class mean

Split criteria: ``sse`` picks the leaf with the largest sum of squared distances to its mean;
``var`` the largest MEAN squared distance (SSE / size). (The reference code's ``var`` is numpy's
scalar variance of all entries, which also measures spread between dimensions; we do not copy it.)
A node's 2-means runs ``n_restarts`` seeded FAISS trainings on ALL its points
(``max_points_per_centroid >= n`` so FAISS never subsamples; GPU when the FAISS build has one)
and keeps the one with the lowest objective; a split with an empty side falls back to a seeded
random halving. ``engine="numpy"`` swaps FAISS for fused one-pass Lloyd iterations in numpy
(k-means++ seeding), which the CPU benchmark (benchmarks/coreset_speed.py) found faster for
k = 2 at D = 4096; the tree logic is the same.
Everything is deterministic for a given ``seed`` (and thread count, for FAISS's reductions).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..params import CoresetParams

_SMALL_NODE = 1 << 22          # nodes with fewer numbers than this run FAISS on one thread


def image_seed(global_seed: int, label: int, index: int) -> int:
    """Seed of synthetic image (class ``label``, index ``index``): 63-bit, from SeedSequence.

    Independent of batch size, worker count and order. -> int in [0, 2**63).
    """
    state = np.random.SeedSequence([int(global_seed), int(label), int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) >> 1)


@dataclass
class Target:
    """One synthetic image's target ``c`` and where it came from."""
    label: int
    index: int                    # j within the class, 0..ipc-1
    depth: int                    # tree depth (root = 0); 0 for non-tree methods
    parent: int                   # parent node id; -1 for the root and non-tree methods
    node: int                     # node id in the class tree; -1 for non-tree methods
    size: int                     # number of member latents
    member_ids: np.ndarray        # (size,) int64 ids of the members
    target: np.ndarray            # (D,) float32 latent c (mean or medoid, or the chosen real latent)
    seed: int                     # image_seed(global_seed, label, index)
    source_id: int = -1           # id of the chosen real latent (medoid/random/herding/kcenter), else -1
    method: str = ""              # e.g. "divisive/levelwise/sse/mean"

    def to_row(self) -> dict:
        """Flat dict (for a table row)."""
        return dataclasses.asdict(self)


@dataclass
class _Node:
    idx: np.ndarray               # (m,) row positions into Z
    depth: int
    parent: int
    sse: float
    children: list = field(default_factory=list)
    total: np.ndarray | None = None   # (D,) float64 sum of the member rows


# ----------------------------------------------------------------------------------------
# small numerics
# ----------------------------------------------------------------------------------------
def _mean64(X: np.ndarray) -> np.ndarray:
    """(m, D) -> (D,) float64 mean."""
    return X.mean(axis=0, dtype=np.float64)


def _sse(X: np.ndarray, mu: np.ndarray | None = None, chunk: int = 2048) -> float:
    """Sum of squared distances of the rows of X (m, D) to their mean; float64 accumulation."""
    if len(X) <= 1:
        return 0.0
    mu32 = (_mean64(X) if mu is None else mu).astype(np.float32)
    total = 0.0
    for s in range(0, len(X), chunk):
        d = X[s:s + chunk] - mu32
        total += float(np.einsum("ij,ij->", d, d, dtype=np.float64))
    return total


def _row_stats(X: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(|x|² per row (m,), Σ x (D,)), both accumulated in float64.  X (m, D)."""
    row_sq = np.empty(len(X), dtype=np.float64)
    total = np.zeros(X.shape[1], dtype=np.float64)
    for s in range(0, len(X), chunk):
        Xc = X[s:s + chunk].astype(np.float64)
        row_sq[s:s + chunk] = np.einsum("ij,ij->i", Xc, Xc)
        total += Xc.sum(axis=0)
    return row_sq, total


def _masked_sum(X: np.ndarray, mask: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Σ of the rows X[mask] in float64, without copying them.  X (m, D), mask (m,) -> (D,)."""
    out = np.zeros(X.shape[1], dtype=np.float64)
    for s in range(0, len(X), chunk):
        out += mask[s:s + chunk].astype(np.float64) @ X[s:s + chunk].astype(np.float64)
    return out


def _sse_from(sum_sq: float, total: np.ndarray, k: int) -> float:
    """SSE of k rows from Σ|x|² and Σx (float64): Σ|x|² − |Σx|²/k, clipped at 0."""
    return 0.0 if k <= 1 else max(0.0, float(sum_sq) - float(total @ total) / k)


def _sqdist_to(X: np.ndarray, v: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Squared distances of rows X (m, D) to one point v (D,) -> (m,) float64."""
    v32 = np.asarray(v, dtype=np.float32)
    out = np.empty(len(X), dtype=np.float64)
    for s in range(0, len(X), chunk):
        d = X[s:s + chunk] - v32
        out[s:s + chunk] = np.einsum("ij,ij->i", d, d, dtype=np.float64)
    return out


def _faiss_gpu() -> bool:
    """True when this FAISS build sees a GPU (faiss-gpu); faiss-cpu -> False."""
    import faiss
    return bool(getattr(faiss, "get_num_gpus", lambda: 0)() > 0)


@contextlib.contextmanager
def _faiss_threads(n_numbers: int):
    """OpenMP start-up costs more than a small k-means: one FAISS thread below ~4M numbers."""
    import faiss

    n_thr = faiss.omp_get_max_threads()
    if n_numbers < _SMALL_NODE:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(n_thr)


def _assign_two(X: np.ndarray, c0: np.ndarray, c1: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Nearest of two centroids for every row of X (m, D): True = c1.  -> (m,) bool.

    |x − c1|² < |x − c0|²  <=>  x·(c1 − c0) > (|c1|² − |c0|²)/2 ; one matrix-vector pass.
    """
    c0, c1 = c0.astype(np.float64), c1.astype(np.float64)
    w = (c1 - c0).astype(np.float32)
    thr = 0.5 * (c1 @ c1 - c0 @ c0)
    out = np.empty(len(X), dtype=bool)
    for s in range(0, len(X), chunk):
        out[s:s + chunk] = X[s:s + chunk] @ w > thr
    return out


def _two_means(X: np.ndarray, rng: np.random.Generator, n_restarts: int, niter: int):
    """Best-of-restarts FAISS 2-means on ALL rows of X (m, D) float32.

    Each restart is a seeded faiss.Kmeans (no subsampling; FAISS stops early once its objective
    stops changing); restarts are ranked by FAISS's final objective, the SSE of its last
    assignment (equal to the split's SSE once converged). The best non-degenerate one is kept;
    if every restart leaves a side empty, a seeded random halving.
    -> (assign (m,) bool: True = second cluster, faiss objective or None for the halving).
    """
    import faiss

    m, D = X.shape
    runs = []
    with _faiss_threads(m * D):
        for _ in range(max(1, n_restarts)):
            km = faiss.Kmeans(D, 2, niter=niter, seed=int(rng.integers(1, 2**31 - 1)), gpu=_faiss_gpu(),
                              max_points_per_centroid=m, min_points_per_centroid=1, verbose=False)
            km.train(X)
            runs.append((float(km.obj[-1]) if len(km.obj) else np.inf, km.centroids.copy()))
    for obj, cents in sorted(runs, key=lambda r: r[0]):
        assign = _assign_two(X, cents[0], cents[1])
        if 0 < int(assign.sum()) < m:
            return assign, obj
    assign = np.zeros(m, dtype=bool)                          # degenerate: seeded random halving
    assign[rng.permutation(m)[: m // 2]] = True
    return assign, None


def _two_means_numpy(X: np.ndarray, rng: np.random.Generator, n_restarts: int, niter: int,
                     chunk: int = 256, row_sq: np.ndarray | None = None, total: np.ndarray | None = None):
    """Best-of-restarts Lloyd 2-means in numpy, on ALL rows of X (m, D) float32.

    Same contract as ``_two_means`` (the FAISS engine). Seeding: k-means++ for k = 2 (a uniform
    row, then a row drawn with probability ∝ its squared distance to it), restart by restart.
    The restarts then iterate TOGETHER: each iteration is ONE chunked pass over X for all of
    them (a (c, D)×(D, 2R) product for the assignments, an (R, c)×(c, D) product for the new
    second-cluster sums), so X is read once per iteration, not once per restart (at class sizes
    the pass is memory-bound). A restart stops when its assignment no longer changes, or is
    degenerate, or after niter passes; restarts are ranked by the objective of their last pass
    (the split's SSE once converged), the first of equal ones kept.
    row_sq (m,) and total (D,) may be passed in (float64 |x|² and Σ x) to skip one pass.
    -> (assign (m,) bool, objective or None for the random-halving fallback).
    """
    m, D = X.shape
    if row_sq is None or total is None:                                      # (m,) |x|², (D,) Σ x
        row_sq, total = _row_stats(X)
    R = max(1, n_restarts)
    C = np.empty((2 * R, D), dtype=np.float64)          # rows r: first centroid, R + r: second
    for r in range(R):
        c0 = X[int(rng.integers(m))].astype(np.float64)
        d = np.maximum(row_sq - 2.0 * (X @ c0.astype(np.float32)).astype(np.float64) + c0 @ c0, 0.0)
        c1 = X[int(rng.choice(m, p=d / d.sum())) if d.sum() > 0 else int(rng.integers(m))]
        C[r], C[R + r] = c0, c1
    assign = np.zeros((m, R), dtype=bool)
    obj = np.full(R, np.inf)
    ok = np.zeros(R, dtype=bool)                        # last assignment has two non-empty sides
    active = np.arange(R)
    for it in range(max(1, niter)):
        a = len(active)
        W = np.concatenate([C[active], C[R + active]]).T.astype(np.float32)      # (D, 2a)
        cn = np.einsum("ij,ij->i", C, C)
        A = np.empty((m, a), dtype=bool)
        S1, ob = np.zeros((a, D), dtype=np.float64), np.zeros(a)
        for s in range(0, m, chunk):
            Xc = X[s:s + chunk]
            P = (Xc @ W).astype(np.float64)                                       # (c, 2a)
            rs = row_sq[s:s + chunk, None]
            d0 = rs - 2.0 * P[:, :a] + cn[active]
            d1 = rs - 2.0 * P[:, a:] + cn[R + active]
            Ac = d1 < d0
            A[s:s + chunk] = Ac
            ob += np.minimum(d0, d1).sum(axis=0)
            S1 += Ac.T.astype(np.float32) @ Xc                                    # (a, D)
        n1 = A.sum(axis=0)
        still = []
        for k, r in enumerate(active):
            same = it > 0 and np.array_equal(assign[:, r], A[:, k])
            assign[:, r], obj[r] = A[:, k], ob[k]
            ok[r] = 0 < n1[k] < m
            if not ok[r]:
                continue                                                          # degenerate: stop
            C[r], C[R + r] = (total - S1[k]) / (m - n1[k]), S1[k] / n1[k]
            if not same:
                still.append(r)
        active = np.asarray(still, dtype=np.int64)
        if not len(active):
            break
    if not ok.any():
        best = np.zeros(m, dtype=bool)
        best[rng.permutation(m)[: m // 2]] = True
        return best, None
    r = int(np.flatnonzero(ok)[np.argmin(obj[ok])])
    return assign[:, r].copy(), max(float(obj[r]), 0.0)


# 2-means engines: (X, rng, n_restarts, niter, row_sq, total) -> (assign (m,) bool, objective)
ENGINES = {
    "faiss": lambda X, rng, n_restarts, niter, row_sq=None, total=None: _two_means(X, rng, n_restarts, niter),
    "numpy": lambda X, rng, n_restarts, niter, row_sq=None, total=None: _two_means_numpy(
        X, rng, n_restarts, niter, row_sq=row_sq, total=total),
}

# split criteria of the divisive tree: a leaf's score (the largest is split next)
SPLIT_SCORES = {"sse": lambda nd: nd.sse, "var": lambda nd: nd.sse / len(nd.idx)}


def _choice(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"{what} must be one of {tuple(table)}, got {name!r}") from None


def resolve_engine(engine: str, gpus: int | None = None) -> str:
    """``auto`` -> the fastest measured engine here: FAISS when it has a GPU, else numpy (on one
    CPU thread numpy beats FAISS both at an ImageNet class, 1,300 x 4,096, and at 100,000 x
    4,096: benchmarks/reports/coreset_speed.md). ``gpus``: how many GPUs the caller was granted
    (a Ray task: ``len(ray.get_gpu_ids())``); 0 -> numpy whatever the process can see; None (not
    under a scheduler) -> FAISS when its build sees a GPU. Other names pass through."""
    if engine != "auto":
        return engine
    if gpus is not None and gpus <= 0:
        return "numpy"
    return "faiss" if _faiss_gpu() else "numpy"


# ----------------------------------------------------------------------------------------
# the divisive tree
# ----------------------------------------------------------------------------------------
def grow_tree(Z: np.ndarray, n_leaves: int, *, split: str = "sse", n_restarts: int = 3,
              niter: int = 20, seed: int = 0, on_split=None, engine: str = "faiss") -> tuple[list[_Node], list[int]]:
    """Bisecting 2-means until the tree has ``n_leaves`` leaves.

    Z (n, D) float32. Each round splits the leaf with the largest score (``sse``: SSE;
    ``var``: SSE/size), ties -> lowest node id; leaves whose points are all identical but
    that have >= 2 points are split by random halving only if nothing else is splittable.
    The tree grown to L leaves is the prefix of the tree grown to any L' > L (same seed).
    on_split(nodes, leaves), if given, is called after every split. engine: "faiss" (faiss.Kmeans,
    the default) or "numpy" (fused one-pass Lloyd iterations, see ``_two_means_numpy``).
    -> (nodes, leaf ids ascending). Node 0 is the root; children get consecutive ids.
    """
    n = len(Z)
    if not 1 <= n_leaves <= n:
        raise ValueError(f"cannot grow {n_leaves} leaves from {n} points")
    split_score, two_means = _choice(SPLIT_SCORES, split, "split"), _choice(ENGINES, engine, "engine")
    rng = np.random.default_rng(seed)
    row_sq, total = _row_stats(Z)                          # (n,) |x|², (D,) Σ x   (float64, once)
    nodes = [_Node(np.arange(n), 0, -1, _sse_from(row_sq.sum(), total, n), total=total)]
    leaves = [0]
    while len(leaves) < n_leaves:
        def score(i):
            nd = nodes[i]
            return (len(nd.idx) >= 2, split_score(nd))          # splittable first, then the criterion
        pick = max(leaves, key=lambda i: (score(i), -i))
        node = nodes[pick]
        X = Z if len(node.idx) == n else Z[node.idx]
        rs = row_sq[node.idx]
        assign, _ = two_means(X, rng, n_restarts, niter, row_sq=rs, total=node.total)
        s1 = _masked_sum(X, assign)                        # exact child sums, one float64 pass
        for side, tot in ((~assign, node.total - s1), (assign, s1)):
            k = int(side.sum())                            # SSE = Σ|x|² − |Σx|²/k, all float64
            nodes.append(_Node(node.idx[side], node.depth + 1, pick, _sse_from(rs[side].sum(), tot, k),
                               total=tot))
            node.children.append(len(nodes) - 1)
        del X
        leaves.remove(pick)
        leaves.extend(node.children)
        if on_split is not None:
            on_split(nodes, leaves)
    return nodes, sorted(leaves)


def _ancestor_sets(nodes: list[_Node]) -> list[set]:
    """For each node, the set {itself and all its ancestors}."""
    out: list[set] = []
    for i, nd in enumerate(nodes):                 # parents always have lower ids
        out.append({i} | (out[nd.parent] if nd.parent >= 0 else set()))
    return out


def select_levelwise(nodes: list[_Node], leaves: list[int], ipc: int, level_start: int = 1) -> list[int]:
    """The paper's level-wise rule, made precise.

    On a tree grown deeper than ipc leaves (see ``build_coreset``):
      1. coarse-to-fine sweep: for depth d = level_start, level_start+1, ..., max depth, take ONE
         node of depth d (leaf or internal): among unpicked nodes of that depth, prefer those
         that are neither an ancestor nor a descendant of an already picked node, then the
         largest, then the lowest id. Stop at ipc.
      2. fill: take leaves not yet picked, again preferring ones unrelated to picked nodes,
         then the largest, then the lowest id, until exactly ipc.
    Depth counts from the root (0 = the class mean); level_start = 0 allows the root.
    -> ipc distinct node ids, in pick order (coarse first).
    """
    picked: list[int] = []
    anc = _ancestor_sets(nodes)

    def key(i):
        related = any(p in anc[i] or i in anc[p] for p in picked)
        return (related, -len(nodes[i].idx), i)

    max_depth = max(nd.depth for nd in nodes)
    for d in range(max(0, level_start), max_depth + 1):
        if len(picked) >= ipc:
            break
        pool = [i for i, nd in enumerate(nodes) if nd.depth == d and i not in picked]
        if pool:
            picked.append(min(pool, key=key))
    while len(picked) < ipc:
        pool = [i for i in leaves if i not in picked]
        picked.append(min(pool, key=key))
    return picked


# ----------------------------------------------------------------------------------------
# baselines choosing real latents
# ----------------------------------------------------------------------------------------
def _herding(Z: np.ndarray, ipc: int) -> list[int]:
    """Greedy herding: pick k minimises |mu - mean(picked + x)|.  Z (n, D) -> ipc row positions."""
    mu = _mean64(Z)
    sq = np.einsum("ij,ij->i", Z, Z, dtype=np.float64)
    S = np.zeros_like(mu)
    chosen: list[int] = []
    avail = np.ones(len(Z), dtype=bool)
    for k in range(1, ipc + 1):
        target = k * mu - S                                   # want x close to k*mu - S
        score = sq - 2.0 * (Z @ target.astype(np.float32)).astype(np.float64)
        score[~avail] = np.inf
        j = int(np.argmin(score))
        chosen.append(j)
        avail[j] = False
        S += Z[j]
    return chosen


def _kcenter(Z: np.ndarray, ipc: int) -> list[int]:
    """Greedy k-center from the point nearest the mean.  Z (n, D) -> ipc row positions."""
    first = int(np.argmin(_sqdist_to(Z, _mean64(Z))))
    chosen = [first]
    dmin = _sqdist_to(Z, Z[first])
    dmin[first] = -1.0
    while len(chosen) < ipc:
        j = int(np.argmax(dmin))
        chosen.append(j)
        dmin = np.minimum(dmin, _sqdist_to(Z, Z[j]))
        dmin[chosen] = -1.0
    return chosen


# ----------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------
def _mean_of(Z: np.ndarray, idx: np.ndarray, ids: np.ndarray):
    return _mean64(Z[idx]).astype(np.float32), -1


def _medoid_of(Z: np.ndarray, idx: np.ndarray, ids: np.ndarray):
    X = Z[idx]
    j = int(np.argmin(_sqdist_to(X, _mean64(X))))
    return X[j].astype(np.float32).copy(), int(ids[idx[j]])


# a cluster's target: (Z, member rows, ids) -> (target (D,) float32, source_id or -1)
REPRESENTATIVES = {"mean": _mean_of, "medoid": _medoid_of}


def build_coreset(Z: np.ndarray, ids: np.ndarray, label: int, ipc: int, params: CoresetParams | None = None, *,
                  seed: int = 0, n_threads: int | None = None, global_seed: int | None = None,
                  **changes) -> list[Target]:
    """Exactly ``ipc`` targets for one class.

    Z (n, D) latents of class ``label`` (any float dtype; used as float32), ids (n,) int64.
    ``params``: the coreset's knobs (``params.CoresetParams``: kind, split, selection, ...; its
    defaults where not given), any of which ``changes`` may override by name
    (``build_coreset(Z, ids, 0, 5, method="kmeans")``), validated like the job's ``coreset:``.
    levelwise grows min(n, ipc * 2**depth_extra) leaves, then applies ``select_levelwise``
    (depth_extra = how many levels deeper than the IPC-leaf tree, for a balanced tree).
    ipc = 1 gives the root (the class mean, or its medoid) under both selections.
    ``leaves`` orders its targets by (depth, node id): coarse leaves first.
    Image seeds are image_seed(global_seed, label, j), global_seed defaulting to ``seed``.
    -> list[Target] of length ipc, index j = 0..ipc-1.
    """
    P = CoresetParams.build(params, **changes)
    builder = BUILDERS[P.method]
    engine = resolve_engine(P.engine)
    Z = np.ascontiguousarray(np.asarray(Z).reshape(len(Z), -1), dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    n = len(Z)
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries but Z has {n} rows")
    if ipc < 1 or ipc > n:
        raise ValueError(
            f"ipc={ipc} does not fit class {label}, which has {n} latents: each target needs at "
            f"least one distinct latent. Lower ipc to at most {n} (or drop this class); "
            f"sampling with replacement is not offered.")
    label, ipc = int(label), int(ipc)
    gseed = seed if global_seed is None else global_seed
    tag = builder.tag(P)

    def make(j, depth, parent, node, idx, target, source_id):
        return Target(label=label, index=j, depth=int(depth), parent=int(parent), node=int(node),
                      size=int(len(idx)), member_ids=ids[idx].astype(np.int64), target=target,
                      seed=image_seed(gseed, label, j), source_id=int(source_id), method=tag)

    with _thread_limits(n_threads):
        return builder(Z, ids, ipc, P.model_copy(update={"engine": engine}), seed, make)


@contextlib.contextmanager
def _thread_limits(n_threads: int | None):
    """Limit FAISS's OpenMP and numpy's BLAS threads for the duration (None: leave as is)."""
    if n_threads is None:
        yield
        return
    import faiss

    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(n_threads))
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:                                   # BLAS keeps its own setting
            yield
        else:
            with threadpool_limits(limits=int(n_threads), user_api="blas"):
                yield
    finally:
        faiss.omp_set_num_threads(old)


# ---- the coreset kinds: (Z, ids, ipc, params, seed, make) -> list[Target] ---------------------
def _kind(tag):
    """Register a coreset kind's builder with its manifest tag ``tag(params)``."""
    def wrap(fn):
        fn.tag = tag
        return fn
    return wrap


@_kind(lambda P: f"divisive/{P.selection}/{P.split}/{P.representative}")
def _divisive(Z, ids, ipc, P: CoresetParams, seed, make) -> list[Target]:
    """ManifoldGD's hierarchical tree: ``leaves`` (the reference code) or ``levelwise`` (the paper)."""
    n = len(Z)
    levelwise = P.selection == "levelwise" and ipc > 1
    n_leaves = min(n, ipc * 2 ** max(0, P.depth_extra)) if levelwise else ipc
    nodes, leaves = grow_tree(Z, n_leaves, split=P.split, n_restarts=P.n_restarts, niter=P.niter, seed=seed,
                              engine=P.engine)
    if ipc == 1:                                   # IPC = 1 is the class mean (root) for both rules
        order = [0]
    elif levelwise:
        order = select_levelwise(nodes, leaves, ipc, P.level_start)
    else:
        order = sorted(leaves, key=lambda i: (nodes[i].depth, i))
    represent = REPRESENTATIVES[P.representative]
    out = []
    for j, i in enumerate(order):
        nd = nodes[i]
        c, src = represent(Z, nd.idx, ids)
        out.append(make(j, nd.depth, nd.parent, i, nd.idx, c, src))
    return out


@_kind(lambda P: f"kmeans/{P.representative}")
def _kmeans(Z, ids, ipc, P: CoresetParams, seed, make) -> list[Target]:
    """MGD3's modes: FAISS k-means with k = ipc, largest clusters first."""
    import faiss
    n = len(Z)
    km = faiss.Kmeans(Z.shape[1], ipc, niter=P.niter, nredo=max(1, P.n_restarts), seed=int(seed) + 1,
                      gpu=_faiss_gpu(), max_points_per_centroid=n, min_points_per_centroid=1, verbose=False)
    with _faiss_threads(Z.size):
        km.train(Z)
        _, a = km.index.search(Z, 1)
    a = a[:, 0]
    sizes = np.bincount(a, minlength=ipc)
    represent = REPRESENTATIVES[P.representative]
    out = []
    for j, k in enumerate(sorted(range(ipc), key=lambda k: (-sizes[k], k))):
        idx = np.flatnonzero(a == k)
        if len(idx) == 0:                        # FAISS left a cluster empty: its nearest point
            idx = np.array([int(np.argmin(_sqdist_to(Z, km.centroids[k])))])
            c, src = (km.centroids[k].astype(np.float32).copy(), -1) if P.representative == "mean" \
                else (Z[idx[0]].copy(), int(ids[idx[0]]))
        else:
            c, src = represent(Z, idx, ids)
        out.append(make(j, 0, -1, -1, idx, c, src))
    return out


def _real_images(pick, name: str):
    """A kind whose targets are ``ipc`` real latents chosen by ``pick(Z, ipc, seed)``."""
    @_kind(lambda P: f"{name}/{P.representative}")
    def build(Z, ids, ipc, P: CoresetParams, seed, make) -> list[Target]:
        return [make(j, 0, -1, -1, np.array([r]), Z[r].copy(), int(ids[r])) for j, r in enumerate(pick(Z, ipc, seed))]
    build.__name__ = f"_{name}"
    return build


# the coreset kinds (``CoresetParams.method``): a new kind is one builder and one entry
BUILDERS = {
    "divisive": _divisive,
    "kmeans": _kmeans,
    "random": _real_images(lambda Z, ipc, seed: np.random.default_rng(seed).choice(len(Z), size=ipc,
                                                                                   replace=False).tolist(), "random"),
    "herding": _real_images(lambda Z, ipc, seed: _herding(Z, ipc), "herding"),
    "kcenter": _real_images(lambda Z, ipc, seed: _kcenter(Z, ipc), "kcenter"),
}


def tree_sse(Z: np.ndarray, targets: list[Target], ids: np.ndarray) -> float:
    """Total within-cluster SSE of the targets' member sets (to their means).  -> float."""
    pos = {int(i): p for p, i in enumerate(np.asarray(ids))}
    Z = np.asarray(Z, dtype=np.float32).reshape(len(Z), -1)
    return float(sum(_sse(Z[[pos[int(i)] for i in t.member_ids]]) for t in targets))
