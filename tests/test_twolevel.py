"""Exact linkage through one condensed matrix, the two-level path, fidelity figures, memory plan."""
import fastcluster
import numpy as np
import pytest
from scipy.cluster.hierarchy import cophenet, fcluster, is_monotonic, is_valid_linkage
from scipy.spatial.distance import pdist
from sklearn.metrics import adjusted_rand_score

from clustering.build import ClusterParams, build_forest, class_linkage, embed
from clustering.fidelity import CopheneticIndex, ari_at_cuts, pair_correlations
from clustering.linkage import condensed_distances, exact_linkage, linkage_from_condensed
from clustering.memory import (default_exact_limit, exact_bytes, max_exact_n, plan_memory)
from clustering.tree import Forest
from clustering.twolevel import (assemble, atom_threshold, cut_atoms, part_trees, partition,
                                 two_level_linkage)
from orchestrator.actions.campaign import build_forest_parallel
from orchestrator.search.synth import make_triplets


def _blobs(n, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(max(2, n // 60), d))
    return centres[rng.integers(0, centres.shape[0], n)] + rng.normal(size=(n, d))


def _check_tree(Z, n):
    assert Z.shape == (n - 1, 4)
    assert is_valid_linkage(Z) and is_monotonic(Z)
    f = Forest.from_linkage(Z, np.zeros(n))
    assert sorted(f.order.tolist()) == list(range(n))          # every mask a leaf exactly once
    internal = np.flatnonzero(f.left >= 0)
    assert np.all(f.height[internal] >= f.height[f.left[internal]])  # parent above children
    assert np.all(f.height[internal] >= f.height[f.right[internal]])
    assert np.all(Z[:, 0] < Z[:, 1])                            # scipy's child order


# ------------------------------------------------------------------------- exact path
@pytest.mark.parametrize("n,d", [(2, 3), (500, 5), (700, 257)])
def test_condensed_distances_match_pdist(n, d):
    x = np.random.default_rng(n).normal(size=(n, d)) + 50.0     # far from the origin
    got = condensed_distances(x, block_bytes=8 * n * 7)          # several blocks
    want = pdist(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_exact_linkage_is_fastclusters_on_the_same_matrix():
    x = _blobs(900, 6, seed=1)
    Z = exact_linkage(x)
    want = fastcluster.linkage(condensed_distances(x), method="complete")
    np.testing.assert_array_equal(Z, want)
    # and the same tree as scipy on pdist (no ties in continuous data)
    ref = fastcluster.linkage(x, method="complete")
    np.testing.assert_array_equal(Z[:, [0, 1, 3]], ref[:, [0, 1, 3]])
    np.testing.assert_allclose(Z[:, 2], ref[:, 2], rtol=1e-12)


def test_linkage_from_condensed_validates():
    with pytest.raises(ValueError, match="entries"):
        linkage_from_condensed(np.zeros(5), 4)
    with pytest.raises(ValueError, match="float64"):
        linkage_from_condensed(np.zeros(6, np.float32), 4)


# ------------------------------------------------------------------------- two levels
def test_partition_is_bounded_disjoint_and_deterministic():
    x = _blobs(3000, seed=2)
    parts = partition(x, 200, seed=5)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(3000))
    assert max(p.shape[0] for p in parts) <= 200 and len(parts) >= 15
    again = partition(x, 200, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again)) and len(parts) == len(again)
    # identical points cannot be split by k-means: halved by index order instead
    dup = partition(np.ones((50, 3)), 8)
    assert max(p.shape[0] for p in dup) <= 8 and sum(p.shape[0] for p in dup) == 50


@pytest.mark.parametrize("n,part,atom", [(1500, 120, 16), (1200, 200, 1000), (900, 64, 1)])
def test_two_level_linkage_is_one_valid_monotone_tree(n, part, atom):
    x = _blobs(n, seed=n)
    Z = two_level_linkage(x, part_size=part, seed=3, atom_size=atom)
    _check_tree(Z, n)
    # deterministic for a seed
    np.testing.assert_array_equal(Z, two_level_linkage(x, part_size=part, seed=3, atom_size=atom))


def test_two_level_equals_exact_when_the_class_fits_in_one_part():
    x = _blobs(800, seed=4)
    np.testing.assert_array_equal(two_level_linkage(x, part_size=800), exact_linkage(x))
    np.testing.assert_array_equal(class_linkage(x, exact_limit=100, part_size=1000), exact_linkage(x))


def test_one_mask_per_atom_gives_the_exact_tree():
    """Atoms of one mask with themselves as representative: the tree over atoms is exact
    complete linkage over all masks, whatever the parts (up to the float32 products of the
    distances between atoms)."""
    x = _blobs(600, seed=6)
    parts = partition(x, 100, 0)
    Z = assemble(x, parts, part_trees(x, parts), n_reps=1, atom_size=1)
    E = exact_linkage(x)
    np.testing.assert_allclose(Z[:, 2], E[:, 2], rtol=1e-4)
    assert np.corrcoef(cophenet(Z), cophenet(E))[0, 1] > 0.9999


def test_atoms_cut_part_trees_at_one_height():
    x = _blobs(400, seed=7)
    trees = part_trees(x, partition(x, 100, 0))
    tau = atom_threshold(trees, 60)
    cuts = [cut_atoms(z, tau) for z in trees]
    assert sum(c[1].shape[0] for c in cuts) == 60               # exactly: no tied heights
    for z, (kept, roots, atom_of_leaf) in zip(trees, cuts):
        k = z.shape[0] + 1
        assert np.all(z[kept, 2] <= tau) and np.all(z[~kept, 2] > tau)
        # leaves with one atom are exactly fcluster's flat clusters at distance tau
        assert adjusted_rand_score(atom_of_leaf, fcluster(z, tau, "distance")) == 1.0 if k > 1 else True
    assert atom_threshold(trees, 3) == float("inf") and atom_threshold(trees, 10**6) == -1.0


def test_build_forest_two_level_same_with_worker_processes():
    t = make_triplets(3000, classes=3, dim=6, seed=9)
    p = ClusterParams(exact_limit=500, part_size=150, seed=2)
    a = build_forest(t.features, t.scores, t.classes, p)
    b = build_forest_parallel(t.features, t.scores, t.classes, p, jobs=2)
    for k, v in a.to_npz_dict().items():
        np.testing.assert_array_equal(getattr(b, k), v, err_msg=k)
    for r, c in zip(a.roots, a.root_class):
        assert sorted(a.masks(r).tolist()) == np.flatnonzero(t.classes == c).tolist()


# ------------------------------------------------------------------------- fidelity
def test_cophenetic_index_and_correlations_match_scipy():
    x = _blobs(300, 4, seed=8)
    Z1 = exact_linkage(x)
    Z2 = fastcluster.linkage(x, method="average")
    i, j = np.triu_indices(300, 1)
    np.testing.assert_array_equal(CopheneticIndex(Z1).between(i, j), cophenet(Z1))
    want = np.corrcoef([cophenet(Z1), cophenet(Z2), pdist(x)])
    np.testing.assert_allclose(pair_correlations(x, [Z1, Z2]), want, atol=1e-10)
    sampled = pair_correlations(x, [Z1, Z2], max_pairs=20_000)       # random pairs
    assert abs(sampled[0, 1] - want[0, 1]) < 0.05
    ari = ari_at_cuts(Z1, Z2, (2, 8, 1000))
    assert set(ari) == {2, 8}
    assert ari[8] == pytest.approx(adjusted_rand_score(fcluster(Z1, 8, "maxclust"),
                                                       fcluster(Z2, 8, "maxclust")))
    assert ari_at_cuts(Z1, Z1, (4,)) == {4: 1.0}


# ------------------------------------------------------------------------- memory
def test_memory_model():
    gib = 1 << 30
    assert 65_000 <= default_exact_limit(int(23.5 * gib), 64) <= 72_000
    assert exact_bytes(70_000, 64) > 18 * gib
    from clustering.memory import BASE_BYTES

    assert max_exact_n(exact_bytes(10_000, 16) + BASE_BYTES, 16) == 10_000
    small = plan_memory({0: 1000, 1: 2000}, 16, 5000, 2000, 8)
    two = plan_memory({0: 1000, 1: 2000}, 16, 5000, 2000, 8, jobs=2)
    assert two.peak > small.peak and small.worst_class == 1 and small.worst_exact
    big = plan_memory({0: 5_000_000}, 64, 70_000, 2000, 8)
    assert not big.worst_exact and 2 * gib < big.peak < 10 * gib


def test_embed_is_elementwise_given_class_statistics():
    t = make_triplets(500, classes=1, dim=5, seed=1)
    x = embed(t.features, t.scores)
    assert x.shape == (500, 6)
    np.testing.assert_allclose(x[:, :5].var(axis=0).sum(), 1.0)
    from clustering.build import class_stats, embed_rows

    idx = np.arange(500)
    st = class_stats(t.features, t.scores, idx)
    np.testing.assert_array_equal(embed_rows(t.features, t.scores, idx[100:130], st), x[100:130])


# ------------------------------------------------------------------------- distances between atoms
@pytest.mark.parametrize("sizes", [[3, 3, 3, 3, 2], [1, 40, 2, 7, 90, 1, 5]])
def test_part_distances_are_the_max_over_representative_pairs(sizes):
    """Equal counts (padded, strided maxima) and very unequal ones (segmented maxima), in
    several blocks: both give max(diam A, diam B, max over pairs) of a brute force."""
    from scipy.spatial.distance import cdist

    from clustering.twolevel import part_distances

    rng = np.random.default_rng(len(sizes))
    reps = [rng.normal(size=(k, 5)) + 20.0 for k in sizes]
    diam = rng.random(len(sizes)) * 3.0
    want = [max(diam[a], diam[b], cdist(reps[a], reps[b]).max())
            for a in range(len(sizes)) for b in range(a + 1, len(sizes))]
    got = part_distances(reps, diam, block_bytes=4 * 3 * sum(sizes))     # a few rows per block
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_rep_cap_fills_the_budget():
    from clustering.twolevel import rep_cap

    assert rep_cap([5, 100, 30], 8, rep_points=1000) == 100           # all fit: exact
    assert rep_cap([5, 100, 30], 8, rep_points=60) == 20              # 3 atoms x 20 <= 60
    assert rep_cap([50] * 10, 8, rep_points=20) == 8                  # the floor
    assert rep_cap([], 8) == 8


def test_small_class_gets_exact_distances_between_atoms():
    """Below REP_POINTS masks every mask represents itself: the tree over atoms is exact
    complete linkage over the atoms (their merges at the true diameters of the unions)."""
    from scipy.spatial.distance import cdist

    x = _blobs(1200, seed=11)
    parts = partition(x, 200, 0)
    trees = part_trees(x, parts)
    Z = assemble(x, parts, trees, n_reps=2, atom_size=40)
    few = assemble(x, parts, trees, n_reps=2, atom_size=40, rep_points=0)   # 2 reps per atom
    _check_tree(Z, 1200)
    tau = atom_threshold(trees, 30)
    # every merge above the atoms is at the diameter of the union it creates
    f = Forest.from_linkage(Z, np.zeros(1200))
    top = np.flatnonzero(Z[:, 2] > tau) + 1200
    for node in top[-20:]:
        m = f.masks(node)
        assert f.height[node] == pytest.approx(cdist(x[m], x[m]).max(), rel=1e-4)
    ff = Forest.from_linkage(few, np.zeros(1200))
    short = [abs(ff.height[v] - cdist(x[ff.masks(v)], x[ff.masks(v)]).max()) > 1e-3
             for v in np.flatnonzero(few[:, 2] > tau)[-20:] + 1200]
    assert any(short)                                                  # 2 reps fall short
