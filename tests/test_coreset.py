"""Hierarchical divisive coreset and the baseline selections."""
import itertools

import numpy as np
import pytest

from mgd_ray.method import build_coreset, grow_tree, image_seed, tree_sse
from mgd_ray.method.coreset import ENGINES, _sse


def _blobs(n_per=40, k=5, D=8, seed=0, spread=6.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, D)) * spread
    Z = np.concatenate([c + rng.normal(size=(n_per, D)) for c in centres]).astype(np.float32)
    return Z, np.arange(10_000, 10_000 + len(Z), dtype=np.int64)


@pytest.mark.parametrize("ipc", [1, 4, 7])
def test_leaves_partition_class(ipc):
    Z, ids = _blobs()
    T = build_coreset(Z, ids, label=3, ipc=ipc, seed=0)
    assert len(T) == ipc and [t.index for t in T] == list(range(ipc))
    members = np.concatenate([t.member_ids for t in T])
    assert len(members) == len(ids) and set(members.tolist()) == set(ids.tolist())   # exactly once
    for t in T:
        pos = t.member_ids - 10_000
        np.testing.assert_allclose(t.target, Z[pos].mean(0), rtol=1e-5, atol=1e-5)
        assert t.size == len(t.member_ids) and t.label == 3 and t.source_id == -1
        assert t.seed == image_seed(0, 3, t.index)
    if ipc == 1:
        assert T[0].depth == 0 and T[0].parent == -1            # IPC = 1 is the class mean
    assert [(t.depth, t.node) for t in T] == sorted((t.depth, t.node) for t in T)


@pytest.mark.parametrize("engine", ["faiss", "numpy"])
def test_sse_never_increases_with_a_split(engine):
    Z, _ = _blobs(k=6, seed=1)
    nodes, leaves = grow_tree(Z, 12, seed=3, engine=engine)
    for nd in nodes:
        if nd.children:
            a, b = (nodes[c] for c in nd.children)
            assert a.sse + b.sse <= nd.sse * (1 + 1e-9)
            for ch in (a, b):                       # the one-pass split SSE is the exact SSE
                assert np.isclose(ch.sse, _sse(Z[ch.idx]), rtol=1e-6, atol=1e-6)
            assert sorted(np.concatenate([a.idx, b.idx]).tolist()) == sorted(nd.idx.tolist())
            assert a.depth == b.depth == nd.depth + 1
    # the total over leaves decreases along the growth
    totals = [sum(nodes[i].sse for i in grow_tree(Z, L, seed=3, engine=engine)[1]) for L in range(1, 13)]
    assert all(b <= a + 1e-6 for a, b in zip(totals, totals[1:]))
    assert len(leaves) == 12


def test_same_seed_same_targets():
    Z, ids = _blobs(seed=2)
    for kw in ({}, {"selection": "levelwise"}, {"method": "kmeans"}, {"method": "random"},
               {"split": "var", "representative": "medoid"}, {"engine": "numpy"}):
        A = build_coreset(Z, ids, 0, 5, seed=11, **kw)
        B = build_coreset(Z, ids, 0, 5, seed=11, **kw)
        for a, b in zip(A, B):
            assert np.array_equal(a.target, b.target) and np.array_equal(a.member_ids, b.member_ids)
            assert (a.depth, a.parent, a.node, a.seed) == (b.depth, b.parent, b.node, b.seed)


def test_faiss_two_means_equals_bruteforce():
    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 4.0]).astype(np.float32)
    best, best_sse = None, np.inf
    for bits in itertools.product([False, True], repeat=len(X) - 1):   # all 2-partitions
        a = np.array((False,) + bits)
        if a.all() or not a.any():
            continue
        s = _sse(X[a]) + _sse(X[~a])
        if s < best_sse:
            best, best_sse = a, s
    assert {"faiss", "numpy"} <= set(ENGINES)
    for name, two_means in ENGINES.items():                          # every engine, not only the last
        assign, obj = two_means(X, np.random.default_rng(0), n_restarts=3, niter=20)
        assert np.isclose(_sse(X[assign]) + _sse(X[~assign]), best_sse, rtol=1e-6), name
        assert np.isclose(obj, best_sse, rtol=1e-4), name            # the objective = that SSE
        assert np.array_equal(assign, best) or np.array_equal(assign, ~best), name


def test_levelwise_rule():
    Z, ids = _blobs(n_per=30, k=6, seed=4)
    for ipc, start in ((5, 1), (8, 2), (3, 0)):
        T = build_coreset(Z, ids, 1, ipc, selection="levelwise", level_start=start, seed=0)
        assert len(T) == ipc and len({t.node for t in T}) == ipc
        assert T[0].depth == start                                # coarse-to-fine sweep starts there
        if start == 0:
            assert T[0].size == len(Z)                           # the root: the class mean
        sweep = [t.depth for t in T]
        assert sweep[: min(ipc, 3)] == list(range(start, start + min(ipc, 3)))
    root = build_coreset(Z, ids, 1, 1, selection="levelwise")        # IPC = 1 is the class mean
    assert len(root) == 1 and root[0].size == len(Z) and root[0].depth == 0


def test_ipc_larger_than_class_raises():
    Z, ids = _blobs(n_per=2, k=2)
    with pytest.raises(ValueError, match=r"ipc=5.*4 latents.*Lower ipc"):
        build_coreset(Z, ids, 0, 5)
    T = build_coreset(Z, ids, 0, 4)                              # ipc == n works: singletons
    assert sorted(t.size for t in T) == [1, 1, 1, 1]


def test_degenerate_points_split_randomly():
    Z = np.ones((6, 4), dtype=np.float32)
    T = build_coreset(Z, np.arange(6), 0, 3, seed=0)
    assert sum(t.size for t in T) == 6 and len(T) == 3


def test_medoid_and_baselines():
    Z, ids = _blobs(seed=6)
    T = build_coreset(Z, ids, 2, 4, representative="medoid")
    for t in T:
        assert t.source_id in t.member_ids
        np.testing.assert_array_equal(t.target, Z[t.source_id - 10_000])
        mu = Z[t.member_ids - 10_000].mean(0)
        d = ((Z[t.member_ids - 10_000] - mu) ** 2).sum(1)
        assert np.isclose(((t.target - mu) ** 2).sum(), d.min(), rtol=1e-5)
    nearest_mean = int(ids[np.argmin(((Z - Z.mean(0)) ** 2).sum(1))])
    for method in ("random", "herding", "kcenter", "kmeans"):
        T = build_coreset(Z, ids, 2, 6, method=method, seed=1)
        assert len(T) == 6
        if method != "kmeans":
            src = [t.source_id for t in T]
            assert len(set(src)) == 6 and all(t.size == 1 and t.member_ids[0] == t.source_id for t in T)
        else:
            assert sum(t.size for t in T) == len(Z)
    assert build_coreset(Z, ids, 2, 3, method="herding")[0].source_id == nearest_mean
    assert build_coreset(Z, ids, 2, 3, method="kcenter")[0].source_id == nearest_mean
    # kmeans on 5 well separated blobs finds them: SSE close to the divisive tree's
    km = tree_sse(Z, build_coreset(Z, ids, 2, 5, method="kmeans", n_restarts=10), ids)
    dv = tree_sse(Z, build_coreset(Z, ids, 2, 5), ids)
    assert km == pytest.approx(dv, rel=0.05)


def test_image_seed():
    s = {image_seed(0, k, j) for k in range(10) for j in range(10)}
    assert len(s) == 100 and all(0 <= x < 2**63 for x in s)
    assert image_seed(1, 2, 3) == image_seed(1, 2, 3) != image_seed(2, 2, 3)


def test_bad_arguments_are_explained():
    Z, ids = _blobs(n_per=5, k=2)
    with pytest.raises(ValueError, match=r"CoresetParams: \[method\] Input should be 'divisive'.*"
                                         r"\(got: 'agglomerative'\)"):
        build_coreset(Z, ids, 0, 2, method="agglomerative")
    with pytest.raises(ValueError, match=r"CoresetParams: \[radius\] .*\(not a parameter\)"):  # not a knob of it
        build_coreset(Z, ids, 0, 2, radius=1.0)


def test_herding_and_kcenter_greedy_rules():
    Z, ids = _blobs(n_per=10, k=3, D=5, seed=7)
    mu = Z.astype(np.float64).mean(0)
    picks = [t.source_id - 10_000 for t in build_coreset(Z, ids, 0, 6, method="herding")]
    for k in range(1, 7):                     # each pick keeps the running mean closest to mu
        prev = Z[picks[:k - 1]].astype(np.float64).sum(0)
        cand = [i for i in range(len(Z)) if i not in picks[:k - 1]]
        err = {i: np.linalg.norm(mu - (prev + Z[i]) / k) for i in cand}
        assert np.isclose(err[picks[k - 1]], min(err.values()), rtol=1e-6)
    picks = [t.source_id - 10_000 for t in build_coreset(Z, ids, 0, 6, method="kcenter")]
    for k in range(1, 6):                     # each pick is the farthest from those chosen so far
        dmin = np.min(((Z[:, None] - Z[picks[:k]][None]) ** 2).sum(-1), axis=1)
        assert np.isclose(dmin[picks[k]], dmin.max(), rtol=1e-6)


def test_engines_agree_on_separated_blobs():
    Z, ids = _blobs(n_per=30, k=6, seed=8)
    a = tree_sse(Z, build_coreset(Z, ids, 0, 6, engine="faiss"), ids)
    b = tree_sse(Z, build_coreset(Z, ids, 0, 6, engine="numpy"), ids)
    assert a == pytest.approx(b, rel=1e-6)


def test_numpy_restarts_batched_equal_separate_restarts():
    """The numpy engine runs its restarts together (one pass over X per iteration for all): the
    result is the best of the same restarts run one at a time from the same random stream."""
    from mgd_ray.method.coreset import _two_means_numpy
    X = np.random.default_rng(3).normal(size=(300, 48)).astype(np.float32)   # no clear 2 clusters
    together = _two_means_numpy(X, np.random.default_rng(0), n_restarts=4, niter=20)
    rng = np.random.default_rng(0)
    singles = [_two_means_numpy(X, rng, n_restarts=1, niter=20) for _ in range(4)]
    assert len({round(o, 3) for _, o in singles}) > 1                   # the restarts do differ
    best = min(singles, key=lambda r: r[1])
    assert np.array_equal(together[0], best[0]) and together[1] == pytest.approx(best[1], rel=1e-9)


def test_engine_auto_picks_by_device(monkeypatch):
    from mgd_ray.config import CoresetConfig
    from mgd_ray.method import coreset as cs
    assert CoresetConfig().engine == "auto"
    monkeypatch.setattr(cs, "_faiss_gpu", lambda: False)
    assert cs.resolve_engine("auto") == "numpy" and cs.resolve_engine("faiss") == "faiss"
    Z, ids = _blobs(n_per=10, k=3, seed=1)
    assert tree_sse(Z, build_coreset(Z, ids, 0, 3, engine="auto"), ids) == \
        tree_sse(Z, build_coreset(Z, ids, 0, 3, engine="numpy"), ids)
    monkeypatch.setattr(cs, "_faiss_gpu", lambda: True)                     # a faiss-gpu build with a GPU
    assert cs.resolve_engine("auto") == "faiss"
