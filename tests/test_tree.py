"""The flat-array tree against scipy's own tree walk."""
import numpy as np
import pytest
from scipy.cluster.hierarchy import leaves_list, linkage, to_tree

from clustering.build import build_forest, class_linkage, embed
from clustering.tree import Forest


@pytest.mark.parametrize("seed,n,method", [(0, 2, "complete"), (1, 57, "complete"), (2, 400, "single"),
                                           (3, 300, "average")])
def test_slices_match_scipy_to_tree(seed, n, method):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    s = rng.random(n)
    Z = linkage(x, method)
    f = Forest.from_linkage(Z, s)
    _, nodes = to_tree(Z, rd=True)
    assert f.n_nodes == 2 * n - 1 and f.roots.tolist() == [2 * n - 2]
    assert np.array_equal(f.order, leaves_list(Z))
    for nd in nodes:
        leaves = nd.pre_order()
        assert sorted(f.masks(nd.id).tolist()) == sorted(leaves)
        assert f.size(nd.id) == nd.count
        assert f.mean_score(nd.id) == pytest.approx(s[leaves].mean())
        if not nd.is_leaf():
            assert f.left[nd.id] == nd.left.id and f.right[nd.id] == nd.right.id
            assert f.parent[nd.left.id] == nd.id
            assert f.height[nd.id] == pytest.approx(nd.dist)
    assert np.allclose(f.mean_scores, [s[nd.pre_order()].mean() for nd in sorted(nodes, key=lambda q: q.id)])


def test_single_mask_tree_and_depth():
    f = Forest.from_linkage(np.zeros((0, 4)), np.array([0.3]))
    assert f.n_nodes == 1 and f.is_leaf(0) and f.size(0) == 1 and f.roots.tolist() == [0]
    # a chain (caterpillar) tree of 20k leaves: construction is iterative, never recursive
    n = 20_000
    Z = np.zeros((n - 1, 4))
    Z[0] = [0, 1, 1.0, 2]
    for i in range(1, n - 1):
        Z[i] = [i + 1, n + i - 1, 1.0 + i, i + 2]
    f = Forest.from_linkage(Z, np.linspace(0, 1, n))
    assert f.depth.max() == n - 1
    assert f.size(f.roots[0]) == n


def test_forest_concat_covers_each_class_and_npz_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    classes = rng.integers(0, 5, n)
    feats = rng.normal(size=(n, 6)).astype(np.float32)
    scores = rng.random(n)
    f = build_forest(feats, scores, classes)
    assert sorted(f.root_class.tolist()) == sorted(np.unique(classes).tolist())
    for r, c in zip(f.roots, f.root_class):
        assert sorted(f.masks(r).tolist()) == np.flatnonzero(classes == c).tolist()
        assert np.all(f.node_class[f.start >= 0][f.node_class == c] == c)
    assert sorted(f.order.tolist()) == list(range(n))
    assert np.all(f.masks(f.leaf_of_mask[7]) == [7])
    np.savez(tmp_path / "forest.npz", **f.to_npz_dict())
    g = Forest.from_npz_dict(np.load(tmp_path / "forest.npz"))
    assert np.array_equal(g.mean_scores, f.mean_scores) and np.array_equal(g.order, f.order)


def test_two_level_clustering_is_a_valid_tree():
    rng = np.random.default_rng(1)
    x = embed(rng.normal(size=(1000, 5)), rng.random(1000))
    Z = class_linkage(x, exact_limit=150)
    assert Z.shape == (999, 4)
    f = Forest.from_linkage(Z, rng.random(1000))
    internal = f.left >= 0
    assert np.all(f.sizes[internal] == f.sizes[f.left[internal]] + f.sizes[f.right[internal]])
    assert sorted(f.masks(f.roots[0]).tolist()) == list(range(1000))
    # parts never exceed the exact limit: every node of height below the top level is small
    exact = class_linkage(x[:150], exact_limit=150)
    assert exact.shape == (149, 4)
